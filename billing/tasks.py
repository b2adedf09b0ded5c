"""Celery tasks: thin wrappers around the services, scheduled by CELERY_BEAT_SCHEDULE.

Every task is safe to run twice or concurrently; Stripe tasks do nothing in local-ledger mode.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from billing.rollups import hour_floor, usage_rollup, usage_rollup_range
from billing.services.alerts import budget_alerts_check
from billing.services.meters import meter_events_prepare, meter_events_send
from billing.services.reconcile import meter_reconcile
from billing.services.webhooks import grace_enforce, stripe_event_process, stripe_events_pending
from billing.stripe_client import stripe_enabled

logger = logging.getLogger(__name__)


@shared_task
def usage_rollup_task() -> int:
    return usage_rollup().org_hours


@shared_task
def usage_rollup_recent_days_task(days: int = 2) -> int:
    """Recompute the last few days in full: a safety net under the incremental rollup."""
    end = hour_floor(timezone.now()) + timedelta(hours=1)
    return usage_rollup_range(start=end - timedelta(days=days), end=end)


@shared_task
def budget_alerts_task() -> int:
    return budget_alerts_check()


@shared_task
def meter_events_task() -> dict[str, int]:
    """Roll up, queue the differences, then send them (in that order, in one task)."""
    if not stripe_enabled():
        return {"queued": 0, "sent": 0}
    usage_rollup()
    queued = meter_events_prepare()
    result = meter_events_send()
    return {
        "queued": queued,
        "sent": result.sent,
        "retry_later": result.retry_later,
        "failed": result.failed,
    }


@shared_task
def meter_reconcile_task() -> int:
    if not stripe_enabled():
        return 0
    return sum(1 for row in meter_reconcile() if not row.matches)


@shared_task
def grace_enforce_task() -> int:
    return grace_enforce()


@shared_task
def stripe_event_process_task(event_pk: int) -> bool:
    return stripe_event_process(event_pk=event_pk)


@shared_task
def stripe_events_retry_task() -> int:
    return sum(1 for pk in stripe_events_pending() if stripe_event_process(event_pk=pk))
