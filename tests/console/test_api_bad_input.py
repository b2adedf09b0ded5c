"""Query strings and bodies that once made the REST API or the console answer 500: each now
gets an error naming what is wrong."""

from __future__ import annotations

import pytest

from console.models import WebhookEndpoint
from inference.models import ExternalEndpoint

FAR_DATES = ["9999-12-31", "0001-01-01", "1999-12-31", "3000-01-01"]
RANGE_ERROR = "Choose a day from 2000-01-01 to 2999-12-31."


@pytest.mark.parametrize("day", FAR_DATES)
@pytest.mark.parametrize("path", ["audit/", "requests/", "refusals/", "usage/"])
@pytest.mark.parametrize("field", ["start", "end"])
def test_api_date_filters_out_of_range_get_400_on_the_field(
    client_for, org, owner, path, field, day
):
    response = client_for(owner).get(f"/api/orgs/{org.slug}/{path}?{field}={day}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {field: [RANGE_ERROR]}


def test_api_date_filters_at_the_edges_are_answered(client_for, org, owner):
    client = client_for(owner)
    for path in ["audit/", "requests/", "refusals/"]:
        response = client.get(f"/api/orgs/{org.slug}/{path}?start=2000-01-01&end=2999-12-31")
        assert response.status_code == 200, (path, response.content)
    usage = client.get(f"/api/orgs/{org.slug}/usage/?end=2999-12-31")
    assert usage.status_code == 200 and usage.json()["start"] == "2999-12-02"


@pytest.mark.parametrize("path", ["audit/", "requests/", "usage/"])
def test_console_date_filters_out_of_range_show_the_error(client_for, org, owner, path):
    response = client_for(owner).get(f"/o/{org.slug}/{path}?start=2026-01-01&end=9999-12-31")
    assert response.status_code == 400
    assert RANGE_ERROR in response.content.decode()


@pytest.mark.parametrize(
    "cursor", ["999999999999999999_1", "1_9999999999999999999999", "1_0", "abc", "_1", "¹_1", "1_²"]
)
def test_a_request_log_cursor_that_is_not_ours_gets_400_or_the_newest_page(
    client_for, org, owner, cursor
):
    client = client_for(owner)
    response = client.get(f"/api/orgs/{org.slug}/requests/?before={cursor}")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "before": ["not a cursor from this log: pass the `next` value of a page"]
    }
    page = client.get(f"/o/{org.slug}/requests/?before={cursor}")
    assert page.status_code == 200
    assert "That page link is not valid any more" in page.content.decode()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1", "This is not a valid URL: Invalid IPv6 URL."),
        ("https://exa mple.com/v1", "A URL has no spaces or control characters"),
        ("https://-bad-.example/v1", "'-bad-.example' is not a valid host name."),
    ],
)
def test_malformed_urls_get_400_and_save_nothing(client_for, org, owner, url, message):
    client = client_for(owner)
    hook = client.post(
        f"/api/orgs/{org.slug}/webhooks/", {"url": url}, content_type="application/json"
    )
    assert hook.status_code == 400, hook.content
    assert message in hook.json()["error"]["fields"]["url"][0]
    endpoint = client.post(
        f"/api/orgs/{org.slug}/endpoints/",
        {"name": "ext", "base_url": url, "model": "m"},
        content_type="application/json",
    )
    assert endpoint.status_code == 400, endpoint.content
    assert "base_url" in endpoint.json()["error"]["fields"]
    assert not WebhookEndpoint.objects.exists() and not ExternalEndpoint.objects.exists()


def test_the_logs_endpoint_names_the_bad_parameter(client_for, org, owner, tmp_path, settings):
    from tests.deployments.factories import make_deployment

    (tmp_path / "tiny").mkdir()
    settings.MODEL_ROOTS = [str(tmp_path)]
    deployment = make_deployment(org=org, actor=owner, model_root=tmp_path)
    url = f"/api/orgs/{org.slug}/deployments/{deployment.pk}/logs/"
    client = client_for(owner)
    bad_replica = client.get(url + "?replica=not-a-uuid").json()["error"]
    assert bad_replica["fields"] == {"replica": ["Must be a valid UUID."]}
    for lines, message in [
        ("abc", "A valid integer is required."),
        ("0", "Ensure this value is greater than or equal to 1."),
        ("5000", "Ensure this value is less than or equal to 1000."),
    ]:
        response = client.get(url + f"?lines={lines}")
        assert response.status_code == 400
        assert response.json()["error"]["fields"] == {"lines": [message]}
    fine = client.get(url + "?lines=5")
    assert fine.status_code == 200 and fine.json() == {"replica": None, "lines": [], "note": ""}


def test_not_found_keeps_the_views_own_words(client_for, org, owner):
    client = client_for(owner)
    budget = client.get(f"/api/orgs/{org.slug}/budget/")
    assert budget.status_code == 404
    assert budget.json()["error"]["message"] == "No budget is set."
    missing = client.get(f"/api/orgs/{org.slug}/requests/req-nope/")
    assert missing.json()["error"]["message"] == "No request with this id in this organisation."
    # get_object_or_404's message names a model class; the client gets the plain words.
    key = client.get(f"/api/orgs/{org.slug}/keys/00000000-0000-0000-0000-000000000000/")
    assert key.status_code == 404 and key.json()["error"]["message"] == "Not found."


@pytest.mark.parametrize("path", ["requests/", "usage/", "audit/"])
def test_console_filters_that_do_not_hold_show_why_and_nothing_else(client_for, org, owner, path):
    from django.utils import timezone

    from billing.ledger import usage_record_batch
    from billing.rollups import usage_rollup
    from console.services.keys import api_key_create
    from tests.billing.factories import usage

    # Something each page would show: a request, its usage, and the key.created event.
    key = api_key_create(org=org, actor=owner, name="svc", scopes=["inference"]).key
    served = usage(org.id, timezone.now(), api_key_id=key.pk)
    usage_record_batch([served])
    usage_rollup()
    marker = {
        "requests/": served.request_id[:12],
        "usage/": 'data-testid="total-requests">1<',
        "audit/": "key.created",
    }[path]
    assert marker in client_for(owner).get(f"/o/{org.slug}/{path}").content.decode()
    client = client_for(owner)
    backwards = "start=2026-11-20&end=2026-11-10"
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        response = client.get(f"/o/{org.slug}/{path}?{backwards}", **headers)
        assert response.status_code == 400
        body = response.content.decode()
        # Inside the part htmx swaps in, too: the form itself is outside it.
        assert 'data-testid="filter-errors"' in body
        assert "From (UTC): The start must not be after the end." in body or (
            "Start: The start must not be after the end." in body
        )
        assert marker not in body
    export = client.get(f"/o/{org.slug}/{path}?{backwards}&format=csv")
    assert export.status_code == 400 and export["Content-Type"].startswith("text/html")


def test_an_unknown_format_names_the_formats_there_are(client_for, org, owner):
    client = client_for(owner)
    usage = client.get(f"/api/orgs/{org.slug}/usage/?format=xml")
    assert usage.status_code == 404
    assert usage.json()["error"]["message"] == (
        "This endpoint has no format 'xml'; use one of: csv, json."
    )
    keys = client.get(f"/api/orgs/{org.slug}/keys/?format=csv")
    assert keys.status_code == 404
    assert keys.json()["error"]["message"] == (
        "This endpoint has no format 'csv'; use one of: api, json."
    )
    assert client.get(f"/api/orgs/{org.slug}/usage/?format=csv").status_code == 200
