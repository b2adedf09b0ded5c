"""The request log: an org's served requests one by one, newest first, from the ledger.

Each usage record is one request the gateway sent to a target (its status, tokens, cost, latency,
the route, target, deployment and replica that served it, the router's decision). Prompts and
answers are never stored, so neither is shown. Pages are cut with a cursor on (served time,
record id), so that a page stays correct while new requests arrive.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Q, QuerySet

from billing.models import UsageRecord
from console.models import Organisation
from inference.models import Deployment

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CursorError(ValueError):
    """A ``before`` cursor that this log did not hand out."""


@dataclass(frozen=True)
class RequestFilters:
    status: str = ""  # "", "ok" (below 400) or "error" (400 and above)
    route: str = ""
    model: str = ""
    key_id: uuid.UUID | None = None
    request_id: str = ""
    deployment_id: uuid.UUID | None = None
    start: date | None = None  # UTC days, both included
    end: date | None = None


_CURSOR_RE = re.compile(r"([0-9]{1,18})_([0-9]{1,18})")


@dataclass(frozen=True)
class Cursor:
    served_at: datetime
    pk: int

    # URL-safe: the served time in microseconds since the epoch (exact), then the record's id.
    def encode(self) -> str:
        micros = (self.served_at - EPOCH) // timedelta(microseconds=1)
        return f"{micros}_{self.pk}"

    @classmethod
    def decode(cls, value: str) -> Cursor:
        # ASCII digits only ("¹".isdigit() holds), at most 18 (a 64-bit id column holds them).
        match = _CURSOR_RE.fullmatch(value)
        if match is not None and int(match[2]) > 0:
            try:
                return cls(EPOCH + timedelta(microseconds=int(match[1])), int(match[2]))
            except OverflowError:  # past the last date Python can hold: never one of ours
                pass
        raise CursorError("not a cursor from this log: pass the `next` value of a page")


@dataclass(frozen=True)
class RequestPage:
    records: list[UsageRecord]
    next: Cursor | None
    deployment_names: dict[uuid.UUID, str]


def _filtered(org: Organisation, filters: RequestFilters) -> QuerySet[UsageRecord]:
    records = UsageRecord.objects.filter(org=org)
    if filters.request_id:
        records = records.filter(request_id=filters.request_id)
    if filters.status == "ok":
        records = records.filter(status_code__lt=400)
    elif filters.status == "error":
        records = records.filter(status_code__gte=400)
    if filters.route:
        records = records.filter(route=filters.route)
    if filters.model:
        records = records.filter(model=filters.model)
    if filters.key_id is not None:
        records = records.filter(api_key_id=filters.key_id)
    if filters.deployment_id is not None:
        records = records.filter(deployment_id=filters.deployment_id)
    if filters.start is not None:
        records = records.filter(served_at__gte=datetime.combine(filters.start, time.min, UTC))
    if filters.end is not None:
        after = datetime.combine(filters.end + timedelta(days=1), time.min, UTC)
        records = records.filter(served_at__lt=after)
    return records


def deployment_names(org: Organisation, records: list[UsageRecord]) -> dict[uuid.UUID, str]:
    """The names of the org's deployments that served ``records`` (deleted ones are absent)."""
    ids = {r.deployment_id for r in records if r.deployment_id is not None}
    if not ids:
        return {}
    return dict(Deployment.objects.filter(org=org, id__in=ids).values_list("id", "name"))


def request_log(
    *,
    org: Organisation,
    filters: RequestFilters | None = None,
    before: Cursor | None = None,
    limit: int = DEFAULT_LIMIT,
) -> RequestPage:
    """One page of the org's requests, newest first, and the cursor of the next (older) page."""
    limit = max(1, min(limit, MAX_LIMIT))
    records = _filtered(org, filters or RequestFilters())
    if before is not None:
        records = records.filter(
            Q(served_at__lt=before.served_at) | Q(served_at=before.served_at, id__lt=before.pk)
        )
    page = list(records.select_related("api_key").order_by("-served_at", "-id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    cursor = Cursor(page[-1].served_at, page[-1].pk) if more else None
    return RequestPage(page, cursor, deployment_names(org, page))


def request_get(*, org: Organisation, request_id: str) -> UsageRecord | None:
    """One of the org's requests by its id (the ``x-request-id`` the gateway answered with)."""
    return (
        UsageRecord.objects.filter(org=org, request_id=request_id).select_related("api_key").first()
    )


EXPORT_LIMIT = 100_000


def request_export(*, org: Organisation, filters: RequestFilters) -> Iterator[UsageRecord]:
    """The newest ``EXPORT_LIMIT`` requests matching ``filters``, newest first, read in chunks
    (an export never holds them all in memory)."""
    records = _filtered(org, filters).select_related("api_key").order_by("-served_at", "-id")
    return records[:EXPORT_LIMIT].iterator(chunk_size=2000)
