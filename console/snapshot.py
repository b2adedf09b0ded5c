"""The control-plane version counter that tells gateways to refresh their snapshot."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from console.models import ControlPlaneVersion


def _bump() -> None:
    updated = ControlPlaneVersion.objects.filter(pk=1).update(version=F("version") + 1)
    if not updated:
        ControlPlaneVersion.objects.get_or_create(pk=1, defaults={"version": 1})


def snapshot_bump() -> None:
    """Mark the control plane as changed once the current transaction commits."""
    transaction.on_commit(_bump)


def snapshot_version() -> int:
    row = ControlPlaneVersion.objects.filter(pk=1).values_list("version", flat=True).first()
    return int(row or 0)
