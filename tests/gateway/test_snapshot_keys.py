"""The snapshot's keys: each key's JSON lists read right, whatever the database, and keys with the
same lists share one decoded value."""

from __future__ import annotations

import ipaddress

import pytest

from console.services.keys import api_key_create
from inference.gateway.snapshot import snapshot_build

pytestmark = pytest.mark.django_db


def test_keys_lists_are_read_and_shared(org, owner):
    plain = [
        api_key_create(org=org, actor=owner, name=f"plain {i}", scopes=["inference"])
        for i in range(3)
    ]
    narrow = api_key_create(
        org=org,
        actor=owner,
        name="narrow",
        scopes=["inference", "read"],
        allowed_models=["tiny", "big"],
        allowed_ips=["10.1.0.0/16", "2001:db8::1"],
    )
    keys = snapshot_build(1).keys

    entries = [keys[created.key.digest] for created in plain]
    assert all(e.scopes == frozenset({"inference"}) for e in entries)
    assert all(e.allowed_models == frozenset() and e.allowed_networks == () for e in entries)
    assert entries[0].scopes is entries[1].scopes  # decoded once, shared
    entry = keys[narrow.key.digest]
    assert entry.scopes == frozenset({"inference", "read"})
    assert entry.allowed_models == frozenset({"tiny", "big"})
    assert entry.allowed_networks == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("2001:db8::1"),
    )
