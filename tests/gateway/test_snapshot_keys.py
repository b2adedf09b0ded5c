"""The snapshot's keys: each key's JSON lists read right, whatever the database, keys with the
same lists share one decoded value, and keys are read again only when a change may concern them."""

from __future__ import annotations

import ipaddress
import time

import pytest

from console.models import ApiKey
from console.services.keys import api_key_create, api_key_revoke
from console.snapshot import snapshot_bump
from inference.gateway.snapshot import Snapshot, SnapshotPoller, snapshot_build

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


def test_changes_that_cannot_concern_keys_keep_the_keys_read_before(committed_db, org, owner):
    # Committed for real: the poller closes its thread's connections after each poll.
    installed: list[Snapshot] = []
    poller = SnapshotPoller(installed.append, poll_s=60, ttl_s=3600)
    first = api_key_create(org=org, actor=owner, name="first", scopes=["inference"])
    snapshot_bump()
    assert poller.refresh(force=True)
    before = installed[-1]

    # A replica became ready: a new snapshot (new version), the same keys, not read again.
    snapshot_bump(keys=False)
    assert poller.refresh()
    assert installed[-1].version > before.version
    assert installed[-1].keys is before.keys

    # A key's change bumps both: read again, and the revocation is there.
    api_key_revoke(key=first.key, actor=owner)
    assert poller.refresh()
    assert installed[-1].keys is not before.keys
    assert installed[-1].keys[first.key.digest].revoked

    # A key changed without any bump (which no service does) is seen at the TTL rebuild at the
    # latest, even when every bump since said keys=False.
    stray = api_key_create(org=org, actor=owner, name="stray", scopes=["inference"])
    assert poller.refresh()
    assert stray.key.digest in installed[-1].keys
    ApiKey.objects.filter(pk=stray.key.pk).update(digest="0" * 64)
    snapshot_bump(keys=False)
    assert poller.refresh()
    assert "0" * 64 not in installed[-1].keys
    poller.built_at = time.monotonic() - 3600  # the TTL has passed
    assert poller.refresh()
    assert "0" * 64 in installed[-1].keys
