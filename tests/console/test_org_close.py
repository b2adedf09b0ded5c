"""Closing an organisation: an owner ends it for good; everything that acts stops at once, the
records stay, and a refusal changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.ledger import usage_record_batch
from billing.models import UsageRecord
from console.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Organisation,
    WebhookEndpoint,
)
from console.permissions import Role
from console.services.closing import org_close
from console.services.keys import api_key_create
from console.services.mail import mail_unsent
from console.services.members import invitation_create
from inference.models import Deployment, ExternalEndpoint, Route
from tests.billing.factories import usage
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def furnished(org, owner, make_member):  # type: ignore[no-untyped-def]
    """An org with a key, a deployment, a route, an external endpoint, a pending invitation,
    a second member and a usage record."""
    developer = make_member(Role.DEVELOPER).user
    key = api_key_create(org=org, actor=owner, name="prod", scopes=["inference"]).key
    deployment = Deployment.objects.create(
        org=org, name="tiny", served_model_name="tiny", source="local", model="/models/tiny"
    )
    Route.objects.create(
        org=org, name="chat", policy="single", config={"target": "deployment:tiny"}
    )
    ExternalEndpoint.objects.create(
        org=org,
        name="big",
        base_url="https://api.example.com/v1",
        model="big",
        api_key_encrypted="x",
    )
    invitation_create(org=org, actor=owner, email="later@example.com", role=Role.VIEWER)
    WebhookEndpoint.objects.create(org=org, url="https://example.com/h", secret_encrypted="x")
    usage_record_batch([usage(org.pk, timezone.now(), request_id="req-kept")])
    return {"developer": developer, "key": key, "deployment": deployment}


def _close(client, org, **data):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("org_close", args=[org.slug]),
        {"confirm": org.slug, "password": PASSWORD, **data},
    )


def test_an_owner_closes_the_org_and_everything_that_acts_stops(
    org, owner, furnished, client_for, mailoutbox, django_capture_on_commit_callbacks
):
    client = client_for(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = _close(client, org)
    assert response.status_code == 302 and response["Location"] == reverse("home")
    org.refresh_from_db()
    assert org.closed_at is not None
    assert not ApiKey.objects.filter(org=org, revoked_at=None).exists()
    furnished["deployment"].refresh_from_db()
    assert furnished["deployment"].deleted_at is not None
    assert not Route.objects.filter(org=org).exists()
    assert not ExternalEndpoint.objects.filter(org=org).exists()
    assert not Membership.objects.filter(org=org).exists()
    assert not Invitation.objects.filter(org=org, revoked_at=None).exists()
    assert not WebhookEndpoint.objects.filter(org=org, disabled_at=None).exists()
    # The records stay: usage for the invoice, the audit log for staff.
    assert UsageRecord.objects.filter(org=org, request_id="req-kept").exists()
    event = AuditEvent.objects.get(org=org, action="org.closed")
    assert event.actor == owner
    assert event.data["keys_revoked"] == 1 and event.data["deployments_deleted"] == 1
    assert {m["email"] for m in event.data["members"]} == {
        owner.email,
        furnished["developer"].email,
    }
    # Each member is told; nothing in the mail is a secret.
    [mail] = [m for m in mailoutbox if "was closed" in m.subject]
    assert set(mail.to) == {owner.email, furnished["developer"].email}
    assert owner.email in mail.body
    # The org is gone from its members' consoles: not found, like any org one is not in.
    assert client.get(reverse("org_overview", args=[org.slug])).status_code == 404
    developer = client_for(furnished["developer"])
    assert developer.get(reverse("org_overview", args=[org.slug])).status_code == 404
    assert developer.get(f"/api/orgs/{org.slug}/").status_code == 404
    # The owner can start again with a new organisation.
    assert client.get(reverse("home"))["Location"] == reverse("org_create")


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"confirm": "acme-typo"}, "confirm", "Type the organisation's slug, acme, to confirm."),
        ({"password": "wrong"}, "password", "Your current password was entered incorrectly."),
        ({"confirm": ""}, "confirm", "This field is required."),
    ],
)
def test_a_wrong_slug_or_password_changes_nothing(
    org, owner, furnished, client_for, data, field, message
):
    response = _close(client_for(owner), org, **data)
    assert response.status_code == 200
    assert response.context["close_form"].errors[field] == [message]
    org.refresh_from_db()
    assert org.closed_at is None
    assert ApiKey.objects.filter(org=org, revoked_at=None).count() == 1
    assert Membership.objects.filter(org=org).count() == 2
    assert Route.objects.filter(org=org).exists()
    assert not AuditEvent.objects.filter(org=org, action="org.closed").exists()


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DEVELOPER, Role.VIEWER])
def test_only_owners_may_close(org, owner, make_member, client_for, role):
    user = make_member(role).user
    client = client_for(user)
    response = _close(client, org)
    assert response.status_code == 403
    org.refresh_from_db()
    assert org.closed_at is None
    # The settings page offers closing to owners only.
    page = client.get(reverse("org_settings", args=[org.slug])).content.decode()
    assert "Close the organisation" not in page
    owner_page = client_for(owner).get(reverse("org_settings", args=[org.slug])).content.decode()
    assert "Close the organisation" in owner_page


def test_an_owner_whose_address_is_unconfirmed_cannot_close(org, owner, client_for):
    type(owner).objects.filter(pk=owner.pk).update(email_verified_at=None)
    response = _close(client_for(owner), org)
    assert response.status_code == 403
    assert b"Confirm your email address" in response.content
    org.refresh_from_db()
    assert org.closed_at is None


def test_outsiders_get_404_and_change_nothing(org, owner, outsider, client_for):
    assert _close(client_for(outsider), org).status_code == 404
    org.refresh_from_db()
    assert org.closed_at is None


def test_a_closed_org_cannot_be_reached_even_if_a_membership_reappears(org, owner, client_for):
    Organisation.objects.filter(pk=org.pk).update(closed_at=timezone.now() - timedelta(days=1))
    client = client_for(owner)
    assert client.get(reverse("org_overview", args=[org.slug])).status_code == 404
    assert client.get(f"/api/orgs/{org.slug}/").status_code == 404


def test_an_org_is_closed_when_its_members_cannot_be_emailed(
    org, owner, mail_down, django_capture_on_commit_callbacks
):
    with mail_unsent() as unsent, django_capture_on_commit_callbacks(execute=True):
        org_close(org=org, actor=owner, confirm=org.slug)
    assert unsent == ["organisation closed"]
    org.refresh_from_db()
    assert org.closed_at is not None
