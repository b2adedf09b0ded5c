"""Counts of requests refused before reaching a model: writing them, reading them in the console
and the REST API, and removing old ones."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from console.permissions import Role
from console.services.keys import api_key_create, api_key_revoke
from inference.models import RefusalCount
from inference.selectors.refusals import refusal_summary
from inference.services.refusals import refusals_add, refusals_prune
from tests.factories import MembershipFactory, OrgFactory

NOW = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)
MINUTE = int(NOW.timestamp()) // 60 * 60


@pytest.fixture
def key(org, owner):  # type: ignore[no-untyped-def]
    return api_key_create(org=org, actor=owner, name="backend", scopes=["inference"]).key


@pytest.fixture
def other_org_key():  # type: ignore[no-untyped-def]
    other = OrgFactory(name="Other", slug="other")
    other_owner = MembershipFactory(org=other, role=Role.OWNER).user
    return api_key_create(org=other, actor=other_owner, name="theirs", scopes=["inference"]).key


def _rows(org) -> list[tuple[str, int, str, int]]:  # type: ignore[no-untyped-def]
    return sorted(
        RefusalCount.objects.filter(org=org).values_list(
            "api_key__name", "status_code", "error_code", "count"
        )
    )


def test_counts_add_to_what_is_stored_per_key_reason_and_minute(org, key):
    assert refusals_add({(org.id, key.id, MINUTE, 429, "rate_limit_exceeded"): 5}) == 1
    # A second gateway process counted the same key and minute: the counts add up.
    refusals_add(
        {
            (org.id, key.id, MINUTE, 429, "rate_limit_exceeded"): 7,
            (org.id, key.id, MINUTE, 400, "invalid_body"): 1,
            (org.id, key.id, MINUTE + 60, 429, "rate_limit_exceeded"): 2,
        }
    )
    assert RefusalCount.objects.count() == 3
    first = RefusalCount.objects.get(minute=datetime.fromtimestamp(MINUTE, UTC), status_code=429)
    assert first.count == 12
    assert first.minute == datetime.fromtimestamp(MINUTE, UTC)


def test_counts_of_a_key_deleted_meanwhile_are_dropped_and_the_rest_kept(org, key, owner):
    gone = api_key_create(org=org, actor=owner, name="gone", scopes=["inference"]).key
    gone_id = gone.id
    gone.delete()
    written = refusals_add(
        {
            (org.id, gone_id, MINUTE, 401, "revoked_api_key"): 3,
            (org.id, key.id, MINUTE, 401, "revoked_api_key"): 4,
        }
    )
    assert written == 1
    assert _rows(org) == [("backend", 401, "revoked_api_key", 4)]


def test_the_summary_groups_by_key_and_reason_over_a_range_most_first(org, key, owner):
    second = api_key_create(org=org, actor=owner, name="batch", scopes=["inference"]).key
    day = NOW.replace(hour=0, minute=0, second=0)
    refusals_add(
        {
            (org.id, key.id, MINUTE, 429, "rate_limit_exceeded"): 3,
            (org.id, key.id, MINUTE + 120, 429, "rate_limit_exceeded"): 4,
            (org.id, second.id, MINUTE, 402, "budget_exhausted"): 9,
            (org.id, key.id, int((day - timedelta(days=3)).timestamp()), 400, "invalid_json"): 1,
        }
    )
    summary = refusal_summary(org=org, now=NOW + timedelta(minutes=5))  # the last 24 hours
    assert [(g.api_key.name, g.error_code, g.count) for g in summary.groups] == [
        ("batch", "budget_exhausted", 9),
        ("backend", "rate_limit_exceeded", 7),
    ]
    limited = summary.groups[1]
    assert limited.first_minute == datetime.fromtimestamp(MINUTE, UTC)
    assert limited.last_minute == datetime.fromtimestamp(MINUTE + 120, UTC)
    assert "limit" in limited.help
    assert summary.total == 16

    days = refusal_summary(org=org, start=date(2026, 11, 17), end=date(2026, 11, 17))
    assert [(g.error_code, g.count) for g in days.groups] == [("invalid_json", 1)]
    only = refusal_summary(org=org, key_id=second.id, now=NOW)
    assert [g.api_key.name for g in only.groups] == ["batch"]


def test_tenants_see_only_their_own_refusals(org, key, other_org_key):
    refusals_add(
        {
            (org.id, key.id, MINUTE, 429, "rate_limit_exceeded"): 1,
            (other_org_key.org_id, other_org_key.id, MINUTE, 401, "revoked_api_key"): 50,
        }
    )
    summary = refusal_summary(org=org, now=NOW)
    assert [(g.api_key.name, g.count) for g in summary.groups] == [("backend", 1)]


def test_counts_older_than_90_days_are_removed(org, key):
    old = int((NOW - timedelta(days=91)).timestamp()) // 60 * 60
    recent = int((NOW - timedelta(days=89)).timestamp()) // 60 * 60
    refusals_add(
        {
            (org.id, key.id, old, 429, "rate_limit_exceeded"): 1,
            (org.id, key.id, recent, 429, "rate_limit_exceeded"): 2,
        }
    )
    assert refusals_prune(now=NOW) == 1
    assert list(RefusalCount.objects.values_list("count", flat=True)) == [2]


def test_the_console_shows_them_above_the_request_log(client_for, org, owner, viewer, key):
    api_key_revoke(key=key, actor=owner)
    now = datetime.now(UTC)
    refusals_add({(org.id, key.id, int(now.timestamp()) // 60 * 60, 401, "revoked_api_key"): 6})
    browser = client_for(viewer)
    page = browser.get("/o/acme/requests/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'data-testid="refusals"' in text
    assert "<strong>6</strong> requests refused before reaching a model" in text
    assert "revoked_api_key" in text and "something still uses it" in text
    assert page.context["refusals"].groups[0].api_key.name == "backend"

    # htmx swaps the panel as filters change; the refusals come with it.
    partial = browser.get("/o/acme/requests/?status=error", HTTP_HX_REQUEST="true")
    assert 'data-testid="refusals"' in partial.content.decode()
    # Refusals have no model, deployment or success: those filters leave them out.
    for query in ("status=ok", "route=chat", "request_id=req-x"):
        filtered = browser.get(f"/o/acme/requests/?{query}")
        assert 'data-testid="refusals"' not in filtered.content.decode(), query
    # A day range without any.
    empty = browser.get("/o/acme/requests/?start=2020-01-01&end=2020-01-02")
    assert 'data-testid="refusals"' not in empty.content.decode()


def test_the_api_lists_them_and_checks_its_parameters(client, org, owner, key, other_org_key):
    now = datetime.now(UTC)
    refusals_add({(org.id, key.id, int(now.timestamp()) // 60 * 60, 429, "rate_limit_exceeded"): 3})
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret

    def get(query: str = ""):  # type: ignore[no-untyped-def]
        return client.get(f"/api/orgs/acme/refusals/{query}", HTTP_AUTHORIZATION=f"Bearer {reader}")

    response = get()
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 3
    [group] = body["refusals"]
    assert group["api_key"] == {"id": str(key.id), "name": "backend", "prefix": key.prefix}
    assert (group["status_code"], group["error_code"], group["count"]) == (
        429,
        "rate_limit_exceeded",
        3,
    )
    assert get(f"?key={key.id}").json()["total"] == 3
    bad = get(f"?key={other_org_key.id}")
    assert bad.status_code == 400
    assert "key" in bad.json()["error"]["fields"]
    assert get("?start=2026-11-20&end=2026-11-19").status_code == 400
    # An inference-only key may not read it; another org's reader gets nothing of ours.
    app = api_key_create(org=org, actor=owner, name="app", scopes=["inference"]).secret
    assert (
        client.get("/api/orgs/acme/refusals/", HTTP_AUTHORIZATION=f"Bearer {app}").status_code
        == 403
    )
    theirs = api_key_create(
        org=other_org_key.org, actor=None, name="their reader", scopes=["read"]
    ).secret
    assert client.get(
        "/api/orgs/acme/refusals/", HTTP_AUTHORIZATION=f"Bearer {theirs}"
    ).status_code in (403, 404)


def test_the_total_counts_every_refusal_not_only_the_groups_listed(
    client_for, org, owner, key, monkeypatch
):
    from inference.selectors import refusals

    monkeypatch.setattr(refusals, "MAX_GROUPS", 2)
    now = datetime.now(UTC)
    minute = int(now.timestamp()) // 60 * 60
    refusals_add(
        {(org.id, key.id, minute, 400 + n, f"code_{n}"): n + 1 for n in range(5)}
    )  # 1 + 2 + 3 + 4 + 5 in five groups
    summary = refusal_summary(org=org)
    assert [g.count for g in summary.groups] == [5, 4]
    assert summary.total == 15
    browser = client_for(owner)
    assert browser.get("/api/orgs/acme/refusals/").json()["total"] == 15
    page = browser.get("/o/acme/requests/").content.decode()
    assert "<strong>15</strong> requests refused before reaching a model" in page
