"""Hourly rollups of the ledger per org, source, model, route and key.

An hour is always recomputed whole from its records, and each rollup row's primary key is derived
from its dimensions, so running a rollup again writes exactly the same rows. The incremental run
finds the hours to recompute from the records created since the previous run (with a margin for
transactions that committed late), which is also how usage that arrives late reaches its hour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, F, Q, Sum, When
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from billing.models import RollupCursor, UptimeRecord, UsageRecord, UsageRollup
from billing.models.ledger import RollupSource

logger = logging.getLogger(__name__)

# Upper bounds (exclusive) of the latency buckets in milliseconds; one more bucket holds the rest.
LATENCY_BUCKETS_MS: tuple[int, ...] = (
    10, 25, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500,
    10_000, 15_000, 20_000, 30_000, 60_000, 120_000,
)  # fmt: skip

# A rollup's counts, which usage rows built from rollups sum too.
COUNTED_FIELDS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "resource_seconds",
    "cost_micros",
    "baseline_cost_micros",
)
_UPDATE_FIELDS = [*COUNTED_FIELDS, "latency_histogram"]


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _bucket_counts() -> dict[str, Count]:
    counts: dict[str, Count] = {}
    lower = 0
    for index, upper in enumerate(LATENCY_BUCKETS_MS):
        counts[f"b{index}"] = Count("id", filter=Q(latency_ms__gte=lower, latency_ms__lt=upper))
        lower = upper
    counts[f"b{len(LATENCY_BUCKETS_MS)}"] = Count("id", filter=Q(latency_ms__gte=lower))
    return counts


def _token_rows(org_id: int, hour: datetime) -> list[UsageRollup]:
    buckets = _bucket_counts()
    grouped = (
        UsageRecord.objects.filter(
            org_id=org_id, served_at__gte=hour, served_at__lt=hour + timedelta(hours=1)
        )
        .values("model", "route", "api_key_id")
        .order_by()
        .annotate(
            n=Count("id"),
            n_errors=Count("id", filter=Q(status_code__gte=400)),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cached=Sum("cached_tokens"),
            cost=Sum("cost_micros"),
            # What the requests would have cost at their routes' strongest targets: a request
            # not sent cheaper (no baseline of its own) cost exactly that.
            baseline=Coalesce(Sum(Coalesce("baseline_cost_micros", "cost_micros")), 0),
            **buckets,
        )
    )
    rows = []
    for g in grouped:
        rows.append(
            UsageRollup(
                id=UsageRollup.key_for(
                    org_id=org_id,
                    hour_iso=hour.isoformat(),
                    source=RollupSource.TOKENS,
                    model=g["model"],
                    route=g["route"],
                    api_key_id=g["api_key_id"],
                ),
                org_id=org_id,
                hour=hour,
                source=RollupSource.TOKENS,
                model=g["model"],
                route=g["route"],
                api_key_id=g["api_key_id"],
                requests=g["n"],
                errors=g["n_errors"],
                prompt_tokens=g["prompt"] or 0,
                completion_tokens=g["completion"] or 0,
                cached_tokens=g["cached"] or 0,
                cost_micros=g["cost"] or 0,
                baseline_cost_micros=g["baseline"] or 0,
                latency_histogram=[g[name] for name in buckets],
            )
        )
    return rows


def _uptime_rows(org_id: int, hour: datetime) -> list[UsageRollup]:
    grouped = (
        UptimeRecord.objects.filter(org_id=org_id, hour=hour)
        .values("model")
        .order_by()
        .annotate(
            resource=Sum(Case(When(gpus=0, then=F("seconds")), default=F("seconds") * F("gpus"))),
            cost=Sum("cost_micros"),
        )
    )
    return [
        UsageRollup(
            id=UsageRollup.key_for(
                org_id=org_id,
                hour_iso=hour.isoformat(),
                source=RollupSource.UPTIME,
                model=g["model"],
                route="",
                api_key_id=None,
            ),
            org_id=org_id,
            hour=hour,
            source=RollupSource.UPTIME,
            model=g["model"],
            route="",
            api_key_id=None,
            resource_seconds=g["resource"] or 0,
            cost_micros=g["cost"] or 0,
            baseline_cost_micros=g["cost"] or 0,  # dedicated time costs the same either way
        )
        for g in grouped
    ]


def rollup_hour(*, org_id: int, hour: datetime) -> int:
    """Recompute one org's hour from its records; returns the number of rollup rows it has."""
    hour = hour_floor(hour)
    rows = _token_rows(org_id, hour) + _uptime_rows(org_id, hour)
    with transaction.atomic():
        UsageRollup.objects.filter(org_id=org_id, hour=hour).exclude(
            id__in=[row.id for row in rows]
        ).delete()
        if rows:
            UsageRollup.objects.bulk_create(
                rows, update_conflicts=True, unique_fields=["id"], update_fields=_UPDATE_FIELDS
            )
    return len(rows)


def rollup_hours(pairs: Iterable[tuple[int, datetime]]) -> int:
    """Recompute each (org id, hour); returns how many org-hours were recomputed."""
    done = 0
    for org_id, hour in sorted(set(pairs)):
        rollup_hour(org_id=org_id, hour=hour)
        done += 1
    return done


def _touched_between(lower: datetime, upper: datetime | None) -> set[tuple[int, datetime]]:
    """The (org id, hour) pairs of the records created in [lower, upper) (upper None: since
    lower, records stamped ahead of this clock included)."""
    usage = UsageRecord.objects.filter(created_at__gte=lower)
    uptime = UptimeRecord.objects.filter(created_at__gte=lower)
    if upper is not None:
        usage = usage.filter(created_at__lt=upper)
        uptime = uptime.filter(created_at__lt=upper)
    pairs = {
        (org_id, hour_floor(hour))
        for org_id, hour in usage.annotate(h=TruncHour("served_at"))
        .values_list("org_id", "h")
        .distinct()
        .order_by()
    }
    pairs |= {
        (org_id, hour_floor(hour))
        for org_id, hour in uptime.values_list("org_id", "hour").distinct().order_by()
    }
    return pairs


def _first_created(since: datetime | None) -> datetime | None:
    """When the first record created at or after ``since`` was created (indexed), or None."""
    firsts = []
    for model in (UsageRecord, UptimeRecord):
        rows = model.objects.all()
        if since is not None:
            rows = rows.filter(created_at__gte=since)
        first = rows.order_by("created_at").values_list("created_at", flat=True).first()
        if first is not None:
            firsts.append(first)
    return min(firsts) if firsts else None


# An incremental run works through the records a slice of creation time at a time, moving the
# cursor after each, so that a backlog (a worker down for a day) is caught up over several runs
# instead of each run starting again from the beginning and being stopped by the time limit.
ROLLUP_SLICE = timedelta(hours=1)


@dataclass(frozen=True)
class RollupRun:
    org_hours: int
    created_before: datetime


def _cursor_advance(created_before: datetime) -> None:
    # Only move forward: a slow run finishing after a faster, later one must not rewind it.
    RollupCursor.objects.filter(pk=1).filter(
        Q(created_before__isnull=True) | Q(created_before__lt=created_before)
    ).update(created_before=created_before, last_run_at=timezone.now())


def usage_rollup(
    *, now: datetime | None = None, clock: Callable[[], float] | None = None
) -> RollupRun:
    """Recompute every org-hour that gained records since the previous run, a slice of
    creation time at a time, until it reaches ``now`` or has run for
    ``BILLING_ROLLUP_RUN_SECONDS``; the cursor moves after each slice, so the next run goes on
    from there.

    Repeating a run, or two runs overlapping, only recomputes the same hours to the same rows.
    """
    now = now or timezone.now()
    clock = clock or time.monotonic
    deadline = clock() + settings.BILLING_ROLLUP_RUN_SECONDS
    cursor, _ = RollupCursor.objects.get_or_create(pk=1)
    lower = None
    if cursor.created_before is not None:
        lower = cursor.created_before - timedelta(seconds=settings.BILLING_ROLLUP_MARGIN_SECONDS)
    done = 0
    reached = now
    while True:
        first = _first_created(lower)
        if first is None:
            break
        if lower is None or first > lower:
            lower = first  # a stretch without records is skipped
        if lower + ROLLUP_SLICE >= now:
            # The last slice: everything from here on, records stamped by a clock a little
            # ahead of this one included.
            done += rollup_hours(_touched_between(lower, None))
            break
        upper = lower + ROLLUP_SLICE
        done += rollup_hours(_touched_between(lower, upper))
        _cursor_advance(upper)
        if clock() >= deadline:
            reached = upper
            logger.warning(
                "usage rollup: the run's time is up with records created from %s still to "
                "roll up; the next run goes on from there",
                upper.isoformat(),
            )
            break
        lower = upper
    _cursor_advance(reached)
    logger.info("usage rollup recomputed %d org-hours", done)
    return RollupRun(org_hours=done, created_before=reached)


def usage_rollup_range(*, start: datetime, end: datetime, org_ids: Iterable[int] = ()) -> int:
    """Recompute every org-hour served in [start, end): the nightly safety net and backfills."""
    usage = UsageRecord.objects.filter(served_at__gte=start, served_at__lt=end)
    uptime = UptimeRecord.objects.filter(hour__gte=hour_floor(start), hour__lt=end)
    stale = UsageRollup.objects.filter(hour__gte=hour_floor(start), hour__lt=end)
    ids = list(org_ids)
    if ids:
        usage, uptime, stale = (
            usage.filter(org_id__in=ids),
            uptime.filter(org_id__in=ids),
            stale.filter(org_id__in=ids),
        )
    pairs = {
        (org_id, hour_floor(hour))
        for org_id, hour in usage.annotate(h=TruncHour("served_at"))
        .values_list("org_id", "h")
        .distinct()
        .order_by()
    }
    pairs |= {(o, hour_floor(h)) for o, h in uptime.values_list("org_id", "hour").distinct()}
    # Hours that have rollups but no longer any records are recomputed too (to nothing).
    pairs |= {(o, hour_floor(h)) for o, h in stale.values_list("org_id", "hour").distinct()}
    return rollup_hours(pairs)


def histogram_percentile(histogram: list[int], fraction: float) -> int | None:
    """The upper bound (ms) of the bucket holding the given fraction of requests."""
    total = sum(histogram)
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            if index < len(LATENCY_BUCKETS_MS):
                return LATENCY_BUCKETS_MS[index]
            return LATENCY_BUCKETS_MS[-1]
    return LATENCY_BUCKETS_MS[-1]
