"""Usage series are summed by the database: the same numbers, latency histograms included, as
adding the hourly rollups up one by one."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.ledger import UptimeEvent, uptime_record_batch, usage_record_batch
from billing.models import UsageRollup
from billing.rollups import COUNTED_FIELDS, usage_rollup
from billing.selectors import (
    DIMENSIONS,
    UsageFilters,
    usage_by_day,
    usage_models,
    usage_routes,
    usage_series,
    usage_series_largest,
    usage_series_page,
    usage_totals,
    usage_totals_since,
)
from console.services.keys import api_key_create
from tests.billing.factories import usage
from tests.factories import OrgFactory

pytestmark = pytest.mark.django_db

START = date(2026, 3, 10)


@pytest.fixture
def spread(org, owner):  # type: ignore[no-untyped-def]
    """120 requests over three UTC days, two models, two routes, two keys and none, with
    latencies across the histogram's buckets and some errors."""
    keys = [
        api_key_create(org=org, actor=owner, name=name, scopes=["inference"]).key.pk
        for name in ("prod", "staging")
    ] + [None]
    chance = random.Random(7)
    events = []
    for index in range(120):
        served = datetime(2026, 3, 10, tzinfo=UTC) + timedelta(minutes=37 * index)
        failed = index % 9 == 0
        events.append(
            usage(
                org.pk,
                served,
                model=("tiny-llama", "big-model")[index % 2],
                route=("chat", "fast")[index % 3 == 0],
                api_key_id=keys[index % 3],
                latency_ms=chance.choice([3, 40, 90, 260, 800, 2_500, 9_000, 200_000]),
                prompt_tokens=chance.randint(1, 3_000),
                completion_tokens=0 if failed else chance.randint(1, 900),
                status_code=503 if failed else 200,
                error_code="no_capacity" if failed else "",
            )
        )
    usage_record_batch(events)
    usage_rollup(now=datetime(2026, 3, 14, tzinfo=UTC))
    return keys


def _summed_one_by_one(org, dims):  # type: ignore[no-untyped-def]
    """The oracle: every rollup row read and added up in Python."""
    groups: dict[tuple, dict] = defaultdict(
        lambda: {"counts": defaultdict(int), "histogram": defaultdict(int)}
    )
    for rollup in UsageRollup.objects.filter(org=org):
        values = {
            "day": rollup.hour.astimezone(UTC).date(),
            "model": rollup.model,
            "route": rollup.route,
            "key": rollup.api_key_id,
        }
        group = groups[tuple(values[d] for d in dims)]
        for name in COUNTED_FIELDS:
            group["counts"][name] += getattr(rollup, name)
        for index, count in enumerate(rollup.latency_histogram):
            group["histogram"][index] += count
    return groups


def test_every_grouping_gives_the_sums_of_the_rollups(org, spread):
    filters = UsageFilters(start=START, end=START + timedelta(days=3))
    assert UsageRollup.objects.filter(org=org).count() > 40  # many rows to each group
    for size in range(len(DIMENSIONS) + 1):
        for dims in itertools.combinations(DIMENSIONS, size):
            rows = usage_series(org=org, filters=filters, group_by=dims)
            expected = _summed_one_by_one(org, dims)
            assert len(rows) == len(expected), dims
            for row in rows:
                values = {"day": row.day, "model": row.model, "route": row.route}
                values["key"] = row.key_id
                group = expected[tuple(values[d] for d in dims)]
                for name in COUNTED_FIELDS:
                    assert getattr(row, name) == group["counts"][name], (dims, name)
                histogram = [group["histogram"][i] for i in range(len(row.histogram))]
                assert row.histogram == histogram, dims
            assert sum(row.requests for row in rows) == 120
            assert sum(row.errors for row in rows) == 14


def test_filters_names_and_percentiles(org, spread):
    prod = spread[0]
    filters = UsageFilters(start=START, end=START + timedelta(days=3), key_id=prod)
    rows = usage_series(org=org, filters=filters, group_by=["key"])
    assert [(row.key_id, row.key_name, row.requests) for row in rows] == [(prod, "prod", 40)]
    # Latencies from 3 ms to 200 s: the percentiles come from the summed buckets.
    assert rows[0].latency_p50_ms is not None and rows[0].latency_p95_ms is not None
    assert 0 < rows[0].latency_p50_ms <= rows[0].latency_p95_ms
    one_day = UsageFilters(start=START, end=START, route="fast")
    rows = usage_series(org=org, filters=one_day, group_by=["day", "route"])
    assert [(row.day, row.route) for row in rows] == [(START, "fast")]
    # Nothing in range: no rows, and an empty total.
    empty = UsageFilters(start=date(2025, 1, 1), end=date(2025, 1, 2))
    assert usage_series(org=org, filters=empty, group_by=[]) == []
    assert usage_totals_since(org=org, since=datetime(2027, 1, 1, tzinfo=UTC)).requests == 0
    total = usage_totals_since(org=org, since=datetime(2026, 3, 11, tzinfo=UTC))
    first_day = usage_series(org=org, filters=UsageFilters(START, START), group_by=[])[0]
    assert total.requests == 120 - first_day.requests


def test_the_migration_restates_baselines_rolled_up_the_old_way(org):
    """Rollups written before the baseline counted unrouted requests at their cost are
    recomputed by billing's migration 0004."""
    import importlib

    from django.apps import apps as django_apps

    at = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
    usage_record_batch(
        [
            usage(org.pk, at, route="smart", baseline_cost_micros=9_000),
            usage(org.pk, at, route="plain"),
        ]
    )
    usage_rollup(now=at + timedelta(hours=1))
    UsageRollup.objects.update(baseline_cost_micros=0)  # as the old rollup left unrouted rows
    migration = importlib.import_module(
        "billing.migrations.0004_rollup_baseline_is_cost_when_not_routed_cheaper"
    )
    migration.restate(django_apps, None)
    rows = {r.route: r for r in UsageRollup.objects.filter(org=org)}
    assert rows["smart"].baseline_cost_micros == 9_000
    assert rows["plain"].baseline_cost_micros == rows["plain"].cost_micros > 0


def test_the_routes_and_models_used_are_listed_without_reading_every_rollup(org, spread):
    """The usage page's and the request log's filters offer every route and model the org has
    used, an uptime-only model and another org's names aside; the database steps from one name
    to the next instead of reading every rollup (a million of them in a busy organisation)."""
    other = OrgFactory()
    uptime_record_batch(
        [
            UptimeEvent(
                event_id="up-1",
                org_id=org.pk,
                deployment_id=uuid.uuid4(),
                replica_id=uuid.uuid4(),
                model="dedicated",
                gpus=1,
                started_at=datetime(2026, 3, 11, 10, tzinfo=UTC),
                ended_at=datetime(2026, 3, 11, 11, tzinfo=UTC),
            )
        ]
    )
    usage_record_batch(
        [usage(other.pk, datetime(2026, 3, 11, tzinfo=UTC), model="theirs", route="theirs")]
    )
    usage_rollup(now=datetime(2026, 3, 14, tzinfo=UTC))
    with CaptureQueriesContext(connection) as queries:
        assert usage_routes(org) == ["chat", "fast"]
        assert usage_models(org) == ["big-model", "dedicated", "tiny-llama"]
    assert len(queries) == 2
    assert not [q for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()]
    assert usage_routes(OrgFactory()) == [] and usage_models(OrgFactory()) == []


@pytest.mark.parametrize("group", ["model", "route", "key"])
@pytest.mark.parametrize("shown", [1, 2])
def test_the_largest_groups_on_their_own_and_the_others_summed_per_day(org, spread, group, shown):
    filters = UsageFilters(start=START, end=START + timedelta(days=3))
    every = usage_series(org=org, filters=filters, group_by=["day", group])

    def value(row):  # type: ignore[no-untyped-def]
        return row.key_id if group == "key" else getattr(row, group)

    spent: dict = defaultdict(lambda: [0, 0, 0])
    for row in every:
        total = spent[value(row)]
        total[0] += row.cost_micros
        total[1] += row.total_tokens
        total[2] += row.requests
    ranked = sorted(spent, key=lambda v: (-spent[v][0], -spent[v][1], -spent[v][2], str(v or "")))
    kept = set(ranked[:shown])
    largest = usage_series_largest(org=org, filters=filters, group=group, shown=shown)
    assert largest.other_groups == len(ranked) - shown
    own = [row for row in largest.rows if not row.other]
    assert {value(row) for row in own} == kept
    assert [(r.day, value(r), r.requests, r.histogram) for r in own] == [
        (r.day, value(r), r.requests, r.histogram) for r in every if value(r) in kept
    ]
    for day in {row.day for row in every}:
        rest = [r for r in every if r.day == day and value(r) not in kept]
        other = [r for r in largest.rows if r.other and r.day == day]
        assert len(other) == (1 if rest else 0)
        for name in COUNTED_FIELDS:
            assert sum(getattr(r, name) for r in other) == sum(getattr(r, name) for r in rest)
        if rest:
            assert other[0].histogram == [
                sum(h) for h in zip(*(r.histogram for r in rest), strict=True)
            ]
    assert usage_by_day(largest.rows) == usage_series(org=org, filters=filters, group_by=["day"])


def test_pages_of_a_series_add_up_to_the_whole_series(org, spread):
    filters = UsageFilters(start=START, end=START + timedelta(days=3))
    for size in range(len(DIMENSIONS) + 1):
        for dims in itertools.combinations(DIMENSIONS, size):
            whole = usage_series(org=org, filters=filters, group_by=dims)
            pages, offset = [], 0
            while True:
                page = usage_series_page(
                    org=org, filters=filters, group_by=dims, offset=offset, limit=7
                )
                assert page.count == len(whole), dims
                assert page.totals == usage_totals(whole), dims
                pages += page.rows
                offset += 7
                if offset >= page.count:
                    break
            assert pages == whole, dims
