from __future__ import annotations

from typing import Any

from django.db import models

from console.models import ApiKey, AuditEvent, Organisation, User


def audit_record(
    *,
    org: Organisation,
    action: str,
    actor: User | None = None,
    actor_key: ApiKey | None = None,
    target: models.Model | None = None,
    data: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    """Append one audit event. ``data`` must never hold a secret; callers pass names and ids."""
    return AuditEvent.objects.create(
        org=org,
        action=action,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_key=actor_key,
        target_type=target._meta.model_name or "" if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        data=data or {},
        ip_address=ip_address,
    )
