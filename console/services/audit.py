from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import models, transaction

from console.models import ApiKey, AuditEvent, Organisation, User

logger = logging.getLogger(__name__)

# The address of the client whose request is being answered (console.middleware.ClientAddress);
# None outside a request: events from tasks and the platform itself have no address.
client_address: ContextVar[str | None] = ContextVar("client_address", default=None)


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
    """Append one audit event. ``data`` must never hold a secret; callers pass names and ids.
    ``ip_address`` defaults to the address of the client whose request made the event."""
    event = AuditEvent.objects.create(
        org=org,
        action=action,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_key=actor_key,
        target_type=target._meta.model_name or "" if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:200] if target is not None else "",
        data=data or {},
        ip_address=ip_address if ip_address is not None else client_address.get(),
    )
    # The org's webhooks hear of it once it is committed (console.services.webhooks).
    transaction.on_commit(lambda: _publish(event.pk, org.pk))
    return event


def _publish(event_id: Any, org_id: int) -> None:
    from console.services.webhooks import event_published

    try:
        event_published(event_id, org_id)
    except Exception:  # a webhook problem never undoes or hides what was recorded
        logger.exception("could not queue webhook deliveries", extra={"event": str(event_id)})


# The most events one CSV export holds (newest first).
AUDIT_EXPORT_LIMIT = 100_000


def audit_events(
    *,
    org: Organisation,
    action: str = "",
    actor: str = "",
    start: date | None = None,
    end: date | None = None,
) -> models.QuerySet[AuditEvent]:
    """The org's events, newest first, filtered: ``action`` is a prefix (``key.``), ``actor`` an
    email address, a key's prefix (``sk-…``) or ``system``; ``start`` and ``end`` are UTC days,
    both included."""
    events = org.audit_events.select_related("actor", "actor_key")
    if action:
        events = events.filter(action__startswith=action)
    actor = actor.strip()
    if actor == "system":
        events = events.filter(actor=None, actor_key=None)
    elif actor.startswith("sk-"):
        events = events.filter(actor_key__prefix=actor.rstrip("…").rstrip("."))
    elif actor:
        events = events.filter(actor__email__iexact=actor)
    if start is not None:
        events = events.filter(created_at__gte=datetime.combine(start, time.min, tzinfo=UTC))
    if end is not None:
        after = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
        events = events.filter(created_at__lt=after)
    return events.order_by("-created_at", "-id")
