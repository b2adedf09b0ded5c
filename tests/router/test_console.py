"""The route page of an auto route, its upload form, and the savings and request-log API."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from billing.ledger import usage_record_batch
from inference.models import Route, RouteScorer
from inference.services.routes import route_create
from tests.billing.factories import usage
from tests.gateway.conftest import make_deployment

TWO = ["deployment:cheap", "deployment:strong"]


def _route(org, owner) -> Route:  # type: ignore[no-untyped-def]
    make_deployment(org, "cheap", [])
    make_deployment(org, "strong", [])
    return route_create(
        org=org, actor=owner, name="smart", policy="auto", config={"targets": TWO, "threshold": 0.5}
    )


def test_the_route_form_sets_a_strong_share_and_the_page_shows_calibration_savings_and_log(
    org, owner, client_for
):  # type: ignore[no-untyped-def]
    route = _route(org, owner)
    now = datetime.now(UTC)
    usage_record_batch(
        [
            usage(
                org.id,
                now,
                route="smart",
                router_score=0.91,
                router_choice="deployment:cheap",
                target="deployment:cheap",
                baseline_cost_micros=9_000_000,
            ),
        ]
    )
    client = client_for(owner)
    url = reverse("route_edit", args=[org.slug, route.id])
    response = client.post(
        url,
        {
            "name": "smart",
            "policy": "auto",
            "config": '{"targets": ["deployment:cheap", "deployment:strong"], "threshold": 0.5}',
            "max_strong_percent": "30",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    route.refresh_from_db()
    assert route.config["max_strong_percent"] == 30
    assert "threshold" not in route.config and len(route.config["thresholds"]) == 1
    page = client.get(url).content.decode()
    assert "calibrated for at most 30%" in page
    assert "reference sample" in page
    assert "0.910" in page and "deployment:cheap" in page  # the request log
    assert "$9.00" in page  # the all-strong cost in the savings table
    # Back to a threshold set by hand in the JSON as the form shows it: the share taken out,
    # the thresholds changed, the old calibration left in; it goes with the share.
    edited = {k: v for k, v in route.config.items() if k != "max_strong_percent"}
    edited["thresholds"] = [0.95]
    assert "calibration" in edited
    response = client.post(url, {"name": "smart", "policy": "auto", "config": json.dumps(edited)})
    assert response.status_code == 302, response.content.decode()[:2000]
    route.refresh_from_db()
    assert route.config == {"targets": TWO, "thresholds": [0.95]}
    page = client.get(url).content.decode()
    assert "calibrated for" not in page and "Calibrated on" not in page


def test_an_uploaded_file_with_a_bad_row_is_refused_naming_it(org, owner, client_for):  # type: ignore[no-untyped-def]
    route = _route(org, owner)
    rows = "prompt,weak,strong\n" + "".join(f"q{i},True,False\n" for i in range(25)) + "q,x,y\n"
    client = client_for(owner)
    response = client.post(
        reverse("route_scorer_upload", args=[org.slug, route.id]),
        {"file": SimpleUploadedFile("o.csv", rows.encode(), content_type="text/csv")},
        follow=True,
    )
    assert "row 27" in response.content.decode()
    assert not RouteScorer.objects.exists()


def test_the_savings_and_requests_api(org, owner, client_for):  # type: ignore[no-untyped-def]
    route = _route(org, owner)
    now = datetime.now(UTC)
    usage_record_batch(
        [
            usage(org.id, now, route="smart", router_score=0.8, baseline_cost_micros=10_000_000),
            usage(org.id, now, route="smart", router_score=0.1),
        ]
    )
    client = client_for(owner)
    body = client.get(f"/api/orgs/{org.slug}/routes/{route.id}/savings/?days=7").json()
    totals = body["totals"]
    assert totals["requests"] == 2 and totals["routed_cheaper"] == 1
    assert totals["saved_micros"] == totals["baseline_cost_micros"] - totals["cost_micros"]
    assert body["days"][0]["requests"] == 2
    log = client.get(f"/api/orgs/{org.slug}/routes/{route.id}/requests/?limit=1").json()
    assert len(log["requests"]) == 1
    # As everywhere in the API, a larger limit than allowed is served as the largest.
    log = client.get(f"/api/orgs/{org.slug}/routes/{route.id}/requests/?limit=100000")
    assert log.status_code == 200 and len(log.json()["requests"]) == 2
    bad = client.get(f"/api/orgs/{org.slug}/routes/{route.id}/savings/?days=0")
    assert bad.status_code == 400


def test_the_usage_api_and_csv_agree_with_the_savings_report_on_the_baseline(
    org, owner, client_for
):  # type: ignore[no-untyped-def]
    """A request sent to the strongest target has no baseline of its own: it cost what it
    would have cost there. The rollups behind the usage API used to count it as nothing."""
    from billing.rollups import usage_rollup

    route = _route(org, owner)
    now = datetime.now(UTC)
    usage_record_batch(
        [
            usage(org.id, now, route="smart", router_score=0.8, baseline_cost_micros=10_000),
            usage(org.id, now, route="smart", router_score=0.1),
            usage(org.id, now, route="plain"),  # not an auto route: the baseline is the cost
        ]
    )
    usage_rollup()
    client = client_for(owner)
    savings = client.get(f"/api/orgs/{org.slug}/routes/{route.id}/savings/?days=7").json()
    rows = client.get(f"/api/orgs/{org.slug}/usage/?group_by=route").json()["rows"]
    by_route = {row["route"]: row for row in rows}
    assert by_route["smart"]["baseline_cost_micros"] == savings["totals"]["baseline_cost_micros"]
    assert by_route["smart"]["cost_micros"] == savings["totals"]["cost_micros"]
    plain = by_route["plain"]
    assert plain["baseline_cost_micros"] == plain["cost_micros"] > 0
    download = client.get(f"/o/{org.slug}/usage/?group=route&format=csv")
    as_csv = b"".join(download.streaming_content).decode()
    assert f",{savings['totals']['baseline_cost_micros']}," in as_csv


def test_an_empty_or_missing_upload_says_which(org, owner, client_for):  # type: ignore[no-untyped-def]
    route = _route(org, owner)
    url = reverse("route_scorer_upload", args=[org.slug, route.id])
    client = client_for(owner)
    empty = client.post(
        url, {"file": SimpleUploadedFile("o.csv", b"", content_type="text/csv")}, follow=True
    ).content.decode()
    assert "The submitted file is empty." in empty
    missing = client.post(url, {}, follow=True).content.decode()
    assert "This field is required." in missing
    assert not RouteScorer.objects.exists()


def test_the_edit_form_shows_the_trade_off_the_route_was_saved_with(org, owner, client_for):  # type: ignore[no-untyped-def]
    route = _route(org, owner)
    client = client_for(owner)
    form = client.get(f"/o/{org.slug}/routes/{route.id}/").context["form"]
    assert form["threshold"].value() == 0.5 and form["max_strong_percent"].value() is None
    Route.objects.filter(pk=route.pk).update(
        config={"targets": TWO, "max_strong_percent": 30, "thresholds": [0.4]}
    )
    form = client.get(f"/o/{org.slug}/routes/{route.id}/").context["form"]
    assert form["max_strong_percent"].value() == 30 and form["threshold"].value() is None
