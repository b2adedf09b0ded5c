"""The ledger's door: the gateway hands finished requests' usage to billing here, in batches.

The gateway calls ``usage_record_batch`` from a background flusher thread; the orchestrator calls
``uptime_record_batch`` for dedicated replicas' uptime. Both rate what they are given at the price
in force at the time it was served, write it once (a repeated id writes nothing) and return how
many rows they wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.utils import timezone

from billing.models import UptimeRecord, UsageRecord
from billing.pricing import PriceTable, cost_micros, price_table, uptime_cost_micros

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One finished request, as the gateway saw it. Token counts are the engine's own."""

    request_id: str
    org_id: int
    model: str
    served_at: datetime
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    status_code: int = 200
    latency_ms: int = 0
    ttft_ms: int | None = None
    api_key_id: uuid.UUID | None = None
    route: str = ""
    target: str = ""
    deployment_id: uuid.UUID | None = None
    replica_id: uuid.UUID | None = None
    router_score: float | None = None
    router_choice: str = ""
    # What the request would have cost at the strongest target, for savings reports: either the
    # model to rate it at (the ledger rates it) or an amount already computed.
    baseline_model: str = ""
    baseline_cost_micros: int | None = None


@dataclass(frozen=True, slots=True)
class UptimeEvent:
    """A dedicated replica was up from ``started_at`` to ``ended_at`` (one report; reports of one
    replica must not overlap). ``gpus`` is 0 for a CPU replica."""

    event_id: str
    org_id: int
    deployment_id: uuid.UUID
    replica_id: uuid.UUID
    model: str
    started_at: datetime
    ended_at: datetime
    gpus: int = 0


def _check_usage(event: UsageEvent) -> None:
    problem = None
    if not event.request_id or len(event.request_id) > 100:
        problem = "request_id must have 1 to 100 characters"
    elif timezone.is_naive(event.served_at):
        problem = "served_at must be timezone-aware"
    elif not event.model:
        problem = "model is required"
    else:
        for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "latency_ms"):
            value = getattr(event, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problem = f"{name} must be a non-negative int, got {value!r}"
                break
        else:
            if event.cached_tokens > event.prompt_tokens:
                problem = "cached_tokens exceeds prompt_tokens"
            elif event.baseline_cost_micros is not None and (
                not isinstance(event.baseline_cost_micros, int) or event.baseline_cost_micros < 0
            ):
                problem = "baseline_cost_micros must be a non-negative int"
    if problem:
        raise ValueError(f"usage event {event.request_id!r}: {problem}")


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _record(event: UsageEvent, table: PriceTable, stamp: datetime) -> UsageRecord:
    price = table.get(
        event.org_id, event.model, deployment_id=event.deployment_id, at=event.served_at
    )
    baseline = event.baseline_cost_micros
    if event.baseline_model:
        baseline_price = table.get(event.org_id, event.baseline_model, at=event.served_at)
        baseline = cost_micros(
            baseline_price, event.prompt_tokens, event.completion_tokens, event.cached_tokens
        )
    return UsageRecord(
        request_id=event.request_id,
        org_id=event.org_id,
        api_key_id=event.api_key_id,
        route=event.route[:200],
        target=event.target[:200],
        deployment_id=event.deployment_id,
        replica_id=event.replica_id,
        model=event.model[:200],
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        cached_tokens=event.cached_tokens,
        status_code=event.status_code,
        latency_ms=event.latency_ms,
        ttft_ms=event.ttft_ms,
        cost_micros=cost_micros(
            price, event.prompt_tokens, event.completion_tokens, event.cached_tokens
        ),
        price_id=price.price_id,
        router_score=event.router_score,
        router_choice=event.router_choice[:100],
        baseline_cost_micros=baseline,
        served_at=event.served_at,
        created_at=stamp,
    )


def usage_record_batch(events: Sequence[UsageEvent]) -> int:
    """Rate and store usage events; returns the number of records written.

    Idempotent on ``request_id``: ids already in the ledger (or repeated within the batch) write
    nothing. An invalid event raises ``ValueError`` and nothing of the batch is written.
    """
    unique: dict[str, UsageEvent] = {}
    for event in events:
        _check_usage(event)
        unique.setdefault(event.request_id, event)
    if not unique:
        return 0
    ids = list(unique)
    existing: set[str] = set()
    for chunk in _chunks(ids):
        existing.update(
            UsageRecord.objects.filter(request_id__in=chunk).values_list("request_id", flat=True)
        )
    new_ids = [rid for rid in ids if rid not in existing]
    if not new_ids:
        return 0
    table = price_table()
    # Every row of this batch carries the same creation stamp, which is how the rows it wrote
    # are told apart from rows a concurrent duplicate may have written first.
    stamp = timezone.now()
    records = [_record(unique[rid], table, stamp) for rid in new_ids]
    with transaction.atomic():
        UsageRecord.objects.bulk_create(records, ignore_conflicts=True, batch_size=_CHUNK)
        return sum(
            UsageRecord.objects.filter(request_id__in=chunk, created_at=stamp).count()
            for chunk in _chunks(new_ids)
        )


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _split_by_hour(start: datetime, end: datetime) -> Iterator[tuple[datetime, int]]:
    """(hour, whole seconds of [start, end) within that hour); fractions of a second are dropped."""
    cursor = start
    while cursor < end:
        hour = _hour_floor(cursor)
        boundary = min(hour + timedelta(hours=1), end)
        seconds = int((boundary - cursor) // timedelta(seconds=1))
        if seconds:
            yield hour, seconds
        cursor = boundary


def uptime_record_batch(events: Sequence[UptimeEvent]) -> int:
    """Store dedicated replicas' uptime, split by hour and rated per GPU- or replica-second.

    Idempotent on ``event_id``; returns the number of hourly rows written."""
    for event in events:
        if not event.event_id or len(event.event_id) > 100:
            raise ValueError(f"uptime event {event.event_id!r}: event_id must have 1 to 100 chars")
        if timezone.is_naive(event.started_at) or timezone.is_naive(event.ended_at):
            raise ValueError(f"uptime event {event.event_id!r}: times must be timezone-aware")
        if event.ended_at < event.started_at:
            raise ValueError(f"uptime event {event.event_id!r}: ended_at is before started_at")
        if not isinstance(event.gpus, int) or event.gpus < 0:
            raise ValueError(f"uptime event {event.event_id!r}: gpus must be a non-negative int")
    if not events:
        return 0
    table = price_table()
    stamp = timezone.now()
    rows: list[UptimeRecord] = []
    for event in events:
        for hour, seconds in _split_by_hour(event.started_at, event.ended_at):
            price = table.uptime_price(
                event.org_id, event.model, deployment_id=event.deployment_id, at=hour
            )
            rows.append(
                UptimeRecord(
                    event_id=event.event_id,
                    hour=hour,
                    org_id=event.org_id,
                    deployment_id=event.deployment_id,
                    replica_id=event.replica_id,
                    model=event.model[:200],
                    gpus=event.gpus,
                    seconds=seconds,
                    cost_micros=uptime_cost_micros(price, seconds, event.gpus) if price else 0,
                    price_id=price.price_id if price else None,
                    created_at=stamp,
                )
            )
    event_ids = sorted({event.event_id for event in events})
    with transaction.atomic():
        UptimeRecord.objects.bulk_create(rows, ignore_conflicts=True, batch_size=_CHUNK)
        return sum(
            UptimeRecord.objects.filter(event_id__in=chunk, created_at=stamp).count()
            for chunk in _chunks(event_ids)
        )
