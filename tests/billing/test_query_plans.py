"""Queries over the ledger's big tables are answered through indexes, not by reading the table.

A test database holds a handful of rows, where a scan of the table is the cheapest plan; with
PostgreSQL's other access paths turned off, the plan shows which index (if any) can answer the
query, and how. A tenant with a million requests is where it matters (docs/benchmarks.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.ledger import usage_record_batch
from billing.rollups import usage_rollup
from billing.selectors import (
    key_month_to_date_spend,
    month_to_date_spend,
    usage_models,
    usage_routes,
)
from console.services.keys import api_key_create
from inference.selectors.requests import RequestFilters, request_log
from inference.selectors.router import route_requests, route_savings_daily, route_window
from tests.billing.factories import usage

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),  # VACUUM runs outside a transaction
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="needs PostgreSQL's EXPLAIN and planner switches"
    ),
]


def _plans(read: Callable[[], object], table: str) -> list[str]:
    """The plan of each query ``read`` sends to ``table``, with the table vacuumed (as
    autovacuum keeps a big table) and scans of the whole table ruled out where anything else
    can answer."""
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
    with CaptureQueriesContext(connection) as queries:
        read()
    sql = [q["sql"] for q in queries.captured_queries if f'FROM "{table}"' in q["sql"]]
    assert sql
    plans = []
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
        try:
            for query in sql:
                cursor.execute("EXPLAIN " + query)
                plans.append("\n".join(row[0] for row in cursor.fetchall()))
        finally:
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET enable_bitmapscan")
    return plans


@pytest.fixture
def ledger(org, owner):  # type: ignore[no-untyped-def]
    key = api_key_create(org=org, actor=owner, name="app", scopes=["inference"]).key
    now = timezone.now()
    usage_record_batch(
        [
            usage(org.pk, now - timedelta(hours=h), api_key_id=key.pk, route=route)
            for h in range(1, 6)
            for route in ("chat", "embed")
        ]
    )
    usage_rollup()
    return key


def test_the_months_spend_is_read_from_an_index_alone(org, ledger):
    """The spend per org and per key (console, REST API, the gateways' budget snapshot) sums
    the month's rollups: their index holds the key and the cost, so no row is visited."""
    for read in (
        lambda: month_to_date_spend([org.pk]),
        lambda: month_to_date_spend(),
        lambda: key_month_to_date_spend([org.pk]),
    ):
        for plan in _plans(read, "billing_usagerollup"):
            assert "Index Only Scan" in plan, plan
            assert "Seq Scan" not in plan, plan


def test_a_routes_requests_are_found_through_an_index_on_the_route(org, ledger):
    """The request log filtered by the model asked for, and a route's page, read that route's
    requests from an index on it: not every request of the organisation, newest first, until
    enough of them match (seconds for a route with little traffic in a busy organisation)."""
    route = "chat"
    for read in (
        lambda: request_log(org=org, filters=RequestFilters(route=route)),
        lambda: list(route_requests(org=org, route_name=route)),
        lambda: route_savings_daily(org=org, route_name=route),
        lambda: route_window(org=org, route_name=route, since=timezone.now(), limit=10),
    ):
        for plan in _plans(read, "billing_usagerecord"):
            conditions = [line for line in plan.splitlines() if "Index Cond" in line]
            assert any("route" in line for line in conditions), plan


def test_a_models_and_a_deployments_requests_are_found_through_an_index_on_them(org, ledger):
    """The request log filtered by the served model or by a deployment (linked from its page)
    reads those requests from an index, not every request of the organisation."""
    deployment = uuid.uuid4()
    for read, column in (
        (lambda: request_log(org=org, filters=RequestFilters(model="tiny-llama")), "model"),
        (
            lambda: request_log(org=org, filters=RequestFilters(deployment_id=deployment)),
            "deployment_id",
        ),
    ):
        for plan in _plans(read, "billing_usagerecord"):
            conditions = [line for line in plan.splitlines() if "Index Cond" in line]
            assert any(column in line for line in conditions), plan


def test_the_routes_and_models_used_are_found_by_stepping_through_an_index(org, ledger):
    """Each step to the next name is an index lookup on (org, name)."""
    for read, column in (
        (lambda: usage_routes(org), "route"),
        (lambda: usage_models(org), "model"),
    ):
        for plan in _plans(read, "billing_usagerollup"):
            conditions = [line for line in plan.splitlines() if "Index Cond" in line]
            assert any(column in line for line in conditions), plan
            assert "Seq Scan" not in plan, plan


def test_the_latest_rollups_of_every_org_are_read_through_an_index_on_the_hour(org, ledger):
    """The admin's rollups list, newest hour first, reads the latest hours from an index
    instead of sorting every rollup."""
    from billing.models import UsageRollup

    def newest_page() -> object:
        return list(UsageRollup.objects.select_related("org").order_by("-hour")[:100])

    for plan in _plans(newest_page, "billing_usagerollup"):
        assert "Sort" not in plan, plan
