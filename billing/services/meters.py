"""Usage to Stripe: Billing Meters and metered prices, and meter events from the hourly rollups.

Mapping from the ledger to the invoice (docs/billing.md has the table):
- meter ``inference_tokens_cost``: per org and hour, the sum of the token rollups' ``cost_micros``;
- meter ``dedicated_uptime_cost``: the same for dedicated replicas' uptime.
Each meter backs one metered price of 0.0001 US cents (one micro-dollar) per unit, so an invoice
line's quantity is the console's cost for that period in micro-dollars.

One event per org, meter and hour, with the deterministic identifier
``<org public id>-<meter>-<YYYYMMDDHH>``. Usage that reaches an hour after it was reported is sent
as a further event for the difference only (``...-<seq>``), so nothing is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q, Sum
from django.utils import timezone

import billing.stripe_client as stripe_calls
from billing.models import BillingAccount, MeterEvent, StripeMeter, UsageRollup
from billing.models.ledger import RollupSource
from billing.models.payments import MeterEventStatus
from billing.rollups import hour_floor
from billing.selectors import billable_span, month_start
from billing.stripe_client import (
    backoff_seconds,
    is_retryable,
    stripe_client,
    with_retries,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeterSpec:
    key: str
    source: str
    event_name: str
    display_name: str


METERS: tuple[MeterSpec, ...] = (
    MeterSpec("tokens", RollupSource.TOKENS, "inference_tokens_cost", "Inference (tokens)"),
    MeterSpec("uptime", RollupSource.UPTIME, "dedicated_uptime_cost", "Dedicated deployments"),
)
METER_BY_KEY = {spec.key: spec for spec in METERS}
# One unit is one micro-dollar: 0.0001 US cents.
UNIT_AMOUNT_DECIMAL_CENTS = "0.0001"
# Stripe accepts meter event timestamps up to 35 days old; keep a day's margin.
MAX_EVENT_AGE = timedelta(days=34)
# Stripe finalises a period's invoice about an hour after the period ends; late usage for a
# period that closed before this much of the new one has passed is billed in the new period.
PERIOD_CLOSE_GRACE = timedelta(minutes=45)
CLAIM_TIMEOUT = timedelta(minutes=5)


def _meter_create(client: stripe.StripeClient, spec: MeterSpec) -> str:
    params: Any = {
        "display_name": spec.display_name,
        "event_name": spec.event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
    }
    options: Any = {"idempotency_key": f"meter-create-{spec.event_name}"}
    return with_retries(lambda: client.v1.billing.meters.create(params, options)).id


def _product_create(client: stripe.StripeClient, spec: MeterSpec) -> str:
    params: Any = {"name": spec.display_name, "metadata": {"meter": spec.key}}
    options: Any = {"idempotency_key": f"product-create-{spec.key}"}
    return with_retries(lambda: client.v1.products.create(params, options)).id


def _price_create(client: stripe.StripeClient, spec: MeterSpec, row: StripeMeter) -> str:
    params: Any = {
        "product": row.stripe_product_id,
        "currency": "usd",
        "unit_amount_decimal": UNIT_AMOUNT_DECIMAL_CENTS,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": row.stripe_meter_id},
        "lookup_key": f"{spec.event_name}_micros",
        "nickname": f"{spec.display_name}, per micro-dollar",
    }
    options: Any = {"idempotency_key": f"price-create-{spec.key}"}
    return with_retries(lambda: client.v1.prices.create(params, options)).id


def stripe_setup() -> list[StripeMeter]:
    """Create the Billing Meters, their products and metered prices in Stripe, once each."""
    client = stripe_client()
    rows = []
    for spec in METERS:
        row, _ = StripeMeter.objects.get_or_create(
            key=spec.key,
            defaults={"event_name": spec.event_name, "display_name": spec.display_name},
        )
        if not row.stripe_meter_id:
            row.stripe_meter_id = _meter_create(client, spec)
            row.save(update_fields=["stripe_meter_id"])
        if not row.stripe_product_id:
            row.stripe_product_id = _product_create(client, spec)
            row.save(update_fields=["stripe_product_id"])
        if not row.stripe_price_id:
            row.stripe_price_id = _price_create(client, spec, row)
            row.save(update_fields=["stripe_price_id"])
        rows.append(row)
    return rows


def meter_identifier(*, org_public_id: object, meter_key: str, hour: datetime, seq: int) -> str:
    base = f"{org_public_id}-{meter_key}-{hour.astimezone(UTC):%Y%m%d%H}"
    return base if seq == 0 else f"{base}-{seq}"


def _billable_hours(account: BillingAccount, now: datetime) -> tuple[datetime, datetime] | None:
    """[first, end) of whole hours to report: inside the subscription's life, already over (with
    a delay for stragglers) and young enough for Stripe."""
    span = billable_span(account)
    if span is None:
        return None
    first, until = span
    first = max(first, hour_floor(now - MAX_EVENT_AGE))
    end = hour_floor(now - timedelta(minutes=settings.BILLING_METER_REPORT_DELAY_MINUTES))
    if until is not None:
        end = min(end, until)
    return (first, end) if first < end else None


def meter_events_prepare(*, now: datetime | None = None) -> int:
    """Queue a meter event for every org, meter and hour whose ledger exceeds what was reported.

    Returns how many events were queued. Safe to run concurrently and repeatedly: the difference
    is computed from what is already queued, and (org, meter, hour, seq) is unique."""
    now = now or timezone.now()
    queued = 0
    accounts = BillingAccount.objects.select_related("org").exclude(stripe_customer_id="")
    accounts = accounts.exclude(billable_from=None)
    for account in accounts:
        window = _billable_hours(account, now)
        if window is None:
            continue
        for spec in METERS:
            ledger = dict(
                UsageRollup.objects.filter(
                    org_id=account.org_id,
                    source=spec.source,
                    hour__gte=window[0],
                    hour__lt=window[1],
                )
                .values_list("hour")
                .order_by()
                .annotate(total=Sum("cost_micros"))
            )
            reported = {
                hour: (int(total or 0), int(last_seq))
                for hour, total, last_seq in MeterEvent.objects.filter(
                    org_id=account.org_id,
                    meter_key=spec.key,
                    hour__gte=window[0],
                    hour__lt=window[1],
                )
                .values_list("hour")
                .order_by()
                .annotate(total=Sum("value"), last=Max("seq"))
            }
            for hour, total in sorted(ledger.items()):
                sent, last_seq = reported.get(hour, (0, -1))
                difference = int(total or 0) - sent
                if difference < 0:
                    logger.error(
                        "ledger for org %s %s %s is below what was reported (%d < %d)",
                        account.org_id,
                        spec.key,
                        hour,
                        total,
                        sent,
                    )
                if difference <= 0:
                    continue
                seq = last_seq + 1
                closed_before = month_start(now - PERIOD_CLOSE_GRACE)
                try:
                    with transaction.atomic():
                        MeterEvent.objects.create(
                            org_id=account.org_id,
                            meter_key=spec.key,
                            hour=hour,
                            seq=seq,
                            value=difference,
                            identifier=meter_identifier(
                                org_public_id=account.org.public_id,
                                meter_key=spec.key,
                                hour=hour,
                                seq=seq,
                            ),
                            # Usage for a period Stripe has already invoiced goes on the next.
                            timestamp=hour if hour >= closed_before else now,
                            stripe_customer_id=account.stripe_customer_id,
                            next_attempt_at=now,
                        )
                except IntegrityError:
                    continue  # a concurrent run queued this difference already
                queued += 1
    return queued


@dataclass
class SendResult:
    sent: int = 0
    retry_later: int = 0
    failed: int = 0


def _already_recorded(error: stripe.StripeError) -> bool:
    # Past the idempotency key's 24 hours, Stripe answers a repeated identifier with an error
    # instead of the original response: the event is in Stripe, which is what we wanted.
    message = str(getattr(error, "user_message", "") or error).lower()
    return error.http_status == 400 and "identifier" in message and "already" in message


def _meter_event_create(
    client: stripe.StripeClient,
    params: Any,
    identifier: str,
    sleep: Callable[[float], None] | None,
) -> None:
    options: Any = {"idempotency_key": f"meter-event-{identifier}"}
    with_retries(lambda: client.v1.billing.meter_events.create(params, options), sleep=sleep)


def meter_events_send(
    *,
    now: datetime | None = None,
    limit: int | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> SendResult:
    """Send due meter events, a batch (``limit``) at a time until none is due or the run has
    used ``BILLING_METER_SEND_SECONDS``, paced under Stripe's rate limit, each retried with
    backoff on 429 and 5xx. An event that still fails transiently ends the run: it and the
    rest wait for the next run. A rejected event is marked failed for staff (the admin lists
    it)."""
    now = now or timezone.now()
    limit = limit or settings.BILLING_METER_BATCH_SIZE
    clock = clock or time.monotonic
    deadline = clock() + settings.BILLING_METER_SEND_SECONDS
    meters = {m.key: m for m in StripeMeter.objects.all()}
    result = SendResult()
    client = stripe_client()
    pause = 1.0 / max(settings.BILLING_METER_EVENTS_PER_SECOND, 1)
    calls = 0
    while True:
        due = list(
            MeterEvent.objects.filter(status=MeterEventStatus.PENDING, next_attempt_at__lte=now)
            .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT))
            .order_by("hour", "seq")
            .values_list("pk", flat=True)[:limit]
        )
        stopped = False
        for index, pk in enumerate(due):
            claimed = (
                MeterEvent.objects.filter(pk=pk, status=MeterEventStatus.PENDING)
                .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT))
                .update(claimed_at=now)
            )
            if not claimed:
                continue  # another worker has it
            event = MeterEvent.objects.get(pk=pk)
            meter = meters.get(event.meter_key)
            if meter is None:
                event.status, event.last_error = MeterEventStatus.FAILED, "meter not set up"
                event.save(update_fields=["status", "last_error"])
                result.failed += 1
                continue
            if calls:
                (sleep or stripe_calls.pause)(pause)
            calls += 1
            params: Any = {
                "event_name": meter.event_name,
                "payload": {
                    "stripe_customer_id": event.stripe_customer_id,
                    "value": str(event.value),
                },
                "identifier": event.identifier,
                "timestamp": int(event.timestamp.timestamp()),
            }
            try:
                _meter_event_create(client, params, event.identifier, sleep)
            except stripe.StripeError as error:
                event.attempts += 1
                event.last_error = f"{type(error).__name__} {error.http_status}: {error}"[:2000]
                event.claimed_at = None
                if _already_recorded(error):
                    event.status, event.sent_at = MeterEventStatus.SENT, timezone.now()
                    result.sent += 1
                elif is_retryable(error):
                    event.next_attempt_at = now + timedelta(
                        seconds=60 * backoff_seconds(event.attempts)
                    )
                    result.retry_later += 1
                else:
                    event.status = MeterEventStatus.FAILED
                    result.failed += 1
                event.save()
                if event.status == MeterEventStatus.PENDING:
                    # Stripe is down or throttling past the retries: the rest of the batch
                    # would only wait through retries of its own, run after run, past the
                    # task's time limit. It is left unclaimed for the next run.
                    untried = len(due) - index - 1
                    result.retry_later += untried
                    logger.warning(
                        "stripe did not take meter event %s (%s); %d meter events wait for "
                        "the next run",
                        event.identifier,
                        event.last_error,
                        untried + 1,
                    )
                    stopped = True
                    break
                continue
            MeterEvent.objects.filter(pk=pk).update(
                status=MeterEventStatus.SENT,
                sent_at=timezone.now(),
                attempts=event.attempts + 1,
                claimed_at=None,
                last_error="",
            )
            result.sent += 1
        # Every event of a batch leaves the due list (sent, failed, waiting or another
        # worker's), so each batch is new; a short one was the last.
        if stopped or len(due) < limit:
            break
        if clock() >= deadline:
            logger.info("meter events: the run's time is up; the rest wait for the next run")
            break
    return result
