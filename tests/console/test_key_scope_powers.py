"""A key's secret carries its scopes' powers, so only someone who has those powers may create
the key or roll it (which hands them the new secret): a developer cannot give themselves the
audit log, invitations or webhooks through a `read` or `manage` key."""

from __future__ import annotations

from html import unescape

import pytest

from console.models import ApiKey, AuditEvent
from console.services.keys import api_key_create

DEVELOPER_CANNOT = (
    "Your role (developer) cannot create a key with the '{scope}' scope: it allows {allows}, "
    "which you may not do. Ask an owner or admin."
)
ALLOWS = {
    "read": "audit.view",
    "manage": "audit.view, billing.view, members.invite, webhooks.manage",
}


@pytest.mark.parametrize("scope", ["read", "manage"])
def test_a_developer_cannot_create_a_key_that_reaches_further_than_their_role(
    client_for, org, member, scope
):
    client = client_for(member)
    api = client.post(
        f"/api/orgs/{org.slug}/keys/",
        {"name": "mine", "scopes": [scope]},
        content_type="application/json",
    )
    message = DEVELOPER_CANNOT.format(scope=scope, allows=ALLOWS[scope])
    assert api.status_code == 400
    assert api.json()["error"]["fields"] == {"scopes": [message]}
    page = client.post(f"/o/{org.slug}/keys/new/", {"name": "mine", "scopes": [scope]})
    assert page.status_code == 400 and message in unescape(page.content.decode())
    assert not ApiKey.objects.exists()
    assert not AuditEvent.objects.filter(action="key.created").exists()
    # What their role does allow still works.
    ok = client.post(
        f"/api/orgs/{org.slug}/keys/",
        {"name": "svc", "scopes": ["inference"]},
        content_type="application/json",
    )
    assert ok.status_code == 201


def test_the_key_form_tells_a_developer_what_they_may_create(client_for, org, owner, member):
    hint = "Your role may create inference keys"
    assert hint in client_for(member).get(f"/o/{org.slug}/keys/").content.decode()
    assert hint not in client_for(owner).get(f"/o/{org.slug}/keys/").content.decode()


def test_owners_admins_and_manage_keys_create_what_they_hold(client, org, owner):
    created = api_key_create(org=org, actor=owner, name="m", scopes=["manage"])
    by_key = client.post(
        f"/api/orgs/{org.slug}/keys/",
        {"name": "r", "scopes": ["read", "manage"]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {created.secret}",
    )
    assert by_key.status_code == 201, by_key.content


def test_a_read_key_never_creates_and_a_developer_cannot_roll_a_manage_key(
    client_for, org, owner, member
):
    manage = api_key_create(org=org, actor=owner, name="m", scopes=["manage"])
    before = ApiKey.objects.get(pk=manage.key.pk).digest
    client = client_for(member)
    api = client.post(
        f"/api/orgs/{org.slug}/keys/{manage.key.pk}/roll/",
        {"grace_hours": 0},
        content_type="application/json",
    )
    assert api.status_code == 400
    assert api.json()["error"]["message"] == (
        "Your role (developer) cannot roll a key with the 'manage' scope: it allows "
        f"{ALLOWS['manage']}, which you may not do. Ask an owner or admin."
    )
    page = client.post(f"/o/{org.slug}/keys/{manage.key.pk}/roll/", {"grace_hours": "0"})
    assert page.status_code in (200, 302)
    assert ApiKey.objects.get(pk=manage.key.pk).digest == before
    assert not AuditEvent.objects.filter(action="key.rolled").exists()
    # An inference key the developer may roll.
    inference = api_key_create(org=org, actor=owner, name="i", scopes=["inference"])
    rolled = client.post(
        f"/api/orgs/{org.slug}/keys/{inference.key.pk}/roll/",
        {"grace_hours": 0},
        content_type="application/json",
    )
    assert rolled.status_code == 200, rolled.content
