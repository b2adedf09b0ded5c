"""Reading the counts of refused requests: an org's refusals over a range, by key and reason."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Max, Min, Sum
from django.utils import timezone

from billing.rollups import hour_floor
from console.models import ApiKey, Organisation
from inference.models import RefusalCount

MAX_GROUPS = 200

# What each code means, for people reading the console or the API's documentation.
REFUSAL_HELP = {
    "revoked_api_key": "The key was revoked: something still uses it.",
    "expired_api_key": "The key had expired.",
    "insufficient_scope": "The key lacks the 'inference' scope.",
    "ip_not_allowed": "The key was used from outside its allowed networks.",
    "org_suspended": "The organisation was suspended.",
    "rate_limit_exceeded": "A requests- or tokens-per-minute limit (of the key or the "
    "organisation) was reached.",
    "budget_exhausted": "A monthly budget (of the key or the organisation) or the free credit was "
    "used up.",
    "model_not_allowed": "The key may not use the model it asked for.",
    "model_not_found": "No route or deployment of that name (or none the key may see).",
    "model_not_supported": "The model does not answer that endpoint (a chat model asked for "
    "embeddings, or the reverse).",
    "no_capacity": "No target could take it: the deployment was paused, had no replica, or "
    "none of the route's targets exists any more.",
    "cold_start": "The model was scaled to zero and no replica was ready in time (with no "
    "cold-start fallback to use meanwhile).",
    "deployment_failed": "The deployment had failed and was not restarted; change or scale it "
    "to start it again.",
    "limits_unavailable": "Redis could not check the request's limits or budget in time.",
    "tools_not_enabled": "The request left the choice of tools to a model whose deployment "
    "cannot choose them.",
    "invalid_json": "The body was not valid JSON.",
    "invalid_body": "The body was not a valid request (a missing or wrongly typed field).",
    "body_too_large": "The body was larger than the gateway accepts.",
}


@dataclass(frozen=True)
class RefusalGroup:
    api_key: ApiKey
    status_code: int
    error_code: str
    count: int
    first_minute: datetime
    last_minute: datetime

    @property
    def help(self) -> str:
        return REFUSAL_HELP.get(self.error_code, "")


@dataclass(frozen=True)
class RefusalSummary:
    since: datetime | None  # None: from the first count kept
    until: datetime
    groups: list[RefusalGroup]  # the MAX_GROUPS largest
    total: int  # every refusal in the range, listed or not


def last_day_start(now: datetime) -> datetime:
    """Where "the last 24 hours" start in the console: 24 whole hours before the current one,
    as the Overview's traffic card counts them from the hourly rollups. The card's refusal count
    and the Requests page it links to use it too, so both show the same number."""
    return hour_floor(now) - timedelta(hours=24)


def refusal_summary(
    *,
    org: Organisation,
    start: date | None = None,
    end: date | None = None,
    key_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> RefusalSummary:
    """The org's refusals between ``start`` and ``end`` (UTC days, both included), or over the
    last 24 hours (``last_day_start``) when neither is given, grouped by key, status and code,
    most first (the ``MAX_GROUPS`` largest), with the total of all of them."""
    now = now or timezone.now()
    since = datetime.combine(start, time.min, UTC) if start else None
    until = datetime.combine(end + timedelta(days=1), time.min, UTC) if end else None
    if since is None and until is None:
        since, until = last_day_start(now), now
    rows = RefusalCount.objects.filter(org=org)
    if since is not None:
        rows = rows.filter(minute__gte=since)
    if until is not None:
        rows = rows.filter(minute__lt=until)
    if key_id is not None:
        rows = rows.filter(api_key_id=key_id)
    grouped = list(
        rows.values("api_key_id", "status_code", "error_code")
        .annotate(count=Sum("count"), first=Min("minute"), last=Max("minute"))
        .order_by("-count", "api_key_id", "status_code", "error_code")[:MAX_GROUPS]
    )
    keys = ApiKey.objects.filter(org=org).in_bulk({g["api_key_id"] for g in grouped})
    groups = [
        RefusalGroup(
            api_key=keys[g["api_key_id"]],
            status_code=g["status_code"],
            error_code=g["error_code"],
            count=g["count"],
            first_minute=g["first"],
            last_minute=g["last"],
        )
        for g in grouped
        if g["api_key_id"] in keys
    ]
    return RefusalSummary(
        since=since,
        until=until or now,
        groups=groups,
        total=int(rows.aggregate(n=Sum("count"))["n"] or 0),
    )


@dataclass(frozen=True)
class PlatformRefusals:
    total: int
    top: list[tuple[str, str, str, int]]  # (org slug, key prefix, error code, count)


def platform_refusals(*, now: datetime | None = None, top: int = 5) -> PlatformRefusals:
    """Refusals of every organisation over the last 24 hours, for staff: the total and the
    keys and reasons with the most."""
    since = (now or timezone.now()) - timedelta(hours=24)
    rows = RefusalCount.objects.filter(minute__gte=since)
    total = rows.aggregate(n=Sum("count"))["n"] or 0
    grouped = (
        rows.values_list("org__slug", "api_key__prefix", "error_code")
        .annotate(n=Sum("count"))
        .order_by("-n")[:top]
    )
    return PlatformRefusals(total=total, top=[(s, p, c, n) for s, p, c, n in grouped])


def refusals_since(*, org: Organisation, since: datetime) -> int:
    """How many of the org's requests were refused from ``since`` on."""
    total = RefusalCount.objects.filter(org=org, minute__gte=since).aggregate(n=Sum("count"))
    return int(total["n"] or 0)
