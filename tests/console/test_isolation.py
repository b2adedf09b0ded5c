"""An outsider gets 404 on every org URL, by any method, and changes nothing.

Patterns are discovered from the URL configuration. A new object id in a URL fails this test until
the id is taught to ``object_ids`` below, so no page slips past unchecked.
"""

from __future__ import annotations

import hashlib

import pytest
from django.apps import apps
from django.test import Client
from django.utils import timezone

from billing.ledger import usage_record_batch
from console.models import ApiKey, Invitation, WebhookDelivery
from console.permissions import Role
from console.services.keys import api_key_create
from console.services.members import invitation_create
from console.services.webhooks import webhook_create
from inference.services.deployments import deployment_create
from inference.services.routes import external_endpoint_create, route_create
from tests.billing.factories import usage
from tests.console.urlwalk import org_patterns
from tests.factories import MembershipFactory

METHODS = ["get", "post", "patch", "delete"]


def object_ids(org, owner) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """One object of each kind in ``org``, by the URL parameter that names it."""
    key = api_key_create(org=org, actor=owner, name="victim", scopes=["inference"]).key
    invitation = invitation_create(org=org, actor=owner, email="inv@example.com", role=Role.VIEWER)
    member = MembershipFactory(org=org, role=Role.DEVELOPER)
    endpoint = external_endpoint_create(
        org=org, actor=owner, name="victim", base_url="https://example.com/v1", model="m"
    )
    route = route_create(
        org=org, actor=owner, name="victim", policy="single", config={"target": "external:victim"}
    )
    deployment = deployment_create(
        org=org,
        actor=owner,
        name="victim",
        served_model_name="victim-llm",  # the route has the name "victim"
        source="huggingface",
        model="acme/victim",
    )
    served = usage(org.id, timezone.now(), api_key_id=key.pk, deployment_id=deployment.pk)
    usage_record_batch([served])
    webhook, _ = webhook_create(org=org, actor=owner, url="https://example.com/hooks")
    delivery = WebhookDelivery.objects.create(
        endpoint=webhook, event_type="key.created", payload={}, status="failed"
    )
    return {
        "org_slug": org.slug,
        "key_id": str(key.pk),
        "member_id": str(member.pk),
        "invitation_id": str(invitation.invitation.pk),
        "route_id": str(route.pk),
        "endpoint_id": str(endpoint.pk),
        "deployment_id": str(deployment.pk),
        "request_id": served.request_id,
        "webhook_id": str(webhook.pk),
        "delivery_id": str(delivery.pk),
    }


def fingerprint() -> str:
    """Every row of every table, except logins and usage timestamps the caller's own key gets."""
    digest = hashlib.sha256()
    for model in apps.get_models():
        if model._meta.label in {"sessions.Session", "console.User"}:
            continue
        for row in model.objects.order_by("pk").values():
            row.pop("last_used_at", None)
            digest.update(repr(sorted(row.items())).encode())
    return digest.hexdigest()


def test_every_org_url_is_discovered():
    names = {p.name for p in org_patterns()}
    assert {"key_revoke", "member_role", "api_key_revoke", "api_member"} <= names


@pytest.mark.parametrize("pattern", org_patterns(), ids=lambda p: p.name or p.route)
def test_outsider_gets_404_and_changes_nothing(pattern, org, owner, outsider):
    ids = object_ids(org, owner)
    missing = [name for name in pattern.params if name not in ids]
    assert not missing, f"teach object_ids() the URL parameter(s) {missing} of {pattern.route}"
    url = pattern.build(ids)

    by_session = Client()
    by_session.force_login(outsider)
    other_org = outsider.memberships.get().org
    outsider_key = api_key_create(
        org=other_org, actor=outsider, name="mine", scopes=["manage", "inference"]
    ).secret
    by_key = Client(HTTP_AUTHORIZATION=f"Bearer {outsider_key}")

    before = fingerprint()
    for client in (by_session, by_key):
        for method in METHODS:
            response = getattr(client, method)(url, content_type="application/json", data={})
            if client is by_key and not url.startswith("/api/"):
                # Console pages ignore API keys: an anonymous visitor is sent to log in.
                assert response.status_code == 302, (method, url)
                continue
            assert response.status_code == 404, (method, url, response.status_code)
    assert fingerprint() == before
    assert ApiKey.objects.filter(org=org, revoked_at__isnull=False).count() == 0
    assert Invitation.objects.filter(org=org, revoked_at__isnull=False).count() == 0
