"""The request log: the console's Requests pages and ``/api/orgs/<org>/requests/``."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.ledger import usage_record_batch
from billing.models import UsageRecord
from console.permissions import Role
from console.services.keys import api_key_create
from inference.selectors.requests import Cursor, CursorError, RequestFilters, request_log
from inference.services.deployments import deployment_create
from tests.billing.factories import usage
from tests.factories import MembershipFactory, OrgFactory

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def key(org, owner):  # type: ignore[no-untyped-def]
    return api_key_create(org=org, actor=owner, name="backend", scopes=["inference"]).key


def _write(org_id: int, count: int, *, start: datetime = NOW, **fields: object) -> list[str]:
    events = [usage(org_id, start + timedelta(seconds=i), **fields) for i in range(count)]
    assert usage_record_batch(events) == count
    return [e.request_id for e in events]


def _api(client, path: str, secret: str):  # type: ignore[no-untyped-def]
    return client.get(path, HTTP_AUTHORIZATION=f"Bearer {secret}")


def test_pages_cover_every_request_once_newest_first_also_with_equal_times(org):
    # Ten requests share one served time: the cursor must split them without loss or repeats.
    ids = _write(org.id, 25)
    same = [usage(org.id, NOW + timedelta(seconds=12)) for _ in range(10)]
    usage_record_batch(same)
    seen: list[UsageRecord] = []
    before = None
    pages = 0
    while True:
        page = request_log(org=org, before=before, limit=7)
        seen.extend(page.records)
        pages += 1
        if page.next is None:
            break
        before = Cursor.decode(page.next.encode())
    assert pages == 5
    assert len(seen) == 35
    assert {r.request_id for r in seen} == set(ids) | {e.request_id for e in same}
    keys = [(r.served_at, r.pk) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_filters_by_status_route_key_and_request_id(org, key):
    ok = _write(org.id, 3, route="chat", api_key_id=key.id)
    failed = _write(org.id, 2, route="chat", status_code=502, start=NOW + timedelta(minutes=1))
    other = _write(org.id, 1, route="embed", api_key_id=key.id, start=NOW + timedelta(minutes=2))

    def ids(**filters: object) -> set[str]:
        page = request_log(org=org, filters=RequestFilters(**filters))  # type: ignore[arg-type]
        return {r.request_id for r in page.records}

    assert ids(status="error") == set(failed)
    assert ids(status="ok") == set(ok) | set(other)
    assert ids(route="embed") == set(other)
    assert ids(key_id=key.id) == set(ok) | set(other)
    assert ids(key_id=key.id, route="chat") == set(ok)
    assert ids(request_id=failed[0]) == {failed[0]}
    assert ids(request_id=failed[0], status="ok") == set()


@pytest.mark.parametrize(
    "value", ["", "nonsense", "123_x", "2026-11-20_5", "1795000000000000_0", "-5_3", "1_2_3"]
)
def test_a_cursor_this_log_did_not_hand_out_is_refused(value):
    with pytest.raises(CursorError):
        Cursor.decode(value)


def test_the_api_lists_pages_and_shows_one_request_in_full(client, org, owner, key):
    deployment = deployment_create(
        org=org, actor=owner, name="small", source="huggingface", model="acme/small"
    )
    replica = uuid.uuid4()
    _write(org.id, 60, route="chat", api_key_id=key.id)
    [auto] = _write(
        org.id,
        1,
        start=NOW + timedelta(hours=1),
        route="smart",
        target="deployment:small",
        deployment_id=deployment.id,
        replica_id=replica,
        api_key_id=key.id,
        router_score=0.8125,
        router_choice="deployment:small",
        baseline_cost_micros=90_000,
        cached_tokens=200,
        ttft_ms=35,
    )
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret

    first = _api(client, "/api/orgs/acme/requests/?limit=40", reader)
    assert first.status_code == 200, first.content
    body = first.json()
    assert len(body["requests"]) == 40 and body["next"]
    assert body["requests"][0]["request_id"] == auto
    second = _api(client, f"/api/orgs/acme/requests/?limit=40&before={body['next']}", reader).json()
    assert len(second["requests"]) == 21 and second["next"] is None
    listed = {r["request_id"] for r in body["requests"] + second["requests"]}
    assert len(listed) == 61

    detail = _api(client, f"/api/orgs/acme/requests/{auto}/", reader)
    assert detail.status_code == 200
    record = detail.json()
    record_db = UsageRecord.objects.get(request_id=auto)
    assert record == {
        "request_id": auto,
        "served_at": record["served_at"],
        "route": "smart",
        "target": "deployment:small",
        "model": "tiny-llama",
        "deployment_id": str(deployment.id),
        "deployment": "small",
        "replica_id": str(replica),
        "api_key": {"id": str(key.id), "name": "backend", "prefix": key.prefix},
        "status_code": 200,
        "error_code": "",
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "cached_tokens": 200,
        "latency_ms": 120,
        "ttft_ms": 35,
        "cost_micros": record_db.cost_micros,
        "router_score": 0.8125,
        "router_choice": "deployment:small",
        "baseline_cost_micros": 90_000,
    }
    served = datetime.fromisoformat(record["served_at"].replace("Z", "+00:00"))
    assert served == NOW + timedelta(hours=1)
    assert record_db.cost_micros > 0

    assert _api(client, "/api/orgs/acme/requests/req-missing/", reader).status_code == 404


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("before=garbage", "before"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("status=broken", "status"),
        (f"key={uuid.uuid4()}", "key"),
        ("key=not-a-uuid", "key"),
    ],
)
def test_bad_queries_get_400_naming_the_parameter(client, org, owner, query, param):
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    response = _api(client, f"/api/orgs/acme/requests/?{query}", reader)
    assert response.status_code == 400
    assert param in response.json()["error"]["fields"]


def test_a_larger_limit_than_allowed_is_served_as_the_largest_page(client, org, owner):
    _write(org.id, 205)
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    answer = _api(client, "/api/orgs/acme/requests/?limit=100000", reader)
    assert answer.status_code == 200
    body = answer.json()
    assert len(body["requests"]) == 200 and body["next"]


def test_another_orgs_key_is_unknown_here(client, org, owner):
    other = OrgFactory(name="Other", slug="other")
    other_owner = MembershipFactory(org=other, role=Role.OWNER).user
    theirs = api_key_create(org=other, actor=other_owner, name="theirs", scopes=["read"]).key
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    response = _api(client, f"/api/orgs/acme/requests/?key={theirs.id}", reader)
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["key"] == [
        "No API key with this id in this organisation."
    ]


def test_tenants_see_only_their_own_requests(client, client_for, org, owner, outsider):
    mine = _write(org.id, 2, route="chat")
    other = outsider.memberships.get().org
    theirs = _write(other.id, 2, route="secret-route")
    page = client_for(owner).get("/o/acme/requests/")
    assert page.status_code == 200
    text = page.content.decode()
    assert all(i[:16] in text or i in text for i in mine)
    assert "secret-route" not in text
    # Another org's request id is not found here, by page or by API.
    assert client_for(owner).get(f"/o/acme/requests/{theirs[0]}/").status_code == 404
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    assert _api(client, f"/api/orgs/acme/requests/{theirs[0]}/", reader).status_code == 404
    search = _api(client, f"/api/orgs/acme/requests/?request_id={theirs[0]}", reader)
    assert search.json()["requests"] == []


def test_an_inference_only_key_may_not_read_the_log(client, org, key, owner):
    secret = api_key_create(org=org, actor=owner, name="app", scopes=["inference"]).secret
    assert _api(client, "/api/orgs/acme/requests/", secret).status_code == 403


def test_the_console_page_lists_filters_and_pages(client_for, org, owner, viewer):
    _write(org.id, 55, route="chat")
    [failed] = _write(org.id, 1, route="chat", status_code=504, start=NOW + timedelta(hours=1))
    browser = client_for(viewer)
    page = browser.get("/o/acme/requests/")
    assert page.status_code == 200
    rows = page.context["rows"]
    assert len(rows) == 50 and rows[0].request_id == failed
    assert page.context["older_query"]
    older = browser.get("/o/acme/requests/?" + page.context["older_query"])
    assert len(older.context["rows"]) == 6
    assert older.context["older_query"] is None

    errors = browser.get("/o/acme/requests/?status=error")
    assert [r.request_id for r in errors.context["rows"]] == [failed]
    by_id = browser.get(f"/o/acme/requests/?request_id={failed}")
    assert [r.request_id for r in by_id.context["rows"]] == [failed]
    missing = browser.get("/o/acme/requests/?request_id=req-nothing")
    assert missing.context["rows"] == []
    assert "No request <code>req-nothing</code>" in missing.content.decode()

    stale = browser.get("/o/acme/requests/?before=broken")
    assert stale.status_code == 200
    assert "not valid any more" in stale.content.decode()
    assert len(stale.context["rows"]) == 50

    partial = browser.get("/o/acme/requests/?status=error", HTTP_HX_REQUEST="true")
    assert partial.content.decode().lstrip().startswith('<div id="requests-panel">')


def test_the_detail_page_shows_what_served_the_request(client_for, org, owner, key):
    deployment = deployment_create(
        org=org, actor=owner, name="small", source="huggingface", model="acme/small"
    )
    [request_id] = _write(
        org.id,
        1,
        route="small",
        target="deployment:small",
        deployment_id=deployment.id,
        api_key_id=key.id,
        status_code=502,
    )
    page = client_for(owner).get(f"/o/acme/requests/{request_id}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert f"/o/acme/deployments/{deployment.id}/" in text
    assert "backend" in text and key.prefix in text
    assert 'data-testid="status">502<' in text


def test_the_list_costs_a_fixed_number_of_queries(client_for, org, owner, key):
    deployments = [
        deployment_create(org=org, actor=owner, name=f"d{i}", source="huggingface", model="a/b")
        for i in range(3)
    ]
    browser = client_for(owner)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert browser.get("/o/acme/requests/").status_code == 200
        return len(queries)

    _write(org.id, 2, api_key_id=key.id, deployment_id=deployments[0].id)
    few = count()
    for d in deployments:
        _write(org.id, 15, api_key_id=key.id, deployment_id=d.id, start=NOW + timedelta(hours=1))
    assert count() == few


def test_the_model_filter_takes_any_name_and_suggests_known_ones(client_for, org, owner):
    # Records whose hour has not been rolled up yet: the filter still finds them by name.
    [fresh] = _write(org.id, 1, route="just-made")
    _write(org.id, 2, route="other")
    deployment_create(org=org, actor=owner, name="small", source="huggingface", model="acme/s")
    page = client_for(owner).get("/o/acme/requests/?route=just-made")
    assert [r.request_id for r in page.context["rows"]] == [fresh]
    assert "small" in page.context["form"].route_names
    assert '<option value="small">' in page.content.decode()


def test_the_requests_a_deployment_served(client, client_for, org, owner):
    small, large = (
        deployment_create(org=org, actor=owner, name=n, source="huggingface", model="a/" + n)
        for n in ("small", "large")
    )
    on_small = _write(org.id, 3, deployment_id=small.id)
    _write(org.id, 2, deployment_id=large.id)
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    listed = _api(client, f"/api/orgs/acme/requests/?deployment={small.id}", reader).json()
    assert {r["request_id"] for r in listed["requests"]} == set(on_small)
    assert _api(client, "/api/orgs/acme/requests/?deployment=nope", reader).status_code == 400

    browser = client_for(owner)
    detail = browser.get(f"/o/acme/deployments/{small.id}/").content.decode()
    link = f"/o/acme/requests/?deployment={small.id}"
    assert link in detail
    page = browser.get(link)
    assert {r.request_id for r in page.context["rows"]} == set(on_small)
    assert f'href="/o/acme/deployments/{small.id}/">small</a>' in page.content.decode()


def test_the_deployment_filter_is_kept_by_the_form_but_not_shown_as_a_field(client_for, owner):
    deployment_id = uuid.uuid4()
    text = client_for(owner).get(f"/o/acme/requests/?deployment={deployment_id}").content.decode()
    assert f'type="hidden" name="deployment" value="{deployment_id}"' in text
    assert ">Deployment</label>" not in text
    assert f"{deployment_id} (deleted)" in text


def test_the_csv_export_streams_every_matching_request_with_the_filters(
    client_for, org, owner, key, outsider
):
    ok = _write(org.id, 60, route="chat", api_key_id=key.id, router_score=0.5)
    [failed] = _write(
        org.id,
        1,
        route="chat",
        status_code=502,
        error_code="upstream_error",
        start=NOW + timedelta(hours=1),
    )
    _write(outsider.memberships.get().org.id, 3, route="chat")
    browser = client_for(owner)
    page = browser.get("/o/acme/requests/?status=error").content.decode()
    assert 'href="/o/acme/requests/?status=error&amp;format=csv"' in page
    response = browser.get("/o/acme/requests/?format=csv")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"].startswith('attachment; filename="requests-acme-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 61  # more than a page, none of another org's
    assert rows[0]["request_id"] == failed and rows[0]["error_code"] == "upstream_error"
    assert {r["request_id"] for r in rows[1:]} == set(ok)
    assert rows[1]["api_key_name"] == "backend" and rows[1]["router_score"] == "0.5"
    record = UsageRecord.objects.get(request_id=rows[1]["request_id"])
    assert Decimal(rows[1]["cost_usd"]) * 1_000_000 == record.cost_micros

    errors = browser.get("/o/acme/requests/?status=error&format=csv")
    lines = b"".join(errors.streaming_content).decode().strip().splitlines()
    assert len(lines) == 2 and failed in lines[1]


def test_a_range_of_utc_days(client, client_for, org, owner):
    day1 = _write(org.id, 2, start=datetime(2026, 11, 1, 23, 59, 58, tzinfo=UTC))
    day2 = _write(org.id, 3, start=datetime(2026, 11, 2, 0, 0, 0, tzinfo=UTC))
    day3 = _write(org.id, 1, start=datetime(2026, 11, 3, 12, 0, tzinfo=UTC))
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret

    def api_ids(query: str) -> set[str]:
        body = _api(client, f"/api/orgs/acme/requests/?{query}", reader).json()
        return {r["request_id"] for r in body["requests"]}

    assert api_ids("start=2026-11-02&end=2026-11-02") == set(day2)
    assert api_ids("start=2026-11-02") == set(day2) | set(day3)
    assert api_ids("end=2026-11-01") == set(day1)
    bad = _api(client, "/api/orgs/acme/requests/?start=2026-11-03&end=2026-11-01", reader)
    assert bad.status_code == 400 and "start" in bad.json()["error"]["fields"]

    browser = client_for(owner)
    page = browser.get("/o/acme/requests/?start=2026-11-02&end=2026-11-03")
    assert {r.request_id for r in page.context["rows"]} == set(day2) | set(day3)
    export = browser.get("/o/acme/requests/?start=2026-11-01&end=2026-11-01&format=csv")
    lines = b"".join(export.streaming_content).decode().strip().splitlines()
    assert len(lines) == 3 and {line.split(",")[1] for line in lines[1:]} == set(day1)
    backwards = browser.get("/o/acme/requests/?start=2026-11-03&end=2026-11-01")
    assert "The start must not be after the end." in backwards.content.decode()


def test_with_many_keys_the_key_filter_takes_the_start_of_a_key(
    client_for, org, owner, monkeypatch
):
    from console import forms as console_forms

    monkeypatch.setattr(console_forms, "KEY_CHOICES_MAX", 3)
    keys = [
        api_key_create(org=org, actor=owner, name=f"k{i}", scopes=["inference"]).key
        for i in range(4)
    ]
    mine = _write(org.pk, 2, api_key_id=keys[2].pk)
    _write(org.pk, 3, api_key_id=keys[0].pk)
    browser = client_for(owner)
    page = browser.get("/o/acme/requests/")
    html = page.content.decode()
    # A text field, not a list of every key.
    assert 'name="key" ' in html and '<option value="' + str(keys[1].pk) not in html
    for typed in (keys[2].prefix, keys[2].prefix + "…", str(keys[2].pk)):
        shown = browser.get("/o/acme/requests/", {"key": typed})
        assert {r.request_id for r in shown.context["rows"]} == set(mine), typed
    unknown = browser.get("/o/acme/requests/", {"key": "sk-nothing"})
    assert "No key of this organisation starts with sk-nothing." in unknown.content.decode()
    usage_page = browser.get(f"/o/{org.slug}/usage/", {"key": "sk-nothing"})
    assert "No key of this organisation starts with sk-nothing." in usage_page.content.decode()
    # Another organisation's key is not found by its id either.
    other = api_key_create(
        org=OrgFactory(name="Other", slug="other"), actor=None, name="x", scopes=["inference"]
    ).key
    theirs = browser.get("/o/acme/requests/", {"key": str(other.pk)})
    assert "No key of this organisation" in theirs.content.decode()
