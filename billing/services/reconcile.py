"""Compare Stripe's meter event summaries with the ledger, per org, meter and UTC day.

Two questions per day: did we report the ledger (rollups of the day's billable hours against the
meter events for those hours), and did Stripe count what we sent (events by their timestamp
against Stripe's daily summary)? Any difference is stored and shown to staff in the admin.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import stripe
from django.db.models import Sum
from django.utils import timezone

from billing.models import BillingAccount, MeterEvent, ReconciliationResult, StripeMeter
from billing.models.ledger import UsageRollup
from billing.models.payments import MeterEventStatus
from billing.rollups import hour_floor
from billing.services.meters import METER_BY_KEY
from billing.stripe_client import stripe_client, with_retries

logger = logging.getLogger(__name__)


def _sum(queryset: object, column: str) -> int:
    return int(queryset.aggregate(total=Sum(column))["total"] or 0)  # type: ignore[attr-defined]


def _billable_bounds(account: BillingAccount, start: datetime, end: datetime) -> tuple:
    first = start
    if account.billable_from is not None:
        from_hour = hour_floor(account.billable_from)
        if from_hour < account.billable_from:
            from_hour += timedelta(hours=1)
        first = max(first, from_hour)
    last = end
    if account.billable_until is not None:
        last = min(last, hour_floor(account.billable_until) + timedelta(hours=1))
    return first, last


def _summaries(
    client: stripe.StripeClient, meter_id: str, customer: str, start: datetime, end: datetime
) -> Any:
    params: Any = {
        "customer": customer,
        "start_time": int(start.timestamp()),
        "end_time": int(end.timestamp()),
        "value_grouping_window": "day",
    }
    return with_retries(lambda: client.v1.billing.meters.event_summaries.list(meter_id, params))


def meter_reconcile(*, day: date | None = None) -> list[ReconciliationResult]:
    """Reconcile one UTC day (yesterday by default) for every subscribed org and meter."""
    day = day or (timezone.now() - timedelta(days=1)).date()
    start = datetime.combine(day, time.min, tzinfo=UTC)
    end = start + timedelta(days=1)
    meters = list(StripeMeter.objects.exclude(stripe_meter_id=""))
    accounts = (
        BillingAccount.objects.select_related("org")
        .exclude(stripe_customer_id="")
        .exclude(billable_from=None)
        .order_by("pk")
    )
    client = stripe_client()
    results = []
    for account in accounts:
        first, last = _billable_bounds(account, start, end)
        for meter in meters:
            spec = METER_BY_KEY.get(meter.key)
            if spec is None:
                continue
            ledger = 0
            if first < last:
                ledger = _sum(
                    UsageRollup.objects.filter(
                        org_id=account.org_id, source=spec.source, hour__gte=first, hour__lt=last
                    ),
                    "cost_micros",
                )
            events = MeterEvent.objects.filter(org_id=account.org_id, meter_key=meter.key)
            reported = _sum(
                events.filter(hour__gte=start, hour__lt=end).exclude(
                    status=MeterEventStatus.FAILED
                ),
                "value",
            )
            sent = _sum(
                events.filter(
                    status=MeterEventStatus.SENT, timestamp__gte=start, timestamp__lt=end
                ),
                "value",
            )
            problems = []
            if ledger != reported:
                problems.append(f"ledger {ledger} vs reported {reported} (not yet sent or failed)")
            stripe_value: int | None = None
            try:
                summaries = _summaries(
                    client, meter.stripe_meter_id, account.stripe_customer_id, start, end
                )
            except stripe.StripeError as error:
                # One customer Stripe cannot answer for (deleted in the dashboard, say) must not
                # leave every other org unreconciled; the row shows staff what happened.
                logger.error(
                    "meter reconciliation: Stripe's summary could not be read",
                    extra={
                        "org": account.org.slug,
                        "meter": meter.key,
                        "day": day.isoformat(),
                        "customer": account.stripe_customer_id,
                        "error": f"{type(error).__name__} {error.http_status}: {error}"[:300],
                    },
                )
                problems.append(f"Stripe's summary could not be read: {type(error).__name__}")
            else:
                # Stripe reports the aggregate as a JSON number: a whole count of micro-dollars.
                stripe_value = sum(
                    int(Decimal(str(summary.aggregated_value))) for summary in summaries.data
                )
                if sent != stripe_value:
                    problems.append(f"sent {sent} vs Stripe {stripe_value}")
            row, _ = ReconciliationResult.objects.update_or_create(
                org_id=account.org_id,
                meter_key=meter.key,
                day=day,
                defaults={
                    "ledger_micros": ledger,
                    "reported_micros": reported,
                    "sent_micros": sent,
                    "stripe_value": stripe_value,
                    "matches": not problems,
                    "detail": "; ".join(problems)[:300],
                    "checked_at": timezone.now(),
                },
            )
            results.append(row)
    return results
