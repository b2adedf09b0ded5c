"""Reads for auto routes: the calibration window, the request log and the savings report.

All of them read the usage ledger (billing's ``UsageRecord``) scoped to one org and one route
name. Money is integer micro-dollars throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from billing.models import UsageRecord
from console.models import Organisation


@dataclass(frozen=True, slots=True)
class WindowRecord:
    score: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


def route_window(
    *, org: Organisation, route_name: str, since: datetime, limit: int
) -> list[WindowRecord]:
    """The route's most recent scored requests (newest first), at most ``limit``."""
    rows = (
        UsageRecord.objects.filter(
            org=org, route=route_name, served_at__gte=since, router_score__isnull=False
        )
        .order_by("-served_at")
        .values_list("router_score", "prompt_tokens", "completion_tokens", "cached_tokens")[:limit]
    )
    return [WindowRecord(float(s or 0.0), p, c, k) for s, p, c, k in rows]


def route_requests(*, org: Organisation, route_name: str, limit: int = 50) -> QuerySet[UsageRecord]:
    """The request log: the route's latest requests with the router's decision."""
    records = UsageRecord.objects.filter(org=org, route=route_name).select_related("api_key")
    return records.order_by("-served_at", "-id")[:limit]


@dataclass(frozen=True, slots=True)
class SavingsDay:
    day: date
    requests: int
    routed_cheaper: int
    cost_micros: int
    baseline_cost_micros: int

    @property
    def saved_micros(self) -> int:
        return self.baseline_cost_micros - self.cost_micros


def route_savings_daily(
    *, org: Organisation, route_name: str, days: int = 30, now: datetime | None = None
) -> list[SavingsDay]:
    """Per UTC day, newest first: actual cost against the cost had every request gone to the
    route's strongest target (same token counts at its price). A request the strongest target
    served costs the same in both columns."""
    now = now or timezone.now()
    start = (now.astimezone(UTC) - timedelta(days=days - 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    rows = (
        UsageRecord.objects.filter(org=org, route=route_name, served_at__gte=start)
        .annotate(day=TruncDate("served_at", tzinfo=UTC))
        .values("day")
        .annotate(
            requests=Count("id"),
            routed_cheaper=Count("id", filter=Q(baseline_cost_micros__isnull=False)),
            cost=Coalesce(Sum("cost_micros"), 0),
            baseline=Coalesce(Sum(Coalesce("baseline_cost_micros", "cost_micros")), 0),
        )
        .order_by("-day")
    )
    return [
        SavingsDay(
            day=row["day"],
            requests=row["requests"],
            routed_cheaper=row["routed_cheaper"],
            cost_micros=int(row["cost"]),
            baseline_cost_micros=int(row["baseline"]),
        )
        for row in rows
    ]
