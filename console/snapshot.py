"""The control-plane version counter that tells gateways to refresh their snapshot."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from console.models import ControlPlaneVersion


def _bump(keys: bool) -> None:
    changes = {"version": F("version") + 1}
    if keys:
        changes["keys_version"] = F("keys_version") + 1
    updated = ControlPlaneVersion.objects.filter(pk=1).update(**changes)
    if not updated:
        ControlPlaneVersion.objects.get_or_create(pk=1, defaults={"version": 1, "keys_version": 1})


def snapshot_bump(*, keys: bool = True) -> None:
    """Mark the control plane as changed once the current transaction commits.

    ``keys=False`` declares that the change cannot concern API keys (a replica's state, a
    deployment, a route): gateways then keep the keys they hold instead of reading every key
    again, which with tens of thousands of keys is most of a rebuild. When in doubt, leave it:
    a key change that gateways miss would only be seen at the snapshot's TTL."""
    transaction.on_commit(lambda: _bump(keys))


def snapshot_version() -> int:
    return snapshot_versions()[0]


def snapshot_versions() -> tuple[int, int]:
    """(the control plane's version, its keys' version)."""
    row = ControlPlaneVersion.objects.filter(pk=1).values_list("version", "keys_version").first()
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)
