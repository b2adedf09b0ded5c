"""New accounts confirm their email address before they change anything in an organisation."""

from __future__ import annotations

import importlib
import re

import pytest
from django.apps import apps as django_apps
from django.core import signing
from django.core.cache import cache
from django.test import Client

from console.models import ApiKey, Membership, Organisation, User
from console.permissions import Role
from console.services.members import invitation_create
from console.services.users import email_verification_token
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

LINK = re.compile(r"http://[^\s]+/account/confirm/[^\s]+/")


@pytest.fixture(autouse=True)
def _fresh_cache():  # type: ignore[no-untyped-def]
    cache.clear()  # the resend throttle lives in the cache
    yield
    cache.clear()


def _signup(client: Client, email: str = "new@example.com", next_url: str = "") -> User:
    url = "/signup/" + (f"?next={next_url}" if next_url else "")
    response = client.post(
        url, {"email": email, "password1": "x-Long-pass-1234", "password2": "x-Long-pass-1234"}
    )
    assert response.status_code == 302, response.content
    return User.objects.get(email=email)


def _new_org(client: Client) -> Organisation:
    response = client.post("/orgs/new/", {"name": "Fresh", "slug": "fresh"})
    assert response.status_code == 302
    return Organisation.objects.get(slug="fresh")


def test_a_new_account_can_look_around_but_change_nothing_until_confirmed(client, mailoutbox):
    user = _signup(client)
    assert user.email_verified_at is None
    [email] = mailoutbox
    assert email.to == ["new@example.com"]
    link = LINK.search(email.body)
    assert link is not None

    org = _new_org(client)  # creating one's own organisation is allowed
    overview = client.get("/o/fresh/")
    assert overview.status_code == 200
    assert 'data-testid="confirm-email"' in overview.content.decode()
    assert client.get("/o/fresh/keys/").status_code == 200

    refused = client.post("/o/fresh/keys/new/", {"name": "app", "scopes": ["inference"]})
    assert refused.status_code == 403
    assert "Confirm your email address first" in refused.content.decode()
    api = client.post(
        "/api/orgs/fresh/keys/", {"name": "app", "scopes": ["inference"]}, "application/json"
    )
    assert api.status_code == 403
    assert "Confirm your email address first" in api.json()["error"]["message"]
    assert not ApiKey.objects.filter(org=org).exists()
    renamed = client.post("/o/fresh/settings/", {"name": "Renamed"})
    assert renamed.status_code == 403
    org.refresh_from_db()
    assert org.name == "Fresh"

    opened = client.get(link.group(0))
    assert opened.status_code == 200
    assert "Email address confirmed" in opened.content.decode()
    user.refresh_from_db()
    confirmed_at = user.email_verified_at
    assert confirmed_at is not None
    # Opening the link again is harmless and keeps the first time.
    assert client.get(link.group(0)).status_code == 200
    user.refresh_from_db()
    assert user.email_verified_at == confirmed_at

    created = client.post("/o/fresh/keys/new/", {"name": "app", "scopes": ["inference"]})
    assert created.status_code in (200, 302)
    assert ApiKey.objects.filter(org=org, name="app").exists()
    assert 'data-testid="confirm-email"' not in client.get("/o/fresh/").content.decode()


def test_links_that_are_not_valid_change_nothing(client, monkeypatch):
    user = _signup(client)
    token = email_verification_token(user)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    response = client.get(f"/account/confirm/{tampered}/")
    assert response.status_code == 400
    assert "This link is not valid." in response.content.decode()

    # A link sent to an address the account no longer has.
    User.objects.filter(pk=user.pk).update(email="changed@example.com")
    assert client.get(f"/account/confirm/{token}/").status_code == 400

    # An expired link: four days later.
    User.objects.filter(pk=user.pk).update(email="new@example.com")
    user.refresh_from_db()
    token = email_verification_token(user)
    real_time = signing.time.time
    monkeypatch.setattr(signing.time, "time", lambda: real_time() + 4 * 86400)
    expired = client.get(f"/account/confirm/{token}/")
    assert expired.status_code == 400
    assert "expired" in expired.content.decode()
    user.refresh_from_db()
    assert user.email_verified_at is None


def test_the_link_can_be_sent_again_but_not_more_than_once_a_minute(client, mailoutbox):
    _signup(client)
    assert len(mailoutbox) == 1
    # The first signup email counts: a resend right away is refused.
    throttled = client.post("/account/confirm/send/", follow=True)
    assert "less than a minute ago" in throttled.content.decode()
    assert len(mailoutbox) == 1
    cache.clear()  # a minute later
    sent = client.post("/account/confirm/send/", {"next": "/account/"}, follow=True)
    assert "We sent a new link" in sent.content.decode()
    assert len(mailoutbox) == 2
    assert LINK.search(mailoutbox[1].body)


def test_confirmed_people_get_no_email(client, mailoutbox):
    user = UserFactory()
    client.force_login(user)
    response = client.post("/account/confirm/send/", follow=True)
    assert "already confirmed" in response.content.decode()
    assert mailoutbox == []
    assert 'data-testid="email-confirmed"' in client.get("/account/").content.decode()


def test_accepting_an_invitation_confirms_the_address(client, org, owner, mailoutbox):
    created = invitation_create(org=org, actor=owner, email="invited@example.com", role=Role.VIEWER)
    mailoutbox.clear()
    invitation_path = f"/invitations/{created.token}/"
    user = _signup(client, "invited@example.com", next_url=invitation_path)
    assert mailoutbox == []  # the invitation link does the confirming
    assert client.post(invitation_path).status_code == 302
    assert Membership.objects.filter(org=org, user=user).exists()
    user.refresh_from_db()
    assert user.email_verified_at is not None


def test_an_invitee_signing_up_with_another_address_gets_that_address_confirmed(
    client, org, owner, mailoutbox
):
    created = invitation_create(org=org, actor=owner, email="mate@example.com", role=Role.VIEWER)
    mailoutbox.clear()
    invitation_path = f"/invitations/{created.token}/"
    form = client.get(f"/signup/?next={invitation_path}").context["form"]
    assert form["email"].value() == "mate@example.com"  # the invited address, to start from
    _signup(client, "mate.personal@example.com", next_url=invitation_path)
    # The banner says a link was sent there: one was.
    assert [m.to for m in mailoutbox] == [["mate.personal@example.com"]]


def test_people_who_signed_up_before_confirmation_existed_keep_their_access(db):
    before = UserFactory(email_verified_at=None)
    migration = importlib.import_module("console.migrations.0003_user_email_verified_at")
    migration.existing_users_verified(django_apps, None)
    before.refresh_from_db()
    assert before.email_verified_at == before.date_joined


def test_the_403_page_says_why(client, org, make_member):
    viewer = make_member(Role.VIEWER).user
    client.force_login(viewer)
    response = client.post("/o/acme/keys/new/", {"name": "x", "scopes": ["inference"]})
    assert response.status_code == 403
    assert "Your role (viewer) cannot do this." in response.content.decode()


def test_staff_can_log_in_with_the_password(client):
    user = UserFactory(email_verified_at=None)
    assert client.login(email=user.email, password=PASSWORD)
    assert client.get("/account/").status_code == 200


def test_pages_do_not_offer_changes_to_unconfirmed_people(client, org):
    owner = UserFactory(email_verified_at=None)
    Membership.objects.create(org=org, user=owner, role=Role.OWNER)
    client.force_login(owner)
    keys = client.get("/o/acme/keys/")
    assert keys.context["can_manage"] is False
    assert "Create key" not in keys.content.decode()
    members = client.get("/o/acme/members/")
    assert members.context["can_invite"] is False
    settings_page = client.get("/o/acme/settings/").content.decode()
    assert "Confirm your email address to rename the organisation." in settings_page
    # Confirmed, the same owner is offered them.
    User.objects.filter(pk=owner.pk).update(email_verified_at=owner.date_joined)
    assert client.get("/o/acme/keys/").context["can_manage"] is True


def test_one_organisation_until_the_address_is_confirmed(client):
    user = _signup(client)
    _new_org(client)
    second = client.post("/orgs/new/", {"name": "Second", "slug": "second"})
    assert second.status_code == 200
    assert "Confirm your email address to create another organisation" in second.content.decode()
    api = client.post("/api/orgs/", {"name": "Third", "slug": "third"}, "application/json")
    assert api.status_code == 400
    assert "Confirm your email address" in api.json()["error"]["message"]
    assert list(
        Organisation.objects.filter(memberships__user=user).values_list("slug", flat=True)
    ) == ["fresh"]
    User.objects.filter(pk=user.pk).update(email_verified_at=user.date_joined)
    assert client.post("/orgs/new/", {"name": "Second", "slug": "second"}).status_code == 302


def test_a_confirmation_email_that_cannot_be_sent_is_said_and_can_be_sent_again(
    client, settings, mailoutbox
):
    settings.EMAIL_BACKEND = "tests.mail_down.DownBackend"
    user = _signup(client)  # the account stands
    assert User.objects.filter(pk=user.pk).exists()
    page = client.get("/account/").content.decode()
    assert "could not send the confirmation email" in page
    failed = client.post("/account/confirm/send/", follow=True).content.decode()
    assert "could not be sent just now" in failed and "We sent a new link" not in failed
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # A failed send does not count against the once-a-minute limit.
    sent = client.post("/account/confirm/send/", follow=True).content.decode()
    assert "We sent a new link" in sent and len(mailoutbox) == 1
