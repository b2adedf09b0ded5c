from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.ledger import usage_record_batch
from billing.models import Budget
from billing.rollups import usage_rollup
from console.services.keys import api_key_create
from tests.billing.factories import usage

pytestmark = pytest.mark.django_db


@pytest.fixture
def used(mid_month, org, owner):  # type: ignore[no-untyped-def]
    """Two days of usage on two models and a key, rolled up, seen from the middle of a month."""
    key = api_key_create(org=org, actor=owner, name="prod", scopes=["inference"]).key
    today = timezone.now().replace(hour=1, minute=0, second=0, microsecond=0)
    usage_record_batch(
        [
            usage(
                org.pk,
                today - timedelta(days=1),
                model="tiny-llama",
                route="chat",
                api_key_id=key.pk,
                latency_ms=80,
            ),
            usage(
                org.pk, today - timedelta(days=1), model="big-model", route="chat", latency_ms=900
            ),
            usage(
                org.pk, today, model="tiny-llama", route="fast", api_key_id=key.pk, latency_ms=40
            ),
        ]
    )
    usage_rollup()
    return key


def test_usage_page_shows_charts_and_numbers_to_viewers(client_for, viewer, org, used):
    response = client_for(viewer).get(f"/o/{org.slug}/usage/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="total-requests">3<' in body
    assert "chart.umd.min.js" in body and 'id="usage-chart-data"' in body
    assert "big-model" in body


def test_usage_filters_and_csv_export_give_the_same_numbers(client_for, owner, org, used):
    client = client_for(owner)
    response = client.get(
        f"/o/{org.slug}/usage/", {"key": str(used.pk), "group": "route", "format": "csv"}
    )
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["route"], r["requests"], r["cost_micros"], r["cost_usd"]) for r in rows] == [
        ("chat", "1", "1250", "0.001250"),
        ("fast", "1", "1250", "0.001250"),
    ]
    page = client.get(
        f"/o/{org.slug}/usage/", {"key": str(used.pk), "group": "route"}, HTTP_HX_REQUEST="true"
    )
    assert page.status_code == 200 and "<html" not in page.content.decode()
    assert 'data-testid="total-requests">2<' in page.content.decode()


def test_the_filters_offer_the_names_used_without_reading_every_rollup(
    client_for, owner, org, used
):
    """The usage page's route and model filters and the request log's suggestions list what
    the org has used; neither reads the distinct values of all its rollups (a million of them
    in a busy organisation), which the database would do row by row."""
    client = client_for(owner)
    for url, names in (
        (f"/o/{org.slug}/usage/", ['value="chat"', 'value="fast"', 'value="big-model"']),
        (f"/o/{org.slug}/requests/", ['value="chat"', 'value="fast"']),
    ):
        with CaptureQueriesContext(connection) as queries:
            body = client.get(url).content.decode()
        assert all(name in body for name in names), url
        rollups = [q["sql"].upper() for q in queries if "BILLING_USAGEROLLUP" in q["sql"].upper()]
        assert not [q for q in rollups if "SELECT DISTINCT" in q], url


def test_usage_filter_errors_are_shown_instead_of_the_default_range(client_for, owner, org):
    response = client_for(owner).get(
        f"/o/{org.slug}/usage/", {"start": "2026-03-10", "end": "2026-03-01"}
    )
    assert response.status_code == 400
    assert "The start must not be after the end." in response.content.decode()
    assert response.context["rows"] == [] and response.context["invalid"] is True


def test_outsider_gets_404_on_usage_and_billing(client_for, outsider, org):
    for url in (f"/o/{org.slug}/usage/", f"/o/{org.slug}/billing/"):
        assert client_for(outsider).get(url).status_code == 404


def test_billing_page_is_for_owners_and_admins(client_for, owner, viewer, member, org, used):
    assert client_for(viewer).get(f"/o/{org.slug}/billing/").status_code == 403
    assert client_for(member).get(f"/o/{org.slug}/billing/").status_code == 403
    response = client_for(owner).get(f"/o/{org.slug}/billing/")
    body = response.content.decode()
    assert response.status_code == 200
    assert 'data-testid="local-ledger"' in body
    assert 'data-testid="plan">Free<' in body
    assert 'data-testid="mtd">$0.00375<' in body


def test_owner_sets_a_budget_and_bad_input_changes_nothing(client_for, owner, org):
    client = client_for(owner)
    bad = client.post(f"/o/{org.slug}/billing/budget/", {"amount": "-3"})
    assert bad.status_code == 400 and not Budget.objects.exists()
    ok = client.post(f"/o/{org.slug}/billing/budget/", {"amount": "12.50", "hard_limit": "on"})
    assert ok.status_code == 302
    budget = Budget.objects.get(org=org)
    assert (budget.amount_micros, budget.hard_limit) == (12_500_000, True)
    client.post(f"/o/{org.slug}/billing/budget/", {"amount": ""})
    assert not Budget.objects.exists()


def test_key_budget_is_set_from_the_billing_page(client_for, owner, org, used):
    client_for(owner).post(f"/o/{org.slug}/billing/keys/{used.pk}/budget/", {"amount": "2"})
    used.refresh_from_db()
    assert used.monthly_budget_micros == 2_000_000


def test_a_budget_set_to_the_micro_dollar_through_the_api_saves_again_in_the_console(
    client_for, owner, org, used
):
    client = client_for(owner)
    api = client.put(
        f"/api/orgs/{org.slug}/budget/",
        {"amount_micros": 1_234_567, "hard_limit": True},
        content_type="application/json",
    )
    assert api.status_code == 200
    page = client.get(f"/o/{org.slug}/billing/").content.decode()
    assert 'value="1.234567"' in page
    again = client.post(
        f"/o/{org.slug}/billing/budget/", {"amount": "1.234567", "hard_limit": "on"}
    )
    assert again.status_code == 302
    assert Budget.objects.get(org=org).amount_micros == 1_234_567
    key_url = f"/o/{org.slug}/billing/keys/{used.pk}/budget/"
    client.post(key_url, {"amount": "0.000001"})
    used.refresh_from_db()
    assert used.monthly_budget_micros == 1
    # A refused key budget says why, and keeps what was there.
    refused = client.post(key_url, {"amount": "1.2345678"}, follow=True).content.decode()
    assert f"The budget for “{used.name}” was not saved: " in refused
    assert "no more than 6 decimal places" in refused
    used.refresh_from_db()
    assert used.monthly_budget_micros == 1


@pytest.mark.parametrize(
    ("micros", "shown"),
    [
        (0, "$0.00"),
        (12_340_000, "$12.34"),
        (12_345_678, "$12.345678"),
        (2_500, "$0.0025"),
        (10_000, "$0.01"),
        (8_750, "$0.00875"),
        (1, "$0.000001"),
        (-5_000_000, "-$5.00"),
        (1_000_000_000_000, "$1,000,000.00"),
        (None, "—"),
    ],
)
def test_amounts_are_shown_exactly_so_that_they_add_up(micros, shown):
    """A savings line read "$0.002500 against $0.01, saved $0.008750": rounding some figures
    and not others. Every amount is now shown to the micro-dollar where it has one."""
    from billing.money import format_dollars

    assert format_dollars(micros) == shown


def test_payment_buttons_say_so_in_local_ledger_mode(client_for, owner, org):
    response = client_for(owner).post(f"/o/{org.slug}/billing/payment-method/", follow=True)
    assert "local-ledger mode" in response.content.decode()


def test_developers_cannot_change_budgets(client_for, member, org):
    response = client_for(member).post(f"/o/{org.slug}/billing/budget/", {"amount": "5"})
    assert response.status_code == 403 and not Budget.objects.exists()


# REST ----------------------------------------------------------------------------------------


def test_api_usage_groups_by_day_and_model_in_json(client_for, viewer, org, used):
    response = client_for(viewer).get(f"/api/orgs/{org.slug}/usage/", {"group_by": "day,model"})
    assert response.status_code == 200
    data = response.json()
    assert data["group_by"] == ["day", "model"]
    assert [(r["model"], r["requests"]) for r in data["rows"]] == [
        ("big-model", 1),
        ("tiny-llama", 1),
        ("tiny-llama", 1),
    ]
    assert data["totals"]["cost_micros"] == 3_750 and data["totals"]["cost_usd"] == "0.003750"


def test_api_usage_rows_come_a_page_at_a_time_with_the_totals_of_all(
    client_for, viewer, org, used, monkeypatch
):
    """Days by key over a year of an organisation with thousands of keys are hundreds of
    thousands of rows: the JSON answer has a page of them, however many there are."""
    from billing.api.views import UsageRowPages

    client = client_for(viewer)
    url = f"/api/orgs/{org.slug}/usage/"
    whole = client.get(url, {"group_by": "day,model"}).json()
    assert whole["rows_count"] == 3 and whole["next"] is None and whole["previous"] is None
    monkeypatch.setattr(UsageRowPages, "default_limit", 2)
    first = client.get(url, {"group_by": "day,model"}).json()
    assert len(first["rows"]) == 2 and first["rows_count"] == 3
    assert first["totals"] == whole["totals"]
    second = client.get(first["next"]).json()
    assert second["rows"] == whole["rows"][2:] and second["next"] is None
    assert second["totals"] == whole["totals"] and second["previous"]
    assert first["rows"] + second["rows"] == whole["rows"]
    one = client.get(url, {"group_by": "day,model", "limit": 1, "offset": 1}).json()
    assert one["rows"] == whole["rows"][1:2]
    monkeypatch.setattr(UsageRowPages, "max_limit", 2)
    assert len(client.get(url, {"group_by": "day,model", "limit": 500}).json()["rows"]) == 2
    bad = client.get(url, {"group_by": "day,model", "limit": "lots"})
    assert bad.status_code == 400 and "limit" in bad.json()["error"]["fields"]


def test_usage_csv_downloads_are_streamed_as_the_database_hands_over_the_rows(
    client_for, owner, org, used
):
    """A CSV of a year of thousands of keys by day is hundreds of thousands of rows: the
    console's and the REST API's downloads stream them, and read them only as they are sent."""
    client = client_for(owner)
    for url in (f"/o/{org.slug}/usage/", f"/api/orgs/{org.slug}/usage/"):
        query = {"format": "csv", "group": "key", "group_by": "day,key"}
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, query)
            lines = iter(response.streaming_content)
            header = next(lines).decode()
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        assert header.startswith("day,key_id,key_name,requests")
        grouped = [q for q in queries.captured_queries if "GROUP BY" in q["sql"].upper()]
        assert not grouped, url  # nothing summed before the first line went out
        rows = list(csv.DictReader(io.StringIO(header + b"".join(lines).decode())))
        assert [(r["key_name"], r["requests"]) for r in rows] == [
            ("", "1"),
            ("prod", "1"),
            ("prod", "1"),
        ]


def test_api_usage_csv_matches_json(client_for, owner, org, used):
    client = client_for(owner)
    as_json = client.get(f"/api/orgs/{org.slug}/usage/", {"group_by": "key"}).json()["rows"]
    as_csv = client.get(f"/api/orgs/{org.slug}/usage/", {"group_by": "key", "format": "csv"})
    assert as_csv["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(as_csv.streaming_content).decode())))
    assert [int(r["cost_micros"]) for r in rows] == [r["cost_micros"] for r in as_json]
    assert {r["key_name"] for r in rows} == {"", "prod"}


def test_api_usage_rejects_bad_parameters(client_for, owner, org):
    response = client_for(owner).get(f"/api/orgs/{org.slug}/usage/", {"group_by": "day,colour"})
    assert response.status_code == 400
    assert "colour" in response.json()["error"]["fields"]["group_by"][0]
    # Asked for as CSV, an error is still the API's JSON error.
    as_csv = client_for(owner).get(
        f"/api/orgs/{org.slug}/usage/", {"group_by": "day,colour", "format": "csv"}
    )
    assert as_csv.status_code == 400 and as_csv["Content-Type"] == "application/json"
    assert as_csv.json() == response.json()


def test_api_usage_refuses_a_key_of_no_key_of_the_org(client, client_for, owner, outsider, org):
    theirs = api_key_create(
        org=outsider.memberships.get().org, actor=outsider, name="theirs", scopes=["read"]
    ).key
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    url = f"/api/orgs/{org.slug}/usage/"
    for key_id in (theirs.pk, "00000000-0000-0000-0000-000000000000"):
        answer = client.get(url, {"key": str(key_id)}, HTTP_AUTHORIZATION=f"Bearer {reader}")
        assert answer.status_code == 400
        assert answer.json()["error"]["fields"] == {
            "key": ["No API key with this id in this organisation."]
        }
    mine = api_key_create(org=org, actor=owner, name="mine", scopes=["inference"]).key
    assert client_for(owner).get(url, {"key": str(mine.pk)}).status_code == 200


def test_api_spend_and_budget(client_for, owner, viewer, org, used):
    client = client_for(owner)
    put = client.put(
        f"/api/orgs/{org.slug}/budget/",
        {"amount_micros": 4_000_000, "hard_limit": True},
        content_type="application/json",
    )
    assert put.status_code == 200 and put.json()["amount_micros"] == 4_000_000
    spend = client.get(f"/api/orgs/{org.slug}/spend/").json()
    assert spend["month_to_date_micros"] == 3_750
    assert (spend["limit_micros"], spend["limit_reason"]) == (4_000_000, "org_budget")
    assert spend["budget"] == {"amount_micros": 4_000_000, "hard_limit": True}
    assert spend["keys"][0]["month_to_date_micros"] == 2_500
    assert (
        client_for(viewer)
        .put(f"/api/orgs/{org.slug}/budget/", {"amount_micros": 1}, content_type="application/json")
        .status_code
        == 403
    )
    for amount in (1.5, 2**63):
        bad = client.put(
            f"/api/orgs/{org.slug}/budget/",
            {"amount_micros": amount},
            content_type="application/json",
        )
        assert bad.status_code == 400
        assert list(bad.json()["error"]["fields"]) == ["amount_micros"]
    assert Budget.objects.get().amount_micros == 4_000_000


def test_api_spend_shows_billing_only_to_those_who_may_see_it(
    client, client_for, owner, viewer, org, used
):
    """Spend is usage (every role, `read` keys); the plan, forecast, cap and budgets are billing,
    as on the console's overview."""
    Budget.objects.create(org=org, amount_micros=4_000_000, hard_limit=True)
    used.monthly_budget_micros = 1_000_000
    used.save(update_fields=["monthly_budget_micros"])
    billing = {"plan", "forecast_micros", "limit_micros", "limit_reason", "budget"}
    read = api_key_create(org=org, actor=owner, name="r", scopes=["read"]).secret
    manage = api_key_create(org=org, actor=owner, name="m", scopes=["manage"]).secret
    url = f"/api/orgs/{org.slug}/spend/"
    for answer in (
        client_for(viewer).get(url),
        client.get(url, HTTP_AUTHORIZATION=f"Bearer {read}"),
    ):
        assert answer.status_code == 200
        spend = answer.json()
        assert spend["month_to_date_micros"] == 3_750 and not billing & set(spend)
        prod = next(k for k in spend["keys"] if k["name"] == "prod")
        assert prod == {
            "key_id": str(used.pk),
            "name": "prod",
            "prefix": used.prefix,
            "month_to_date_micros": 2_500,
        }
    for answer in (
        client_for(owner).get(url),
        client.get(url, HTTP_AUTHORIZATION=f"Bearer {manage}"),
    ):
        spend = answer.json()
        assert billing <= set(spend) and spend["budget"]["amount_micros"] == 4_000_000
        prod = next(k for k in spend["keys"] if k["name"] == "prod")
        assert prod["budget_micros"] == 1_000_000


def test_api_spend_pages_the_keys(client_for, owner, org, used, monkeypatch):
    """An organisation may have thousands of keys: the answer holds a page of them, and the
    totals on every page."""
    from console.models import ApiKey

    ApiKey.objects.bulk_create(
        ApiKey(org=org, name=f"k{n}", prefix=f"sk-k{n:04}", digest=f"{n:064x}", scopes=["read"])
        for n in range(52)
    )
    ApiKey.objects.filter(name="k0").update(revoked_at=timezone.now())  # not listed
    active = list(
        ApiKey.objects.filter(org=org, revoked_at=None)
        .order_by("-created_at", "-id")
        .values_list("pk", flat=True)
    )
    assert len(active) == 52
    client = client_for(owner)
    url = f"/api/orgs/{org.slug}/spend/"
    first = client.get(url).json()
    assert first["keys_count"] == 52 and first["previous"] is None
    assert [k["key_id"] for k in first["keys"]] == [str(pk) for pk in active[:50]]
    assert first["month_to_date_micros"] == 3_750 and "budget" in first
    second = client.get(first["next"]).json()
    assert [k["key_id"] for k in second["keys"]] == [str(pk) for pk in active[50:]]
    assert second["next"] is None and second["previous"] and second["keys_count"] == 52
    assert second["month_to_date_micros"] == 3_750
    prod = next(k for k in first["keys"] + second["keys"] if k["name"] == "prod")
    assert prod["month_to_date_micros"] == 2_500
    small = client.get(url, {"limit": 20, "offset": 40}).json()
    assert [k["key_id"] for k in small["keys"]] == [str(pk) for pk in active[40:52]]
    assert "limit=20" in small["previous"] and small["next"] is None
    from console.api.access import Pages

    monkeypatch.setattr(Pages, "max_limit", 30)
    assert len(client.get(url, {"limit": 10_000}).json()["keys"]) == 30
    for bad in ({"limit": "0"}, {"offset": "-1"}, {"limit": "many"}):
        answer = client.get(url, bad)
        assert answer.status_code == 400 and list(answer.json()["error"]["fields"]) == list(bad)


def test_the_schema_marks_spend_billing_fields_as_optional(client_for, owner):
    schema = client_for(owner).get("/api/schema/?format=json").json()["components"]["schemas"]
    assert set(schema["Spend"]["required"]) == {
        "period_start",
        "month_to_date_micros",
        "keys_count",
        "next",
        "previous",
        "keys",
    }
    assert "budget_micros" not in schema["KeySpend"]["required"]
    assert "billing.view" in schema["Spend"]["properties"]["forecast_micros"]["description"]


def test_api_removing_the_budget_answers_no_content(client_for, owner, org):
    client = client_for(owner)
    url = f"/api/orgs/{org.slug}/budget/"
    client.put(url, {"amount_micros": 4_000_000}, content_type="application/json")
    removed = client.put(
        url, {"amount_micros": None, "hard_limit": True}, content_type="application/json"
    )
    assert removed.status_code == 204 and removed.content == b""
    assert not Budget.objects.filter(org=org).exists()
    assert client.get(url).status_code == 404
    # Removing none is as good as removing one.
    assert (
        client.put(url, {"amount_micros": None}, content_type="application/json").status_code == 204
    )
    schema = client.get("/api/schema/?format=json").json()
    responses = schema["paths"]["/api/orgs/{org_slug}/budget/"]["put"]["responses"]
    assert "content" not in responses["204"] and "200" in responses


def test_usage_endpoints_are_in_the_openapi_schema(client_for, owner):
    schema = client_for(owner).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert {
        "/api/orgs/{org_slug}/usage/",
        "/api/orgs/{org_slug}/spend/",
        "/api/orgs/{org_slug}/budget/",
    } <= set(schema["paths"])
    params = {
        p["name"] for p in schema["paths"]["/api/orgs/{org_slug}/usage/"]["get"]["parameters"]
    }
    assert {"start", "end", "group_by", "key", "route", "model", "format"} <= params
    spend = schema["paths"]["/api/orgs/{org_slug}/spend/"]["get"]
    assert {p["name"] for p in spend["parameters"]} >= {"limit", "offset"}
    assert "400" in spend["responses"]


def test_the_schema_documents_the_budget_404_and_the_usage_csv(client_for, owner, org):
    schema = client_for(owner).get("/api/schema/?format=json").json()
    missing = schema["paths"]["/api/orgs/{org_slug}/budget/"]["get"]["responses"]["404"]
    assert missing["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert "No budget is set" in missing["description"]
    answer = client_for(owner).get(f"/api/orgs/{org.slug}/budget/")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "No budget is set."
    usage = schema["paths"]["/api/orgs/{org_slug}/usage/"]["get"]["responses"]["200"]["content"]
    assert usage["application/json"]["schema"] == {"$ref": "#/components/schemas/UsageResponse"}
    assert usage["text/csv"]["schema"] == {"type": "string"}


def test_the_day_boundaries_are_utc(client_for, owner, org):
    late = datetime.now(UTC).replace(hour=23, minute=59) - timedelta(days=2)
    usage_record_batch([usage(org.pk, late)])
    usage_rollup()
    rows = client_for(owner).get(f"/api/orgs/{org.slug}/usage/").json()["rows"]
    assert [r["day"] for r in rows] == [late.date().isoformat()]


def test_key_budgets_come_50_a_page_the_most_spent_first(client_for, owner, org, mid_month):
    keys = [
        api_key_create(org=org, actor=owner, name=f"key {i:02d}", scopes=["inference"]).key
        for i in range(60)
    ]
    # Keys 10 to 14 spent this month, key 14 the most.
    usage_record_batch(
        [
            usage(org.pk, mid_month - timedelta(hours=1), api_key_id=keys[i].pk, prompt_tokens=i)
            for i in range(10, 15)
            for _ in range(i - 9)
        ]
    )
    usage_rollup()
    client = client_for(owner)
    first = client.get(f"/o/{org.slug}/billing/").content.decode()
    names = re.findall(r"<td>(key \d\d) <code>", first)
    assert len(names) == 50
    assert names[:5] == ["key 14", "key 13", "key 12", "key 11", "key 10"]
    assert names[5:8] == ["key 00", "key 01", "key 02"]  # no spend: by name
    assert "Keys 1\u201350 of 60, the most spent this month first." in first
    second = client.get(f"/o/{org.slug}/billing/", {"keys_page": 2}).content.decode()
    assert re.findall(r"<td>(key \d\d) <code>", second) == [f"key {i:02d}" for i in range(50, 60)]
    # Saving a budget on the second page comes back to it.
    action = f"/o/{org.slug}/billing/keys/{keys[55].pk}/budget/?keys_page=2"
    assert f'action="{action}"' in second
    saved = client.post(action, {"amount": "3"})
    assert saved["Location"] == f"/o/{org.slug}/billing/?keys_page=2"


def _used(org, served_at, prompt_tokens: int, completion_tokens: int) -> None:  # type: ignore[no-untyped-def]
    usage_record_batch(
        [
            usage(
                org.pk,
                served_at,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        ]
    )


def test_the_estimated_invoice_is_the_usage_reported_to_stripe(
    client_for, owner, org, settings, mid_month
):
    from billing.models import MeterEvent
    from billing.services.meters import meter_events_prepare
    from tests.billing.conftest import subscribe
    from tests.billing.factories import price

    settings.STRIPE_API_KEY = "sk_test_estimate"
    price(effective_from=datetime(2026, 6, 1, tzinfo=UTC))  # $1/M input, $2/M output
    # $1.50 on the Free plan on the 5th; Pay as you go from the 10th, then $2.00 on the 12th.
    _used(org, datetime(2026, 6, 5, 9, tzinfo=UTC), 1_000_000, 250_000)
    subscribe(org, since=datetime(2026, 6, 10, 10, 30, tzinfo=UTC))
    _used(org, datetime(2026, 6, 12, 9, tzinfo=UTC), 2_000_000, 0)
    usage_rollup(now=mid_month)
    meter_events_prepare(now=mid_month)
    assert sum(MeterEvent.objects.values_list("value", flat=True)) == 2_000_000
    page = client_for(owner).get(f"/o/{org.slug}/billing/")
    assert page.context["mtd"] == 3_500_000
    assert page.context["estimate_due"] == 2_000_000
    body = page.content.decode()
    assert 'data-testid="estimate">$2.00<' in body
    assert 'data-testid="not-estimated">$1.50 of this month' in body


def test_nothing_more_is_estimated_once_a_subscription_ended_with_its_invoice(
    client_for, owner, org, settings, mid_month
):
    from billing.models import BillingAccount, Plan
    from tests.billing.conftest import subscribe

    settings.STRIPE_API_KEY = "sk_test_estimate"
    subscribe(org, since=datetime(2026, 5, 1, tzinfo=UTC))
    _used(org, datetime(2026, 6, 5, 9, tzinfo=UTC), 20_000_000, 0)
    # Back to Free on the 10th: cancelling invoiced the Pay-as-you-go usage.
    BillingAccount.objects.filter(org=org).update(
        plan=Plan.objects.get(code="free"),
        subscription_status="canceled",
        billable_until=datetime(2026, 6, 10, tzinfo=UTC),
    )
    usage_rollup(now=mid_month)
    page = client_for(owner).get(f"/o/{org.slug}/billing/")
    assert page.context["mtd"] == 10_000_000  # at the fallback $0.50/M input
    assert page.context["estimate_due"] == 0
    # The free credit covers what was used on Free since: nothing yet.
    assert page.context["credit_used"] == 0


def test_the_local_ledger_estimate_is_the_month_less_the_free_credit(
    client_for, owner, org, mid_month
):
    _used(org, datetime(2026, 6, 5, 9, tzinfo=UTC), 20_000_000, 0)
    usage_rollup(now=mid_month)
    page = client_for(owner).get(f"/o/{org.slug}/billing/")
    assert page.context["mtd"] == 10_000_000  # at the fallback $0.50/M input
    assert (page.context["credit_used"], page.context["estimate_due"]) == (5_000_000, 5_000_000)


def test_keys_with_the_same_name_are_told_apart_on_the_usage_page(
    client_for, owner, org, mid_month
):
    """A key rotated the usual way: a new "prod" created, the old "prod" revoked."""
    from console.services.keys import api_key_revoke

    old = api_key_create(org=org, actor=owner, name="prod", scopes=["inference"]).key
    new = api_key_create(org=org, actor=owner, name="prod", scopes=["inference"]).key
    api_key_revoke(key=old, actor=owner)
    day = datetime(2026, 6, 14, 10, tzinfo=UTC)
    usage_record_batch(
        [
            usage(org.pk, day, api_key_id=old.pk),
            usage(org.pk, day, api_key_id=new.pk, prompt_tokens=3_000),
            usage(org.pk, day),
        ]
    )
    usage_rollup(now=mid_month)
    page = client_for(owner).get(
        f"/o/{org.slug}/usage/", {"start": "2026-06-14", "end": "2026-06-14", "group": "key"}
    )
    labels = {f"prod ({old.prefix}…)", f"prod ({new.prefix}…)", "(no key)"}
    assert {row["label"] for row in page.context["rows"]} == labels
    series = {entry["label"]: entry["tokens"] for entry in page.context["chart"]["series"]}
    assert series == {
        f"prod ({old.prefix}…)": [1_500],
        f"prod ({new.prefix}…)": [3_500],
        "(no key)": [1_500],
    }
    assert f"prod ({new.prefix}…)" in page.content.decode()


def test_past_ten_keys_the_usage_page_shows_the_largest_and_the_others_together(
    client_for, owner, org, mid_month
):
    """An organisation with thousands of keys gets a page of a bounded size: the ten keys that
    cost the most have a series and rows of their own, the others are added up as one; the
    totals and the CSV are those of every key."""
    keys = [
        api_key_create(org=org, actor=owner, name=f"key {n:02}", scopes=["inference"]).key
        for n in range(13)
    ]
    days = [datetime(2026, 6, 13, 10, tzinfo=UTC), datetime(2026, 6, 14, 10, tzinfo=UTC)]
    # Key n sends (n + 1) thousand prompt tokens a day: keys 0, 1 and 2 cost the least.
    usage_record_batch(
        [
            usage(org.pk, day, api_key_id=key.pk, prompt_tokens=(n + 1) * 1_000)
            for n, key in enumerate(keys)
            for day in days
        ]
    )
    usage_rollup(now=mid_month)
    query = {"start": "2026-06-13", "end": "2026-06-14", "group": "key"}
    page = client_for(owner).get(f"/o/{org.slug}/usage/", query)
    labels = [entry["label"] for entry in page.context["chart"]["series"]]
    kept = [f"key {n:02} ({keys[n].prefix}…)" for n in range(3, 13)]
    assert sorted(labels) == sorted([*kept, "3 other keys"])
    other = next(e for e in page.context["chart"]["series"] if e["label"] == "3 other keys")
    assert other["tokens"] == [(1_000 + 2_000 + 3_000) + 3 * 500] * 2
    rows = page.context["rows"]
    assert len(rows) == 2 * 11
    assert [row["label"] for row in rows[:11]][-1] == "3 other keys"  # after the named ones
    assert page.context["totals"].requests == 26
    body = page.content.decode()
    assert "the other 3 are added up together" in body
    download = client_for(owner).get(f"/o/{org.slug}/usage/", {**query, "format": "csv"})
    csv_rows = list(csv.DictReader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert len(csv_rows) == 26


def test_the_usage_charts_have_a_point_for_every_day_of_the_range(
    client_for, owner, org, mid_month
):
    usage_record_batch(
        [
            usage(org.pk, datetime(2026, 6, 1, 10, tzinfo=UTC), latency_ms=80),
            usage(org.pk, datetime(2026, 6, 4, 10, tzinfo=UTC), latency_ms=80),
        ]
    )
    usage_rollup(now=mid_month)
    page = client_for(owner).get(
        f"/o/{org.slug}/usage/", {"start": "2026-06-01", "end": "2026-06-05"}
    )
    chart = page.context["chart"]
    assert chart["days"] == [f"2026-06-0{day}" for day in range(1, 6)]
    [series] = chart["series"]
    assert series["requests"] == [1, 0, 0, 1, 0]
    assert chart["p50"] == [100, None, None, 100, None]


def test_invoices_show_the_last_day_of_their_period(client_for, owner, org, mid_month):
    from billing.models import Invoice

    month = {"period_start": datetime(2026, 5, 1, tzinfo=UTC)}
    # Stripe's period_end is the moment the period ended: a month ends at 00:00 on the next 1st.
    Invoice.objects.create(
        org=org, stripe_invoice_id="in_may", period_end=datetime(2026, 6, 1, tzinfo=UTC), **month
    )
    # The invoice of a subscription's start covers no time at all.
    start = datetime(2026, 6, 10, 10, 30, tzinfo=UTC)
    Invoice.objects.create(org=org, stripe_invoice_id="in_0", period_start=start, period_end=start)
    body = client_for(owner).get(f"/o/{org.slug}/billing/").content.decode()
    assert "<td>2026-05-01 \u2013 2026-05-31</td>" in body
    assert "<td>2026-06-10 \u2013 2026-06-10</td>" in body
