"""Deleting one's own account: the person leaves every organisation and can no longer sign in;
the organisations keep what the person made there and an audit trail without the address."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.urls import reverse

from console import totp
from console.models import ApiKey, AuditEvent, Membership, RecoveryCode, User
from console.permissions import Role
from console.services.keys import api_key_create
from console.services.mail import mail_unsent
from console.services.two_factor import two_factor_enable
from console.services.users import account_delete, email_change_request
from tests.factories import PASSWORD, MembershipFactory

pytestmark = pytest.mark.django_db


def _delete(client, user, **data):  # type: ignore[no-untyped-def]
    fields = {"confirm": user.email, "password": PASSWORD, **data}
    return client.post(reverse("account_delete"), {f"delete-{k}": v for k, v in fields.items()})


def test_a_member_deletes_their_account(
    org, owner, member, client_for, mailoutbox, django_capture_on_commit_callbacks
):
    key = api_key_create(org=org, actor=member, name="made-by-member", scopes=["inference"]).key
    old_email = member.email
    client = client_for(member)
    with django_capture_on_commit_callbacks(execute=True):
        response = _delete(client, member)
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert SESSION_KEY not in client.session
    member.refresh_from_db()
    assert not member.is_active and not member.has_usable_password()
    assert member.email.endswith("@deleted.invalid") and member.is_deleted
    assert not Membership.objects.filter(user=member).exists()
    # The org keeps the key the person made, and the audit log says who left without the
    # address: it reads "deleted user".
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    event = AuditEvent.objects.get(org=org, action="member.removed")
    assert event.data["reason"] == "account deleted" and event.actor_label == "deleted user"
    assert old_email not in str(event.data) + event.target_repr
    # Signing in with the old address fails; the address is free to sign up again.
    fresh = Client()
    assert not fresh.login(email=old_email, password=PASSWORD)
    assert not User.objects.filter(email=old_email).exists()
    # The person is told at the old address.
    [mail] = [m for m in mailoutbox if m.subject == "Your account was deleted"]
    assert mail.to == [old_email]


def test_the_only_owner_of_an_org_is_refused_and_nothing_changes(org, owner, member, client_for):
    response = _delete(client_for(owner), owner)
    assert response.status_code == 400
    errors = response.context["delete_form"].non_field_errors()
    assert errors == [
        "You are the only owner of Acme. Make another member an owner, or close the "
        "organisation (its Settings page), first."
    ]
    owner.refresh_from_db()
    assert owner.is_active and owner.check_password(PASSWORD)
    assert Membership.objects.filter(user=owner, org=org).exists()
    assert not AuditEvent.objects.filter(action="member.removed").exists()


def test_an_owner_with_a_second_owner_may_delete(org, owner, client_for):
    MembershipFactory(org=org, role=Role.OWNER)
    assert _delete(client_for(owner), owner).status_code == 302
    owner.refresh_from_db()
    assert owner.is_deleted
    assert Membership.objects.filter(org=org, role=Role.OWNER).count() == 1


def test_an_owner_of_a_closed_org_is_not_held_back_by_it(org, owner, client_for):
    from console.services.closing import org_close

    org_close(org=org, actor=owner, confirm=org.slug)
    assert _delete(client_for(owner), owner).status_code == 302


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"confirm": "someone@example.com"}, "confirm", "Type {email} to confirm."),
        ({"password": "wrong"}, "password", "Your current password was entered incorrectly."),
    ],
)
def test_a_wrong_address_or_password_changes_nothing(org, member, client_for, data, field, message):
    response = _delete(client_for(member), member, **data)
    assert response.status_code == 400
    assert response.context["delete_form"].errors[field] == [message.format(email=member.email)]
    member.refresh_from_db()
    assert member.is_active and not member.is_deleted
    assert Membership.objects.filter(user=member).exists()


def test_staff_accounts_are_not_deleted_from_the_account_page(org, member, client_for):
    User.objects.filter(pk=member.pk).update(is_staff=True)
    member.refresh_from_db()
    response = _delete(client_for(member), member)
    assert response.status_code == 400
    member.refresh_from_db()
    assert member.is_active


def test_the_account_page_offers_it_and_get_is_not_allowed(member, client_for):
    client = client_for(member)
    assert "Delete my account" in client.get(reverse("account")).content.decode()
    assert client.get(reverse("account_delete")).status_code == 405


def test_an_account_is_deleted_when_the_notice_cannot_be_sent(
    member, mail_down, django_capture_on_commit_callbacks
):
    with mail_unsent() as unsent, django_capture_on_commit_callbacks(execute=True):
        account_delete(user=member)
    assert unsent == ["account deleted"]
    member.refresh_from_db()
    assert member.is_deleted


def test_an_address_change_waiting_for_its_link_is_not_kept(member, client_for, mailoutbox):
    """The anonymised row keeps no real address: neither the one the person had nor the one they
    asked to move to."""
    old_email = member.email
    email_change_request(user=member, new_email="next-home@example.com")
    [link] = re.findall(r"http://\S+(/account/email/confirm/\S+/)", mailoutbox[0].body)
    assert _delete(client_for(member), member).status_code == 302
    row = User.objects.filter(pk=member.pk).values().get()
    kept = " ".join(str(value) for value in row.values())
    assert "next-home@example.com" not in kept and old_email not in kept
    # The link sent there does not move the deleted account either.
    assert Client().get(link).status_code == 400
    assert not User.objects.filter(email="next-home@example.com").exists()


def test_the_second_factor_is_not_kept(member, client_for):
    """Nothing of the person's second factor stays on the anonymised row: neither the sealed
    secret nor the recovery codes' digests."""
    secret = totp.new_secret()
    codes = two_factor_enable(user=member, secret=secret, code=totp.code_at(secret, totp.step_at()))
    assert codes and RecoveryCode.objects.filter(user=member).exists()
    member.refresh_from_db()
    assert member.totp_secret_encrypted
    assert account_delete(user=member)
    member.refresh_from_db()
    assert member.totp_secret_encrypted == "" and member.totp_enabled_at is None
    assert member.totp_last_step == 0 and not member.has_two_factor
    assert not RecoveryCode.objects.filter(user=member).exists()
