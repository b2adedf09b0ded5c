"""The usage records' admin page reads a table with a row per request: it never counts, sorts or
lists the distinct values of the whole table, and its search matches exactly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.ledger import usage_record_batch
from billing.rollups import usage_rollup
from console.admin import CappedCountPaginator
from tests.billing.factories import usage
from tests.factories import OrgFactory, UserFactory

pytestmark = pytest.mark.django_db
URL = reverse("admin:billing_usagerecord_changelist")


@pytest.fixture
def staff_client(client):  # type: ignore[no-untyped-def]
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def records(org):  # type: ignore[no-untyped-def]
    other = OrgFactory(name="Other", slug="other")
    now = timezone.now()
    usage_record_batch(
        [usage(org.pk, now - timedelta(minutes=i), request_id=f"req-acme-{i}") for i in range(6)]
        + [
            usage(
                other.pk,
                now,
                request_id="req-other-1",
                model="big-model",
                status_code=503,
                error_code="no_capacity",
            ),
            usage(other.pk, now - timedelta(days=40), request_id="req-other-old", status_code=429),
        ]
    )
    return other


def _shown(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [row.request_id for row in page.context["cl"].result_list]


def test_the_list_reads_no_more_than_a_capped_count_and_a_page(staff_client, records, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    with CaptureQueriesContext(connection) as queries:
        page = staff_client.get(URL)
    assert page.status_code == 200
    sql = [
        q["sql"].upper()
        for q in queries.captured_queries
        if "BILLING_USAGERECORD" in q["sql"].upper()
    ]
    # One count, limited to cap + 1 rows; no DISTINCT (value filters, date hierarchy), no MIN/MAX.
    counts = [q for q in sql if "COUNT(" in q]
    assert len(counts) == 1 and "LIMIT 6" in counts[0]
    assert not [q for q in sql if "DISTINCT" in q or "MIN(" in q]
    assert "More than 5 usage records" in page.content.decode()
    # Newest first by primary key: the records written last come first.
    assert _shown(page)[:2] == ["req-other-old", "req-other-1"]


def test_search_matches_exactly_by_request_id_org_or_model(staff_client, records, org):
    assert _shown(staff_client.get(URL, {"q": "req-acme-3"})) == ["req-acme-3"]
    # Not a substring: a prefix of ids finds nothing.
    assert _shown(staff_client.get(URL, {"q": "req-acme"})) == []
    assert set(_shown(staff_client.get(URL, {"q": "other"}))) == {"req-other-1", "req-other-old"}
    assert len(_shown(staff_client.get(URL, {"q": org.slug}))) == 6
    assert _shown(staff_client.get(URL, {"q": "big-model"})) == ["req-other-1"]
    assert _shown(staff_client.get(URL, {"q": "no_capacity"})) == ["req-other-1"]
    page = staff_client.get(URL, {"q": " req-acme-1 "})
    assert _shown(page) == ["req-acme-1"]
    assert "An exact request id" in page.content.decode()


def test_outcome_and_date_filters(staff_client, records):
    assert _shown(staff_client.get(URL, {"outcome": "5xx"})) == ["req-other-1"]
    assert _shown(staff_client.get(URL, {"outcome": "4xx"})) == ["req-other-old"]
    assert len(_shown(staff_client.get(URL, {"outcome": "ok"}))) == 6
    since = (timezone.now() - timedelta(days=7)).date().isoformat()
    recent = _shown(staff_client.get(URL, {"served_at__gte": since}))
    assert "req-other-old" not in recent and len(recent) == 7


ROLLUPS = reverse("admin:billing_usagerollup_changelist")


def test_the_rollups_list_reads_a_capped_count_and_a_page_newest_hour_first(
    staff_client, records, org, monkeypatch
):
    """Rollups are per org, hour, model, route and key: nearly a row per request for an
    organisation with thousands of keys. Their list is kept like the records' list."""
    usage_rollup()
    monkeypatch.setattr(CappedCountPaginator, "cap", 2)
    with CaptureQueriesContext(connection) as queries:
        page = staff_client.get(ROLLUPS)
    assert page.status_code == 200
    sql = [
        q["sql"].upper()
        for q in queries.captured_queries
        if "BILLING_USAGEROLLUP" in q["sql"].upper()
    ]
    counts = [q for q in sql if "COUNT(" in q]
    assert len(counts) == 1 and "LIMIT 3" in counts[0]
    assert not [q for q in sql if "DISTINCT" in q or "MIN(" in q]
    assert "More than 2 usage rollups" in page.content.decode()
    hours = [row.hour for row in page.context["cl"].result_list]
    assert hours == sorted(hours, reverse=True)
    # Exact search: an organisation's slug, a model or a route; never a substring.
    assert {
        r.org_id for r in staff_client.get(ROLLUPS, {"q": "other"}).context["cl"].result_list
    } == {records.pk}
    assert [
        r.model for r in staff_client.get(ROLLUPS, {"q": "big-model"}).context["cl"].result_list
    ] == ["big-model"]
    assert list(staff_client.get(ROLLUPS, {"q": "big-mod"}).context["cl"].result_list) == []
