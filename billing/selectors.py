"""Reads of the ledger: month-to-date spend, forecasts, spend limits and usage series.

The gateway builds its budget snapshot from ``spend_limits``, ``month_to_date_spend`` and
``key_month_to_date_spend``; the console and the REST API read ``usage_series``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, router
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    Exists,
    F,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Trunc, TruncDate
from django.utils import timezone

from billing.models import (
    BilledSpan,
    BillingAccount,
    Budget,
    MeterEvent,
    Plan,
    PlanKind,
    UptimeRecord,
    UsageRecord,
    UsageRollup,
)
from billing.models.payments import MeterEventStatus
from billing.money import format_dollars
from billing.rollups import (
    COUNTED_FIELDS,
    LATENCY_BUCKETS_MS,
    histogram_percentile,
    hour_floor,
)
from console.models import ApiKey, Organisation


def month_start(moment: datetime | None = None) -> datetime:
    moment = (moment or timezone.now()).astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime | None = None) -> datetime:
    start = month_start(moment)
    return (start + timedelta(days=32)).replace(day=1)


def _split_point(now: datetime) -> datetime:
    # Hours before this come from rollups; the (at most two) hours since come from raw records,
    # so that spend is current without scanning a month of records.
    return max(hour_floor(now) - timedelta(hours=1), month_start(now))


# Records are written after they are served (``created_at`` is the write), so the raw records of
# the last hours are found by the index on ``created_at``; the margin covers clocks that stepped
# back. The ledger's other index starts with the org, and across all orgs it would be read whole.
WRITTEN_AFTER_SERVED_MARGIN = timedelta(minutes=10)


def _spend(
    group: str,
    org_ids: Iterable[int] | None,
    now: datetime,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict:
    """Spend per ``group`` this month, or in the hours from ``start`` to ``end`` within it."""
    start = max(start or month_start(now), month_start(now))
    end = min(end or now, now)
    split = max(_split_point(now), start)
    rollups = UsageRollup.objects.filter(hour__gte=start, hour__lt=min(split, end))
    records = UsageRecord.objects.filter(
        served_at__gte=split,
        served_at__lt=end,
        created_at__gte=split - WRITTEN_AFTER_SERVED_MARGIN,
    )
    uptime = UptimeRecord.objects.filter(hour__gte=split, hour__lt=end)
    ids = list(org_ids) if org_ids is not None else None
    if ids is not None:
        rollups = rollups.filter(org_id__in=ids)
        records = records.filter(org_id__in=ids)
        uptime = uptime.filter(org_id__in=ids)
    totals: dict = defaultdict(int)
    sources = [rollups, records] if group == "api_key_id" else [rollups, records, uptime]
    for queryset in sources:
        if group == "api_key_id":
            queryset = queryset.filter(api_key_id__isnull=False)
        for key, cost in queryset.values_list(group).order_by().annotate(c=Sum("cost_micros")):
            totals[key] += int(cost or 0)
    if ids is not None and group == "org_id":
        for org_id in ids:
            totals.setdefault(org_id, 0)
    return dict(totals)


def month_to_date_spend(
    org_ids: Iterable[int] | None = None, *, now: datetime | None = None
) -> dict[int, int]:
    """Micro-dollars spent this calendar month (UTC) per org id, tokens and uptime together."""
    return _spend("org_id", org_ids, now or timezone.now())


def key_month_to_date_spend(
    org_ids: Iterable[int] | None = None, *, now: datetime | None = None
) -> dict[uuid.UUID, int]:
    """Micro-dollars spent this month per API key id."""
    return _spend("api_key_id", org_ids, now or timezone.now())


def billable_span(account: BillingAccount) -> tuple[datetime, datetime | None] | None:
    """The hours the org's subscription bills: from the first whole hour of it (the hour of the
    upgrade was on the old plan) to the end of the hour it ended in, or None while it runs.
    None without a subscription. ``billing.services.meters`` reports these hours to Stripe."""
    if account.billable_from is None:
        return None
    first = hour_floor(account.billable_from)
    if first < account.billable_from:
        first += timedelta(hours=1)
    if account.billable_until is None:
        return first, None
    return first, hour_floor(account.billable_until) + timedelta(hours=1)


def _subscription_spend(account: BillingAccount, now: datetime) -> int:
    """This month's spend in the hours of the account's latest subscription (``billable_span``),
    as ``billing.services.meters`` reports them to Stripe."""
    span = billable_span(account)
    if span is None:
        return 0
    first, until = span
    if max(first, month_start(now)) >= min(until or now, now):
        return 0
    spend = _spend("org_id", [account.org_id], now, start=first, end=until)
    return int(spend.get(account.org_id, 0))


def _billed(hour: str) -> Q:
    """Whether an org's hour (the outer query's ``hour``, on the hour) was billed by one of its
    subscriptions: the latest (the account's ``billable_span``) or an earlier one
    (``BilledSpan``). A row in hours of two spans matches once."""
    # An hour is in ``billable_span`` when billable_from <= hour <= billable_until: the first
    # whole hour after the start, to the end of the hour the subscription ended in.
    latest = BillingAccount.objects.filter(
        org_id=OuterRef("org_id"), billable_from__lte=OuterRef(hour)
    ).filter(Q(billable_until__isnull=True) | Q(billable_until__gte=OuterRef(hour)))
    earlier = BilledSpan.objects.filter(
        org_id=OuterRef("org_id"), start__lte=OuterRef(hour), end__gt=OuterRef(hour)
    )
    return Q(Exists(latest)) | Q(Exists(earlier))


def billed_spends(
    accounts: Iterable[BillingAccount], *, now: datetime | None = None
) -> dict[int, int]:
    """This month's spend per org id in the hours its subscriptions billed: what Stripe
    invoices (or invoiced, for a subscription that ended this month), and what the free credit
    does not cover. A fixed number of queries however many accounts: the gateway's snapshot
    (``spend_limit_details``) and the alerts read it for every org on Free."""
    now = now or timezone.now()
    start, split = month_start(now), _split_point(now)
    accounts = list(accounts)
    result = dict.fromkeys((account.org_id for account in accounts), 0)
    earlier = BilledSpan.objects.filter(org_id__in=list(result), end__gt=start, start__lt=now)
    ids = set(earlier.values_list("org_id", flat=True))
    ids.update(
        account.org_id
        for account in accounts
        if account.billable_from is not None
        and account.billable_from < now
        and (account.billable_until is None or account.billable_until >= start)
    )
    if not ids:
        return result
    rollups = UsageRollup.objects.filter(hour__gte=start, hour__lt=split)
    records = UsageRecord.objects.filter(
        served_at__gte=split,
        served_at__lt=now,
        created_at__gte=split - WRITTEN_AFTER_SERVED_MARGIN,
    ).alias(hour=Trunc("served_at", "hour", tzinfo=UTC))
    uptime = UptimeRecord.objects.filter(hour__gte=split, hour__lt=now)
    for queryset in (rollups, records, uptime):
        billed = queryset.filter(_billed("hour"), org_id__in=sorted(ids))
        for org_id, cost in billed.values_list("org_id").order_by().annotate(c=Sum("cost_micros")):
            result[org_id] += int(cost or 0)
    return result


def billed_spend(account: BillingAccount, *, now: datetime | None = None) -> int:
    """This month's spend in the hours the org's subscriptions billed (``billed_spends``)."""
    return billed_spends([account], now=now)[account.org_id]


@dataclass(frozen=True)
class InvoiceEstimate:
    """This month's spend that an invoice will bill, and what the free credit covers of it."""

    usage_micros: int
    credit_micros: int = 0

    @property
    def due_micros(self) -> int:
        return max(self.usage_micros - self.credit_micros, 0)


def invoice_estimate(
    *,
    account: BillingAccount,
    mtd: int | None = None,
    now: datetime | None = None,
) -> InvoiceEstimate:
    """The invoice for this month so far.

    With Stripe, the usage of the hours reported to it for the current subscription (the same as
    ``billing.services.meters``: not the hours on the Free plan), and nothing once the
    subscription ended (cancelling invoiced them). In local-ledger mode there is no invoice; the
    estimate is the month-to-date less the free credit on the Free plan. A caller that already
    has ``month_to_date_spend`` for ``now`` passes it as ``mtd``.
    """
    now = now or timezone.now()
    if settings.STRIPE_API_KEY:
        if account.billable_from is None or account.billable_until is not None:
            return InvoiceEstimate(0)
        return InvoiceEstimate(_subscription_spend(account, now))
    if mtd is None:
        mtd = month_to_date_spend([account.org_id], now=now)[account.org_id]
    return InvoiceEstimate(mtd, free_credit_used(account, mtd=mtd, now=now))


def free_credit_used(account: BillingAccount, *, mtd: int, now: datetime | None = None) -> int:
    """How much of the Free plan's credit this month's spend (``mtd``) used: the spend on Free,
    so not the hours a subscription billed before a return to Free. 0 on other plans."""
    if account.plan.kind != PlanKind.FREE:
        return 0
    return min(max(mtd - billed_spend(account, now=now), 0), account.plan.monthly_credit_micros)


PACE_WINDOW = timedelta(days=7)


def forecast_micros(
    *, org: Organisation, now: datetime | None = None, mtd: int | None = None
) -> int:
    """Month-to-date spend plus the last seven days' pace for the rest of the month.

    The pace is the spend of the seven days to ``now`` (from the start of an hour, so whole
    rollup hours and the records since, across the start of the month too) over that time.
    A caller that already has ``month_to_date_spend`` for ``now`` passes it as ``mtd``.
    """
    now = now or timezone.now()
    if mtd is None:
        mtd = month_to_date_spend([org.pk], now=now)[org.pk]
    window_start, start = hour_floor(now) - PACE_WINDOW, month_start(now)
    # The window's spend is the month-to-date with the hours between the window's start and the
    # month's start added (last month's) or taken away (this month's before the window): hours
    # long past, so their rollups are complete.
    earlier, later = sorted([window_start, start])
    between = int(
        UsageRollup.objects.filter(org=org, hour__gte=earlier, hour__lt=later)
        .aggregate(c=Sum("cost_micros"))
        .get("c")
        or 0
    )
    window_spend = mtd + between if window_start < start else mtd - between
    window = now - window_start
    remaining = next_month_start(now) - now
    return mtd + window_spend * (remaining // timedelta(microseconds=1)) // (
        window // timedelta(microseconds=1)
    )


def default_plan() -> Plan:
    plan = Plan.objects.filter(is_default=True).first() or Plan.objects.order_by("pk").first()
    if plan is None:
        raise Plan.DoesNotExist("No plan exists; the billing migrations create the defaults.")
    return plan


def account_peek(org: Organisation) -> BillingAccount:
    """The org's billing account, or an unsaved one on the default plan (reads create nothing)."""
    account = BillingAccount.objects.select_related("plan").filter(org=org).first()
    return account or BillingAccount(org=org, plan=default_plan())


@dataclass(frozen=True)
class SpendLimit:
    """The month's hard cap for an org and why; ``cap_micros`` None means no cap."""

    cap_micros: int | None
    reason: str = ""
    message: str = ""


def _limit_for(
    account: BillingAccount | None, plan: Plan, budget: Budget | None, billed: int = 0
) -> SpendLimit:
    limits: list[SpendLimit] = []
    if plan.kind == PlanKind.FREE:
        # The cap is on the month's spend, and the credit covers what no subscription billed.
        limits.append(
            SpendLimit(
                plan.monthly_credit_micros + billed,
                "free_credit",
                f"The {plan.name} plan's monthly credit of "
                f"{format_dollars(plan.monthly_credit_micros)} is used up. Add a payment method "
                "in Billing to switch to Pay as you go.",
            )
        )
    elif settings.STRIPE_API_KEY and plan.requires_payment_method:
        if account is None or not (account.has_payment_method and account.subscription_active):
            limits.append(
                SpendLimit(
                    0,
                    "payment_method_required",
                    f"The {plan.name} plan needs a payment method and an active subscription: "
                    "add a payment method in Billing.",
                )
            )
    if budget is not None and budget.hard_limit:
        limits.append(
            SpendLimit(
                budget.amount_micros,
                "org_budget",
                f"The organisation's monthly budget of {format_dollars(budget.amount_micros)} is "
                "reached. An owner or admin can raise it in Billing.",
            )
        )
    if not limits:
        return SpendLimit(None)
    return min(limits, key=lambda limit: limit.cap_micros or 0)


def spend_limit_details(org_ids: Iterable[int] | None = None) -> dict[int, SpendLimit]:
    """Every org's hard cap for the current month, with the reason and a message for a 402."""
    orgs = Organisation.objects.all()
    if org_ids is not None:
        orgs = orgs.filter(pk__in=list(org_ids))
    ids = list(orgs.values_list("pk", flat=True))
    accounts = {
        a.org_id: a for a in BillingAccount.objects.select_related("plan").filter(org_id__in=ids)
    }
    budgets = {b.org_id: b for b in Budget.objects.filter(org_id__in=ids)}
    fallback = default_plan()
    billed = billed_spends(a for a in accounts.values() if a.plan.kind == PlanKind.FREE)
    result = {}
    for org_id in ids:
        account = accounts.get(org_id)
        plan = account.plan if account else fallback
        result[org_id] = _limit_for(account, plan, budgets.get(org_id), billed.get(org_id, 0))
    return result


def spend_limits(org_ids: Iterable[int] | None = None) -> dict[int, int | None]:
    """The hard cap in micro-dollars for the current month per org id, or None for no cap."""
    return {org_id: limit.cap_micros for org_id, limit in spend_limit_details(org_ids).items()}


def key_spend_limits(org_ids: Iterable[int] | None = None) -> dict[uuid.UUID, int]:
    """Keys with a monthly budget (``ApiKey.monthly_budget_micros``): key id -> cap."""
    keys = ApiKey.objects.filter(monthly_budget_micros__isnull=False, revoked_at__isnull=True)
    if org_ids is not None:
        keys = keys.filter(org_id__in=list(org_ids))
    return {k: int(v or 0) for k, v in keys.values_list("id", "monthly_budget_micros")}


# Usage series for the console and the REST API ------------------------------------------------

DIMENSIONS = ("day", "model", "route", "key")


@dataclass
class UsageRow:
    day: date | None = None
    model: str | None = None
    route: str | None = None
    key_id: uuid.UUID | None = None
    key_name: str | None = None
    key_prefix: str | None = None
    # The groups beyond the largest, summed together (``usage_series_largest``).
    other: bool = False
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    resource_seconds: int = 0
    cost_micros: int = 0
    baseline_cost_micros: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def latency_p50_ms(self) -> int | None:
        return histogram_percentile(self.histogram, 0.5)

    @property
    def latency_p95_ms(self) -> int | None:
        return histogram_percentile(self.histogram, 0.95)

    def add(self, counts: UsageRow, histogram: list[int] | None) -> None:
        """Add another row's counts, and its latency histogram, to this row."""
        for name in COUNTED_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(counts, name))
        for index, count in enumerate(histogram or []):
            if index < len(self.histogram):
                self.histogram[index] += count


@dataclass(frozen=True)
class UsageFilters:
    start: date
    end: date  # inclusive
    key_id: uuid.UUID | None = None
    route: str = ""
    model: str = ""


# A usage row's dimensions, and the rollup column each one is read from.
_DIMENSION_COLUMNS = {"day": "day", "model": "model", "route": "route", "key": "api_key_id"}


def _sums() -> dict[str, Any]:
    """The counts, and the latency histograms bucket by bucket (a JSON array's element is read
    by its index, which PostgreSQL and SQLite both do)."""
    sums: dict[str, Any] = {name: Coalesce(Sum(name), 0) for name in COUNTED_FIELDS}
    for index in range(len(LATENCY_BUCKETS_MS) + 1):
        bucket = Cast(KeyTextTransform(str(index), "latency_histogram"), BigIntegerField())
        sums[f"bucket_{index}"] = Coalesce(Sum(bucket), 0)
    return sums


def _grouped(
    rollups: QuerySet[UsageRollup], dims: list[str], *, folded: Q | None = None
) -> QuerySet[Any]:
    """Rollups summed per group of ``dims`` (at least one) by the database, as dictionaries.
    With ``folded``, the rollups it matches are summed together per group of the other
    dimensions, with ``other`` set and no value of the last dimension."""
    if "day" in dims:
        rollups = rollups.annotate(day=TruncDate("hour", tzinfo=UTC))
    columns = [_DIMENSION_COLUMNS[d] for d in dims]
    if folded is not None:
        last = columns.pop()
        rollups = rollups.annotate(
            shown=Case(When(folded, then=Value(None)), default=F(last)),
            other=Case(When(folded, then=Value(True)), default=Value(False)),
        )
        columns += ["shown", "other"]
    return rollups.order_by().values(*columns).annotate(**_sums())


def _row_of(group: dict[str, Any], *, folded_column: str | None = None) -> UsageRow:
    if folded_column is not None:
        group[folded_column] = group.pop("shown")
    row = UsageRow(
        day=group.get("day"),
        model=group.get("model"),
        route=group.get("route"),
        key_id=group.get("api_key_id"),
        other=bool(group.get("other")),
    )
    for name in COUNTED_FIELDS:
        setattr(row, name, group[name])
    row.histogram = [group[f"bucket_{index}"] for index in range(len(row.histogram))]
    return row


def _rollup_sums(
    rollups: QuerySet[UsageRollup], dims: list[str], *, folded: Q | None = None
) -> list[UsageRow]:
    """Rollups summed per group of ``dims`` by the database (``_grouped``), so a month of an
    organisation's hours is one query, not a row each."""
    if not dims:
        total = rollups.aggregate(**_sums(), rows=Count("pk"))
        return [_row_of(total)] if total["rows"] else []
    last = _DIMENSION_COLUMNS[dims[-1]] if folded is not None else None
    return [_row_of(g, folded_column=last) for g in _grouped(rollups, dims, folded=folded)]


def usage_series(
    *, org: Organisation, filters: UsageFilters, group_by: Iterable[str]
) -> list[UsageRow]:
    """Usage from the hourly rollups, summed over the given dimensions (UTC days)."""
    dims = [d for d in DIMENSIONS if d in set(group_by)]
    rows = _rollup_sums(_rollups_in(org, filters), dims)
    return _named_and_sorted(org, rows, dims)


def _rollups_in(org: Organisation, filters: UsageFilters) -> QuerySet[UsageRollup]:
    start = datetime.combine(filters.start, time.min, tzinfo=UTC)
    end = datetime.combine(filters.end + timedelta(days=1), time.min, tzinfo=UTC)
    rollups = UsageRollup.objects.filter(org=org, hour__gte=start, hour__lt=end)
    if filters.key_id:
        rollups = rollups.filter(api_key_id=filters.key_id)
    if filters.route:
        rollups = rollups.filter(route=filters.route)
    if filters.model:
        rollups = rollups.filter(model=filters.model)
    return rollups


def _with_key_names(org: Organisation, rows: list[UsageRow], dims: list[str]) -> None:
    if "key" not in dims:
        return
    keys = {
        key: (name, prefix)
        for key, name, prefix in org.api_keys.values_list("id", "name", "prefix")
    }
    for row in rows:
        row.key_name, row.key_prefix = keys.get(row.key_id, ("", "")) if row.key_id else ("", "")


def _named_and_sorted(org: Organisation, rows: list[UsageRow], dims: list[str]) -> list[UsageRow]:
    """Keys' names and prefixes filled in; rows in the order of their dimensions' values, the
    other groups (``other``) after the named ones."""
    _with_key_names(org, rows, dims)
    return sorted(
        rows,
        key=lambda row: (
            *(str(getattr(row, "key_id" if d == "key" else d) or "") for d in dims[:-1]),
            row.other,
            *(str(getattr(row, "key_id" if d == "key" else d) or "") for d in dims[-1:]),
        ),
    )


def _in_order(rollups: QuerySet[UsageRollup], dims: list[str]) -> QuerySet[Any]:
    """``_grouped`` in the order of the dimensions, usage without a key before the keys'."""
    return _grouped(rollups, dims).order_by(
        *[F(_DIMENSION_COLUMNS[d]).asc(nulls_first=True) for d in dims]
    )


def usage_series_iter(
    *, org: Organisation, filters: UsageFilters, group_by: Iterable[str]
) -> Iterator[UsageRow]:
    """``usage_series`` row by row, in the order of the dimensions, read from the database in
    chunks: a download of a year of thousands of keys by day never holds its rows in memory."""
    dims = [d for d in DIMENSIONS if d in set(group_by)]
    rollups = _rollups_in(org, filters)
    if not dims:
        yield from _rollup_sums(rollups, [])
        return
    keys: dict[uuid.UUID, tuple[str, str]] = {}
    if "key" in dims:
        keys = {k: (n, p) for k, n, p in org.api_keys.values_list("id", "name", "prefix")}
    for group in _in_order(rollups, dims).iterator(chunk_size=2000):
        row = _row_of(group)
        if "key" in dims:
            row.key_name, row.key_prefix = (
                keys.get(row.key_id, ("", "")) if row.key_id else ("", "")
            )
        yield row


@dataclass(frozen=True)
class UsagePage:
    rows: list[UsageRow]
    count: int  # the rows of every page
    totals: UsageRow  # of every page


def usage_series_page(
    *, org: Organisation, filters: UsageFilters, group_by: Iterable[str], offset: int, limit: int
) -> UsagePage:
    """One page of ``usage_series``, ordered by the database on the dimensions (usage without
    a key before the keys'), with the number of rows and the totals of every page. The rows of a
    page are the only ones read whole: a year of an organisation's thousands of keys by day is
    hundreds of thousands of rows. When they all fit on the first page, one query reads them."""
    dims = [d for d in DIMENSIONS if d in set(group_by)]
    rollups = _rollups_in(org, filters)
    if not dims:
        rows = _rollup_sums(rollups, [])
        return UsagePage(rows[offset : offset + limit], len(rows), usage_totals(rows))
    page = [_row_of(group) for group in _in_order(rollups, dims)[offset : offset + limit + 1]]
    if offset == 0 and len(page) <= limit:
        count, totals = len(page), usage_totals(page)
    else:
        if "day" in dims:
            rollups = rollups.annotate(day=TruncDate("hour", tzinfo=UTC))
        columns = [_DIMENSION_COLUMNS[d] for d in dims]
        count = rollups.order_by().values(*columns).distinct().count()
        whole = _rollup_sums(_rollups_in(org, filters), [])
        totals = whole[0] if whole else UsageRow()
    page = page[:limit]
    _with_key_names(org, page, dims)
    return UsagePage(page, count, totals)


# Groups the usage page charts and tables one by one; the others are summed together.
USAGE_GROUPS_SHOWN = 10


@dataclass(frozen=True)
class LargestUsage:
    """Usage by day and group, the largest groups each on their own (``rows``, in which those
    of the other groups, summed per day, have ``other`` set)."""

    rows: list[UsageRow]
    other_groups: int  # how many groups the rows with ``other`` set sum


def usage_series_largest(
    *, org: Organisation, filters: UsageFilters, group: str, shown: int = USAGE_GROUPS_SHOWN
) -> LargestUsage:
    """Usage by UTC day and ``group`` (model, route or key) for the usage page: the ``shown``
    groups that cost the most over the range (then the most tokens, then requests) each on their
    own, and the others summed together per day. Whatever the number of groups (an organisation
    with thousands of keys), a day has at most ``shown`` + 1 rows."""
    rollups = _rollups_in(org, filters)
    column = _DIMENSION_COLUMNS[group]
    totals = list(
        rollups.order_by()
        .values_list(column)
        .annotate(
            cost=Sum("cost_micros"),
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            n=Sum("requests"),
        )
    )
    totals.sort(key=lambda t: (-(t[1] or 0), -(t[2] or 0), -(t[3] or 0), str(t[0] or "")))
    folded = [value for value, *_ in totals[shown:]]
    if not folded:
        return LargestUsage(usage_series(org=org, filters=filters, group_by=["day", group]), 0)
    kept = [value for value, *_ in totals[:shown]]
    # What is not kept is folded: a list of the few kept values, not of the many others.
    keep = Q(**{f"{column}__in": [v for v in kept if v is not None]})
    if None in kept:
        keep |= Q(**{f"{column}__isnull": True})
    rows = _rollup_sums(rollups, ["day", group], folded=~keep)
    return LargestUsage(_named_and_sorted(org, rows, ["day", group]), len(folded))


def usage_by_day(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """Rows of usage by day and something else, added up per day (latency histograms too)."""
    days: dict[date | None, UsageRow] = {}
    for row in rows:
        day = days.setdefault(row.day, UsageRow(day=row.day))
        day.add(row, row.histogram)
    return [days[day] for day in sorted(days, key=lambda d: d or date.min)]


def _rollup_values(org: Organisation, name: str) -> list[str]:
    """Every value of one of the rollups' columns in ``org``'s rollups, sorted. The database
    steps from one value to the next through the index on (org, column), so an organisation with
    a million rollups costs a step a value, not a read of every rollup."""
    connection = connections[router.db_for_read(UsageRollup)]
    quote = connection.ops.quote_name
    fields = {field.name: field for field in UsageRollup._meta.concrete_fields}
    table = quote(UsageRollup._meta.db_table)
    column, org_column = quote(fields[name].column), quote(fields["org"].column)
    sql = f"""
        WITH RECURSIVE found(value) AS (
            SELECT MIN({column}) FROM {table} WHERE {org_column} = %s
            UNION ALL
            SELECT (
                SELECT MIN({column}) FROM {table} WHERE {org_column} = %s AND {column} > found.value
            )
            FROM found WHERE found.value IS NOT NULL
        )
        SELECT value FROM found WHERE value IS NOT NULL
    """  # noqa: S608 (names from the model, the org's id as a parameter)
    with connection.cursor() as cursor:
        cursor.execute(sql, [org.pk, org.pk])
        return sorted(row[0] for row in cursor.fetchall())


def usage_routes(org: Organisation) -> list[str]:
    """The route names (models asked for) in ``org``'s usage, ever, sorted."""
    return [name for name in _rollup_values(org, "route") if name]


def usage_models(org: Organisation) -> list[str]:
    """The served models in ``org``'s usage (tokens and uptime), ever, sorted."""
    return _rollup_values(org, "model")


def usage_totals_since(*, org: Organisation, since: datetime) -> UsageRow:
    """The org's usage from the hour ``since`` falls in up to now, the current hour included.

    The current hour's rollup is rewritten by every incremental run, so the total trails the
    gateway by at most one run (``billing-usage-rollup`` in the beat schedule).
    """
    rows = _rollup_sums(UsageRollup.objects.filter(org=org, hour__gte=hour_floor(since)), [])
    return rows[0] if rows else UsageRow()


def usage_totals(rows: Iterable[UsageRow]) -> UsageRow:
    total = UsageRow()
    for row in rows:
        total.add(row, row.histogram)
    return total


@dataclass(frozen=True)
class PlatformUsage:
    """Usage and revenue of every organisation, for staff."""

    requests_24h: int
    errors_24h: int
    prompt_tokens_24h: int
    completion_tokens_24h: int
    cost_24h_micros: int
    month_micros: int
    top_orgs: list[tuple[Organisation, int]]  # this month's largest, micro-dollars
    meter_events_pending: int
    meter_events_failed: int
    oldest_pending: datetime | None  # the usage hour of the oldest event not sent yet


def platform_usage(*, now: datetime | None = None, top: int = 5) -> PlatformUsage:
    """The last 24 hours from the hourly rollups (so up to one rollup run behind), this month's
    spend as the budgets count it, and the Stripe meter events waiting or failed."""
    now = now or timezone.now()
    day = UsageRollup.objects.filter(hour__gte=hour_floor(now - timedelta(hours=24))).aggregate(
        requests=Sum("requests"),
        errors=Sum("errors"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost_micros"),
    )
    spend = month_to_date_spend(now=now)
    largest = sorted(spend.items(), key=lambda item: -item[1])[:top]
    orgs = Organisation.objects.in_bulk([org_id for org_id, _ in largest])
    events = MeterEvent.objects.values_list("status").order_by().annotate(n=Count("id"))
    counts = {status: n for status, n in events}
    oldest = (
        MeterEvent.objects.filter(status=MeterEventStatus.PENDING)
        .order_by("hour")
        .values_list("hour", flat=True)
        .first()
    )
    return PlatformUsage(
        requests_24h=day["requests"] or 0,
        errors_24h=day["errors"] or 0,
        prompt_tokens_24h=day["prompt"] or 0,
        completion_tokens_24h=day["completion"] or 0,
        cost_24h_micros=day["cost"] or 0,
        month_micros=sum(spend.values()),
        top_orgs=[
            (orgs[org_id], micros) for org_id, micros in largest if org_id in orgs and micros
        ],
        meter_events_pending=counts.get(MeterEventStatus.PENDING, 0),
        meter_events_failed=counts.get(MeterEventStatus.FAILED, 0),
        oldest_pending=oldest,
    )
