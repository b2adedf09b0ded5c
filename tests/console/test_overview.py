"""The organisation overview: spend, the last day's traffic, deployments and the quick start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.ledger import usage_record_batch
from billing.models import Budget
from billing.rollups import usage_rollup
from billing.selectors import usage_totals_since
from console.permissions import Action, Role, role_can
from console.services.keys import api_key_create
from inference.models import Replica
from inference.services.deployments import deployment_create, deployment_delete
from inference.services.routes import route_create
from tests.billing.factories import price, usage
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

# What an owner's page costs: 5 for the session, user, membership and the layout's org switcher,
# 3 for the member and key counts and recent activity, 3 for month-to-date spend, 1 for traffic,
# 1 for refused requests, 5 for the limit and forecast, 2 for deployments and their replicas, 1 for
# the routes.
MAX_QUERIES = 20


@pytest.fixture
def priced(db):  # type: ignore[no-untyped-def]
    """tiny-llama at $1 per million prompt tokens and $2 per million completion tokens."""
    return price(effective_from=timezone.now() - timedelta(days=40))


@pytest.fixture
def traffic(org, priced):  # type: ignore[no-untyped-def]
    """Three requests just now, one of them failed, rolled up: 2_000 µ$ each for the two that
    succeeded (1_000 prompt tokens at $1/M and 500 completion tokens at $2/M)."""
    now = timezone.now()
    usage_record_batch(
        [
            usage(org.pk, now, route="chat", latency_ms=80),
            usage(org.pk, now, route="chat", latency_ms=900),
            usage(
                org.pk,
                now,
                route="chat",
                status_code=500,
                prompt_tokens=0,
                completion_tokens=0,
                latency_ms=20,
            ),
        ]
    )
    usage_rollup()


def _deploy(org, owner, name: str, **fields):  # type: ignore[no-untyped-def]
    return deployment_create(
        org=org, actor=owner, name=name, source="huggingface", model=f"acme/{name}", **fields
    )


def _page(client_for, user, org) -> str:  # type: ignore[no-untyped-def]
    response = client_for(user).get(f"/o/{org.slug}/")
    assert response.status_code == 200
    return response.content.decode()


def test_owner_sees_spend_limit_traffic_and_deployments(client_for, org, owner, traffic):
    Budget.objects.create(org=org, amount_micros=10_000, hard_limit=True)
    llama = _deploy(
        org, owner, "llama", served_model_name="llama-3", min_replicas=2, max_replicas=2
    )
    Replica.objects.create(deployment=llama, state="ready")
    Replica.objects.create(deployment=llama, state="starting")
    Replica.objects.create(deployment=llama, state="stopped")
    gone = _deploy(org, owner, "gone")
    deployment_delete(deployment=gone, actor=owner)
    route_create(
        org=org, actor=owner, name="chat", policy="single", config={"target": "deployment:llama"}
    )

    html = _page(client_for, owner, org)

    assert 'data-testid="mtd">$0.004<' in html
    assert 'data-testid="limit">$0.01<' in html
    assert 'data-testid="limit-percent">40%<' in html
    assert 'data-testid="forecast">$' in html
    assert f'href="/o/{org.slug}/usage/"' in html and f'href="/o/{org.slug}/billing/"' in html
    assert 'data-testid="traffic-requests">3<' in html
    assert 'data-testid="traffic-errors">1<' in html
    assert 'data-testid="traffic-refused"' not in html  # none refused
    assert 'data-testid="traffic-tokens">2000 / 1000<' in html
    assert 'data-testid="traffic-cost">$0.004<' in html
    assert 'data-testid="traffic-latency">100 / 1000 ms<' in html
    assert "every 5 minutes" in html
    row = html[html.index('<tr data-deployment="llama">') :].split("</tr>")[0]
    assert f'href="/o/{org.slug}/deployments/{llama.pk}/"' in row
    assert "<code>llama-3</code>" in row
    assert 'data-state="pending"' in row
    assert "<td>1 / 2</td>" in row
    assert 'data-deployment="gone"' not in html
    assert f'href="/o/{org.slug}/routes/" data-testid="route-count">1 route<' in html


def test_owner_over_the_limit_is_told_why(client_for, org, owner, traffic):
    Budget.objects.create(org=org, amount_micros=3_000, hard_limit=True)
    html = _page(client_for, owner, org)
    assert 'data-testid="limit-percent">133%<' in html
    assert 'data-testid="limit-message">The organisation&#x27;s monthly budget' in html


def test_viewer_sees_spend_and_traffic_but_not_the_limit_or_forecast(
    client_for, org, owner, viewer, traffic
):
    Budget.objects.create(org=org, amount_micros=10_000, hard_limit=True)
    _deploy(org, owner, "llama")
    html = _page(client_for, viewer, org)
    assert 'data-testid="mtd">$0.004<' in html
    assert 'data-testid="traffic-requests">3<' in html
    assert 'data-deployment="llama"' in html
    assert 'data-testid="limit"' not in html and 'data-testid="forecast"' not in html
    assert f'href="/o/{org.slug}/billing/"' not in html


@pytest.mark.parametrize("role", list(Role))
def test_limit_and_forecast_follow_the_billing_permission(client_for, org, traffic, role):
    Budget.objects.create(org=org, amount_micros=10_000, hard_limit=True)
    user = MembershipFactory(org=org, role=role).user
    html = _page(client_for, user, org)
    assert ('data-testid="mtd"' in html) == role_can(role, Action.USAGE_VIEW)
    assert ('data-testid="forecast"' in html) == role_can(role, Action.BILLING_VIEW)
    assert ('data-testid="limit"' in html) == role_can(role, Action.BILLING_VIEW)


def test_outsider_gets_404(client_for, org, outsider):
    assert client_for(outsider).get(f"/o/{org.slug}/").status_code == 404


def test_no_deployments_offers_to_deploy_to_those_who_may(client_for, org, owner, viewer):
    create = f'href="/o/{org.slug}/deployments/new/">Deploy a model</a>'
    owner_html = _page(client_for, owner, org)
    assert "No deployments yet." in owner_html and create in owner_html
    assert 'data-testid="route-count">0 routes<' in owner_html
    viewer_html = _page(client_for, viewer, org)
    assert "No deployments yet." in viewer_html and create not in viewer_html


def test_quick_start_uses_the_site_url_and_a_route_name(client_for, settings, org, owner):
    settings.SITE_URL = "https://console.example.com"
    secret = api_key_create(org=org, actor=owner, name="ci", scopes=["inference"]).secret
    _deploy(org, owner, "llama", served_model_name="llama-3")
    route_create(
        org=org, actor=owner, name="chat", policy="single", config={"target": "deployment:llama"}
    )
    html = _page(client_for, owner, org)
    assert 'OpenAI(base_url="https://console.example.com/v1", api_key="sk-...")' in html
    assert 'model="chat",' in html
    assert "curl https://console.example.com/v1/chat/completions" in html
    assert '-d \'{"model": "chat", ' in html
    assert secret not in html


def test_quick_start_uses_a_chat_deployment_without_routes(client_for, org, owner):
    _deploy(org, owner, "embed", served_model_name="minilm", runner="pooling")
    _deploy(org, owner, "llama", served_model_name="llama-3")
    assert 'model="llama-3",' in _page(client_for, owner, org)


def test_quick_start_has_a_placeholder_without_models(client_for, org, owner):
    assert 'model="your-model",' in _page(client_for, owner, org)


def test_usage_since_counts_whole_hours_from_the_start_and_the_current_hour(org, priced):
    start = datetime(2026, 3, 10, 14, tzinfo=UTC)
    usage_record_batch(
        [
            usage(org.pk, start - timedelta(minutes=1)),
            usage(org.pk, start),
            usage(org.pk, start + timedelta(hours=24, minutes=30)),
        ]
    )
    usage_rollup()
    assert usage_totals_since(org=org, since=start).requests == 2
    # A start within an hour counts that whole hour: the rollups cannot split it.
    assert usage_totals_since(org=org, since=start + timedelta(minutes=30)).requests == 2


def _populate(org, owner, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    """A deployment with two replicas, a route, a key and usage in three hours, for each name."""
    now = timezone.now()
    for name in names:
        deployment = _deploy(org, owner, name, min_replicas=2, max_replicas=2)
        Replica.objects.create(deployment=deployment, state="ready")
        Replica.objects.create(deployment=deployment, state="starting")
        route_create(
            org=org,
            actor=owner,
            name=f"{name}-route",
            policy="single",
            config={"target": f"deployment:{name}"},
        )
        key = api_key_create(org=org, actor=owner, name=name, scopes=["inference"]).key
        usage_record_batch(
            [
                usage(org.pk, now - timedelta(hours=h), route=name, api_key_id=key.pk)
                for h in range(3)
            ]
        )
    usage_rollup()


def test_page_queries_do_not_grow_with_the_data(
    client_for, org, owner, priced, django_assert_max_num_queries
):
    org.max_replicas = org.max_gpus = 20
    org.save()
    Budget.objects.create(org=org, amount_micros=10_000_000, hard_limit=True)
    client = client_for(owner)
    _populate(org, owner, ["first"])
    with CaptureQueriesContext(connection) as few:
        assert client.get(f"/o/{org.slug}/").status_code == 200

    _populate(org, owner, [f"more-{n}" for n in range(5)])
    with django_assert_max_num_queries(MAX_QUERIES) as many:
        html = client.get(f"/o/{org.slug}/").content.decode()
    assert html.count("<tr data-deployment=") == 6
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]


def test_refused_requests_are_counted_beside_the_traffic_and_link_to_the_log(
    client_for, org, owner
):
    from console.services.keys import api_key_create
    from inference.services.refusals import refusals_add

    key = api_key_create(org=org, actor=owner, name="app", scopes=["inference"]).key
    now = int(timezone.now().timestamp()) // 60 * 60
    old = now - 3 * 24 * 3600  # outside the last 24 hours
    refusals_add(
        {
            (org.id, key.id, now, 429, "rate_limit_exceeded"): 12,
            (org.id, key.id, now, 401, "revoked_api_key"): 3,
            (org.id, key.id, old, 429, "rate_limit_exceeded"): 100,
        }
    )
    html = _page(client_for, owner, org)
    assert f'<a href="/o/{org.slug}/requests/" data-testid="traffic-refused">15 refused</a>' in html


def test_the_refused_count_is_what_the_requests_page_it_links_to_shows(client_for, org, owner):
    import time_machine

    from inference.models import RefusalCount

    key = api_key_create(org=org, actor=owner, name="app", scopes=["inference"]).key
    # 24 hours and 20 minutes before the pages are seen: in the 24 whole hours before the
    # current one, which the traffic card counts.
    RefusalCount.objects.create(
        org=org,
        api_key=key,
        minute=datetime(2026, 6, 14, 12, 30, tzinfo=UTC),
        status_code=429,
        error_code="rate_limit_exceeded",
        count=7,
    )
    browser = client_for(owner)
    with time_machine.travel(datetime(2026, 6, 15, 12, 50, tzinfo=UTC), tick=False):
        overview = browser.get(f"/o/{org.slug}/")
        requests = browser.get(f"/o/{org.slug}/requests/")
    assert overview.context["refused"] == requests.context["refusals"].total == 7
