"""The ledger's door: the gateway hands finished requests' usage to billing here, in batches.

The gateway calls ``usage_record_batch`` from a background flusher thread; the orchestrator calls
``uptime_record_batch`` for dedicated replicas' uptime. Both rate what they are given at the price
in force at the time it was served, write it once (a repeated id writes nothing) and return how
many rows they wrote.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Sum
from django.utils import timezone

from billing.models import UptimeRecord, UsageRecord
from billing.pricing import (
    PriceRates,
    PriceTable,
    cost_micros,
    price_table,
    uptime_cost_micros,
)

logger = logging.getLogger(__name__)

_CHUNK = 500
# The largest value of the ledger's integer columns (``integer`` on PostgreSQL): one value
# beyond it would make the database refuse the whole batch's INSERT.
INT_MAX = 2**31 - 1


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
    # Why a failed request failed (the code of the error the client got), "" when it did not.
    error_code: str = ""


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
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "latency_ms",
            "ttft_ms",
        ):
            value = getattr(event, name)
            if value is None and name == "ttft_ms":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problem = f"{name} must be a non-negative int, got {value!r}"
                break
            if value > INT_MAX and name.endswith("_tokens"):
                # Not a count to bill: the event is set aside rather than rated at a guess.
                problem = f"{name} must be at most {INT_MAX}, got {value}"
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


def _usage_columns() -> list[Field[Any, Any]]:
    return [field for field in UsageRecord._meta.concrete_fields if not field.primary_key]


def _measured(name: str, value: int, event: UsageEvent) -> int:
    """A time measured by the gateway, at most what its column holds: a wrong one is no reason
    to lose the request's usage."""
    if value <= INT_MAX:
        return value
    logger.warning(
        "usage event %r: %s %d is more than the ledger holds; stored as %d",
        event.request_id,
        name,
        value,
        INT_MAX,
    )
    return INT_MAX


def _usage_values(event: UsageEvent, table: PriceTable, stamp: datetime) -> dict[str, Any]:
    """One record's column values (by attribute name), rated at the price in force."""
    price = table.get(
        event.org_id, event.model, deployment_id=event.deployment_id, at=event.served_at
    )
    baseline = event.baseline_cost_micros
    if event.baseline_model:
        baseline_price = table.get(event.org_id, event.baseline_model, at=event.served_at)
        baseline = cost_micros(
            baseline_price, event.prompt_tokens, event.completion_tokens, event.cached_tokens
        )
    return {
        "request_id": event.request_id,
        "org_id": event.org_id,
        "api_key_id": event.api_key_id,
        "route": event.route[:200],
        "target": event.target[:200],
        "deployment_id": event.deployment_id,
        "replica_id": event.replica_id,
        "model": event.model[:200],
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "cached_tokens": event.cached_tokens,
        "status_code": event.status_code,
        "error_code": event.error_code[:40],
        "latency_ms": _measured("latency_ms", event.latency_ms, event),
        "ttft_ms": None if event.ttft_ms is None else _measured("ttft_ms", event.ttft_ms, event),
        "cost_micros": cost_micros(
            price, event.prompt_tokens, event.completion_tokens, event.cached_tokens
        ),
        "price_id": price.price_id,
        "router_score": event.router_score,
        "router_choice": event.router_choice[:100],
        "baseline_cost_micros": baseline,
        "served_at": event.served_at,
        "created_at": stamp,
    }


_PLAIN = (str, int, float)


def _max_params(connection: BaseDatabaseWrapper) -> int:
    """How many parameters one statement may carry on this connection."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        raw = connection.connection
        # SQLite's own limit (32,766 since 3.32), not Django's conservative 999.
        return int(raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return connection.features.max_query_params or 65_535


def _usage_insert(rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING; returns the rows written.

    This is the gateway's flusher's hot loop, so it skips model instances and the ORM's
    bulk_create (several times the cost per row) and writes plain statements, with every value
    prepared as the ORM would. Both supported databases (PostgreSQL, SQLite 3.35 and newer) know
    ON CONFLICT and RETURNING. On PostgreSQL the batch travels as one array per column through
    ``unnest`` (one statement with a parameter per column, whatever the batch size); on SQLite as
    multi-row VALUES, as many rows per statement as its parameter limit allows.
    """
    connection = connections[router.db_for_write(UsageRecord)]
    fields = _usage_columns()
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    head = f"INSERT INTO {quote(UsageRecord._meta.db_table)} ({columns}) "
    tail = f" ON CONFLICT ({quote('request_id')}) DO NOTHING RETURNING {quote('request_id')}"
    preps = [(field.attname, field.get_db_prep_save) for field in fields]

    def prepared(chunk: list[dict[str, Any]], name: str, prep: Any) -> list[Any]:
        # A str, int, float or None goes to the database as it is for every field here; UUIDs
        # and datetimes take their field's own preparation (hex on SQLite, UTC).
        return [
            value if value is None or type(value) in _PLAIN else prep(value, connection)
            for value in (row[name] for row in chunk)
        ]

    written = 0
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = ", ".join(f"%s::{field.db_type(connection)}[]" for field in fields)
            # Every name in these statements comes from the model's metadata, none from input.
            sql = f"{head}SELECT * FROM unnest({arrays}){tail}"  # noqa: S608
            for start in range(0, len(rows), _CHUNK * 10):
                chunk = rows[start : start + _CHUNK * 10]
                cursor.execute(sql, [prepared(chunk, name, prep) for name, prep in preps])
                written += len(cursor.fetchall())
            return written
        row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
        size = max(1, min(_CHUNK, _max_params(connection) // len(fields)))
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            columns_values = [prepared(chunk, name, prep) for name, prep in preps]
            params = [value for row in zip(*columns_values, strict=True) for value in row]
            cursor.execute(f"{head}VALUES {', '.join([row_sql] * len(chunk))}{tail}", params)
            written += len(cursor.fetchall())
    return written


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
    table = price_table()
    stamp = timezone.now()
    rows = [_usage_values(event, table, stamp) for event in unique.values()]
    with transaction.atomic():
        return _usage_insert(rows)


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _uptime_pieces(
    event: UptimeEvent, table: PriceTable
) -> Iterator[tuple[datetime, int, PriceRates | None]]:
    """(hour, whole seconds, price) of the event's time, cut at hour boundaries and where another
    price comes into force, each piece rated at the price in force during it.

    Seconds are counted from the event's start and each cut falls on a whole second of it, so
    the pieces add up to the event's whole seconds: only the fraction at its very end is
    dropped (the orchestrator reports whole seconds, so there is none)."""

    def elapsed(moment: datetime) -> int:
        return (moment - event.started_at) // timedelta(seconds=1)

    cursor = event.started_at
    while cursor < event.ended_at:
        hour = _hour_floor(cursor)
        boundary = min(hour + timedelta(hours=1), event.ended_at)
        for begin, end, price in table.uptime_prices(
            event.org_id,
            event.model,
            deployment_id=event.deployment_id,
            start=cursor,
            end=boundary,
        ):
            seconds = elapsed(end) - elapsed(begin)
            if seconds:
                yield hour, seconds, price
        cursor = boundary


# The seconds already in the ledger of a replica's hour at one price (replica, hour, price, GPUs).
_RatedKey = tuple[uuid.UUID, datetime, uuid.UUID | None, int]


def _rated_seconds(events: Sequence[UptimeEvent]) -> dict[_RatedKey, int]:
    replicas = {event.replica_id for event in events}
    first = min(_hour_floor(event.started_at) for event in events)
    last = max(event.ended_at for event in events)
    rows = (
        UptimeRecord.objects.filter(replica_id__in=replicas, hour__gte=first, hour__lt=last)
        .exclude(price_id=None)
        .values_list("replica_id", "hour", "price_id", "gpus")
        .order_by()
        .annotate(seconds=Sum("seconds"))
    )
    return {(replica, hour, price, gpus): seconds for replica, hour, price, gpus, seconds in rows}


def uptime_record_batch(events: Sequence[UptimeEvent]) -> int:
    """Store dedicated replicas' uptime, split by hour and rated per GPU- or replica-second at
    the price in force during each part of it (a price may come into force within an hour).

    A replica's hour at one price is rounded once, however many reports it took: each record
    carries what its seconds add to the rounded cost of the seconds before it in that hour, so
    the hour's records add up to ``seconds x units x price`` rounded once. Reports of one
    replica come one at a time (the orchestrator writes each under the replica's marker).

    Idempotent on ``event_id``; returns the number of hourly rows written."""
    unique: dict[str, UptimeEvent] = {}
    for event in events:
        if not event.event_id or len(event.event_id) > 100:
            raise ValueError(f"uptime event {event.event_id!r}: event_id must have 1 to 100 chars")
        if timezone.is_naive(event.started_at) or timezone.is_naive(event.ended_at):
            raise ValueError(f"uptime event {event.event_id!r}: times must be timezone-aware")
        if event.ended_at < event.started_at:
            raise ValueError(f"uptime event {event.event_id!r}: ended_at is before started_at")
        if not isinstance(event.gpus, int) or event.gpus < 0:
            raise ValueError(f"uptime event {event.event_id!r}: gpus must be a non-negative int")
        unique.setdefault(event.event_id, event)
    if not unique:
        return 0
    table = price_table()
    stamp = timezone.now()
    event_ids = sorted(unique)
    with transaction.atomic():
        # An event already in the ledger writes nothing again, and its seconds, already
        # counted there, must not count twice towards the hour's rounding.
        known = {
            event_id
            for chunk in _chunks(event_ids)
            for event_id in UptimeRecord.objects.filter(event_id__in=chunk)
            .values_list("event_id", flat=True)
            .distinct()
        }
        fresh = [event for event in unique.values() if event.event_id not in known]
        if not fresh:
            return 0
        rated = _rated_seconds(fresh)
        rows: list[UptimeRecord] = []
        for event in fresh:
            parts: dict[datetime, int] = defaultdict(int)
            for hour, seconds, price in _uptime_pieces(event, table):
                part = parts[hour]
                parts[hour] += 1
                cost = 0
                if price is not None:
                    key = (event.replica_id, hour, price.price_id, event.gpus)
                    before = rated.get(key, 0)
                    rated[key] = before + seconds
                    cost = uptime_cost_micros(
                        price, before + seconds, event.gpus
                    ) - uptime_cost_micros(price, before, event.gpus)
                rows.append(
                    UptimeRecord(
                        event_id=event.event_id,
                        hour=hour,
                        part=part,
                        org_id=event.org_id,
                        deployment_id=event.deployment_id,
                        replica_id=event.replica_id,
                        model=event.model[:200],
                        gpus=event.gpus,
                        seconds=seconds,
                        cost_micros=cost,
                        price_id=price.price_id if price else None,
                        created_at=stamp,
                    )
                )
        UptimeRecord.objects.bulk_create(rows, ignore_conflicts=True, batch_size=_CHUNK)
        return sum(
            UptimeRecord.objects.filter(event_id__in=chunk, created_at=stamp).count()
            for chunk in _chunks(event_ids)
        )
