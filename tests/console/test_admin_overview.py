"""The admin's index page: a platform overview for staff, above the list of models."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.ledger import usage_record_batch
from billing.models import MeterEvent, UsageRecord
from billing.money import format_dollars
from billing.rollups import usage_rollup
from console.models import Organisation, User, WebhookDelivery
from console.services.keys import api_key_create
from console.services.webhooks import webhook_create
from inference.models import Deployment
from inference.services.deployments import deployment_create
from inference.services.refusals import refusals_add
from tests.billing.factories import usage
from tests.factories import OrgFactory, UserFactory


@pytest.fixture
def staff_client(client, db):  # type: ignore[no-untyped-def]
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def _meter_event(org: Organisation, seq: int, status: str) -> MeterEvent:
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    return MeterEvent.objects.create(
        org=org,
        meter_key="tokens",
        hour=hour,
        seq=seq,
        value=10,
        identifier=f"{org.slug}-{seq}",
        timestamp=hour,
        stripe_customer_id="cus_1",
        status=status,
    )


def test_the_index_shows_what_needs_staff_and_every_link_works(mid_month, staff_client, org, owner):
    now = timezone.now()
    OrgFactory(name="Frozen", slug="frozen", suspended_at=now, suspended_reason="unpaid")
    OrgFactory(name="Gone", slug="gone", closed_at=now)
    events = [usage(org.id, now - timedelta(hours=2)) for _ in range(3)]
    events.append(usage(org.id, now - timedelta(hours=2), status_code=502))
    usage_record_batch(events)
    usage_rollup(now=now)
    broken = deployment_create(
        org=org, actor=owner, name="broken", source="huggingface", model="acme/broken"
    )
    Deployment.objects.filter(pk=broken.pk).update(
        state="failed", state_reason="the engine exited: CUDA out of memory"
    )
    key = api_key_create(org=org, actor=owner, name="noisy", scopes=["inference"]).key
    refusals_add(
        {(org.id, key.id, int(now.timestamp()) // 60 * 60, 429, "rate_limit_exceeded"): 40}
    )
    _meter_event(org, 0, "pending")
    _meter_event(org, 1, "failed")
    webhook, _ = webhook_create(org=org, actor=owner, url="https://example.com/hooks")
    WebhookDelivery.objects.create(
        endpoint=webhook, event_type="key.created", payload={}, status="failed", finished_at=now
    )

    page = staff_client.get("/admin/")
    assert page.status_code == 200
    overview = page.context["overview"]
    assert overview["orgs"] == {"open": 2, "suspended": 1, "closed": 1, "new_7d": 3}
    usage_now = overview["usage"]
    assert (usage_now.requests_24h, usage_now.errors_24h) == (4, 1)
    cost = sum(UsageRecord.objects.values_list("cost_micros", flat=True))
    assert cost > 0
    assert usage_now.cost_24h_micros == cost
    assert usage_now.month_micros >= cost
    assert [o.slug for o, _ in usage_now.top_orgs] == ["acme"]
    assert (usage_now.meter_events_pending, usage_now.meter_events_failed) == (1, 1)
    assert [d.name for d in overview["deployments"].failed] == ["broken"]
    assert overview["refusals"].total == 40
    assert overview["webhooks"]["failed_24h"] == 1

    text = page.content.decode()
    assert 'data-testid="platform-overview"' in text
    assert "CUDA out of memory" in text
    assert format_dollars(cost) in text
    assert "rate_limit_exceeded x 40" in text
    assert "1 failed: they need staff" in text
    # The model list is still there, under the overview.
    assert 'class="app-console module' in text or "app-console" in text
    # Every link the overview offers opens a working admin page (a filter the change list does
    # not know would redirect to ?e=1).
    block = text.split('data-testid="platform-overview"', 1)[1].split("</table>", 1)[0]
    links = [href.replace("&amp;", "&") for href in re.findall(r'href="([^"]+)"', block)]
    assert len(links) >= 6
    for link in links:
        response = staff_client.get(link)
        assert response.status_code == 200, link
        assert "e=1" not in response.get("Location", ""), link
    filtered = staff_client.get(next(link for link in links if "suspended_at" in link))
    assert [o.slug for o in filtered.context["cl"].result_list] == ["frozen"]


def test_the_index_costs_the_same_queries_however_much_there_is(staff_client, owner):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get("/admin/").status_code == 200
        return len(queries)

    def add(i: int) -> None:
        other = OrgFactory(name=f"Org {i}", slug=f"org-{i}")
        usage_record_batch([usage(other.id, timezone.now())])
        deployment = deployment_create(
            org=other, actor=None, name=f"d{i}", source="huggingface", model="a/b"
        )
        Deployment.objects.filter(pk=deployment.pk).update(state="failed")

    add(0)
    few = count()
    for i in range(1, 6):
        add(i)
    assert count() == few


def test_staff_see_only_the_lines_their_permissions_cover(client, org, owner):
    usage_record_batch([usage(org.id, timezone.now())])
    deployment_create(org=org, actor=owner, name="d", source="huggingface", model="a/b")
    clerk = UserFactory(is_staff=True)
    client.force_login(clerk)
    page = client.get("/admin/")
    assert page.status_code == 200
    assert 'data-testid="platform-overview"' not in page.content.decode()
    assert page.context["overview"] == {"sections": set()}

    clerk.user_permissions.add(Permission.objects.get(codename="view_deployment"))
    clerk = User.objects.get(pk=clerk.pk)  # permissions are cached on the instance
    client.force_login(clerk)
    text = client.get("/admin/").content.decode()
    overview = text.split('data-testid="platform-overview"', 1)[1].split("</table>", 1)[0]
    assert ">Deployments<" in overview
    for hidden in ("Organisations", "Last 24 hours", "This month", "Refused", "Stripe", "Webhook"):
        assert hidden not in overview, hidden

    clerk.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    client.force_login(User.objects.get(pk=clerk.pk))
    text = client.get("/admin/").content.decode()
    overview = text.split('data-testid="platform-overview"', 1)[1].split("</table>", 1)[0]
    assert "This month" in overview and "acme" in overview
    # The largest org is named, but not linked to a page this member may not open.
    assert "console/organisation/" not in overview


def test_only_staff_see_it(client_for, owner):
    response = client_for(owner).get("/admin/")
    assert response.status_code == 302
    assert "platform-overview" not in response.content.decode()
