from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.utils import timezone

from console.models import AuditEvent, Invitation, Membership
from console.permissions import Role
from console.services.mail import mail_unsent
from console.services.members import (
    invitation_accept,
    invitation_create,
    invitation_revoke,
    membership_change_role,
    membership_remove,
)
from console.services.users import account_delete
from tests.factories import MembershipFactory, OrgFactory, UserFactory


def _token_from_mail() -> str:
    body = mail.outbox[-1].body
    return body.split("/invitations/")[1].split("/")[0]


def test_invitation_is_emailed_and_accepted_once(org, owner, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        created = invitation_create(org=org, actor=owner, email="New@Example.com", role=Role.VIEWER)
    assert mail.outbox[-1].to == ["new@example.com"]
    token = _token_from_mail()
    assert token == created.token
    assert created.token not in Invitation.objects.get().token_digest
    user = UserFactory(email="new@example.com")
    membership = invitation_accept(token=token, user=user)
    assert membership.role == Role.VIEWER and membership.org == org
    with pytest.raises(ValidationError, match="already been used"):
        invitation_accept(token=token, user=user)
    assert AuditEvent.objects.filter(org=org, action="member.joined").count() == 1


def test_expired_invitation_is_refused(org, owner):
    created = invitation_create(org=org, actor=owner, email="late@example.com", role=Role.VIEWER)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    with pytest.raises(ValidationError, match="expired"):
        invitation_accept(token=created.token, user=UserFactory(email="late@example.com"))
    assert not Membership.objects.filter(user__email="late@example.com").exists()


def test_invitation_for_someone_else_is_refused(org, owner):
    created = invitation_create(org=org, actor=owner, email="a@example.com", role=Role.VIEWER)
    with pytest.raises(ValidationError, match=r"sent to a@example\.com"):
        invitation_accept(token=created.token, user=UserFactory(email="b@example.com"))


def test_revoked_and_superseded_invitations_do_not_work(org, owner):
    first = invitation_create(org=org, actor=owner, email="x@example.com", role=Role.VIEWER)
    second = invitation_create(org=org, actor=owner, email="x@example.com", role=Role.ADMIN)
    user = UserFactory(email="x@example.com")
    with pytest.raises(ValidationError):
        invitation_accept(token=first.token, user=user)
    invitation_revoke(invitation=second.invitation, actor=owner)
    with pytest.raises(ValidationError):
        invitation_accept(token=second.token, user=user)


def test_inviting_an_address_again_records_that_the_earlier_invitation_was_revoked(org, owner):
    first = invitation_create(org=org, actor=owner, email="x@example.com", role=Role.VIEWER)
    second = invitation_create(org=org, actor=owner, email="x@example.com", role=Role.ADMIN)
    first.invitation.refresh_from_db()
    assert first.invitation.revoked_at is not None
    [event] = AuditEvent.objects.filter(org=org, action="invitation.revoked")
    assert (event.target_id, event.actor) == (str(first.invitation.pk), owner)
    assert event.data == {"replaced_by": str(second.invitation.pk)}
    actions = AuditEvent.objects.filter(org=org).order_by("created_at", "id")
    assert list(actions.values_list("action", flat=True)) == [
        "member.invited",
        "invitation.revoked",
        "member.invited",
    ]


@pytest.mark.parametrize(
    ("email", "role", "field"),
    [
        ("not-an-email", Role.VIEWER, "email"),
        ("", Role.VIEWER, "email"),
        ("ok@example.com", "god", "role"),
    ],
)
def test_bad_invitation_input_changes_nothing(org, owner, email, role, field):
    with pytest.raises(ValidationError) as error:
        invitation_create(org=org, actor=owner, email=email, role=role)
    assert field in error.value.message_dict
    assert Invitation.objects.count() == 0


def test_inviting_an_existing_member_is_refused(org, owner, member):
    with pytest.raises(ValidationError, match="already a member"):
        invitation_create(org=org, actor=owner, email=member.email, role=Role.VIEWER)


def test_an_invitation_opened_by_someone_already_a_member_stays_unused(org, owner):
    """Possible after an address change: the invitation went to the address the member now has.
    It adds no member and changes no role, and says so rather than "You joined"."""
    created = invitation_create(org=org, actor=owner, email="later@example.com", role=Role.ADMIN)
    person = UserFactory(email="earlier@example.com")
    MembershipFactory(org=org, user=person, role=Role.VIEWER)
    person.email = "later@example.com"
    person.save(update_fields=["email"])
    with pytest.raises(ValidationError, match=r"already a member of .*, as viewer"):
        invitation_accept(token=created.token, user=person)
    created.invitation.refresh_from_db()
    assert created.invitation.accepted_at is None
    assert Membership.objects.get(org=org, user=person).role == Role.VIEWER
    assert not AuditEvent.objects.filter(org=org, action="member.joined").exists()
    client = Client()
    client.force_login(person)
    page = client.post(f"/invitations/{created.token}/", follow=True)
    assert "already a member" in page.content.decode()
    assert "You joined" not in page.content.decode()


def test_only_an_owner_invites_an_owner(org, make_member):
    admin = make_member(Role.ADMIN)
    with pytest.raises(PermissionDenied):
        invitation_create(org=org, actor=admin.user, email="o@example.com", role=Role.OWNER)


def test_last_owner_cannot_be_demoted_or_removed(org, owner):
    mine = Membership.objects.get(org=org, user=owner)
    with pytest.raises(ValidationError, match="last owner"):
        membership_change_role(membership=mine, actor=mine, role=Role.ADMIN)
    with pytest.raises(ValidationError, match="last owner"):
        membership_remove(membership=mine, actor=mine)
    mine.refresh_from_db()
    assert mine.role == Role.OWNER


def test_with_two_owners_one_can_step_down(org, owner, make_member):
    other = make_member(Role.OWNER)
    mine = Membership.objects.get(org=org, user=owner)
    membership_change_role(membership=mine, actor=mine, role=Role.DEVELOPER)
    mine.refresh_from_db()
    assert mine.role == Role.DEVELOPER
    assert AuditEvent.objects.filter(action="member.role_changed", actor=owner).exists()
    with pytest.raises(ValidationError):
        membership_remove(membership=other, actor=other)


def test_admin_cannot_touch_owners(org, owner, make_member):
    admin = make_member(Role.ADMIN)
    mine = Membership.objects.get(org=org, user=owner)
    with pytest.raises(PermissionDenied):
        membership_change_role(membership=mine, actor=admin, role=Role.VIEWER)
    with pytest.raises(PermissionDenied):
        membership_remove(membership=mine, actor=admin)
    dev = make_member(Role.DEVELOPER)
    with pytest.raises(PermissionDenied):
        membership_change_role(membership=dev, actor=admin, role=Role.OWNER)


def test_an_admin_is_offered_only_what_an_admin_may_do_with_roles(org, owner, make_member):
    """No "owner" to choose, no role form or remove button on an owner's row: each would only be
    refused. An owner still gets all of them."""
    admin = make_member(Role.ADMIN)
    developer = make_member(Role.DEVELOPER)
    client = Client()
    client.force_login(admin.user)
    page = client.get(f"/o/{org.slug}/members/").content.decode()
    assert 'value="owner"' not in page
    assert 'value="admin"' in page
    for membership, editable in ((Membership.objects.get(user=owner), False), (developer, True)):
        assert (f"/members/{membership.id}/role/" in page) is editable
        assert (f"/members/{membership.id}/remove/" in page) is editable
    refused = client.post(
        f"/o/{org.slug}/members/invite/", {"email": "o@example.com", "role": "owner"}
    )
    assert refused.status_code == 400
    assert "Select a valid choice" in refused.content.decode()
    assert not Invitation.objects.filter(email="o@example.com").exists()
    client.force_login(owner)
    page = client.get(f"/o/{org.slug}/members/").content.decode()
    assert 'value="owner"' in page
    assert f"/members/{admin.id}/role/" in page and f"/members/{admin.id}/remove/" in page


def test_an_api_key_cannot_invite_an_owner(org, owner, client):
    from console.services.keys import api_key_create

    secret = api_key_create(org=org, actor=owner, name="m", scopes=["manage"]).secret
    response = client.post(
        f"/api/orgs/{org.slug}/invitations/",
        {"email": "boss@example.com", "role": "owner"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 403
    assert Invitation.objects.count() == 0


def test_revoking_an_accepted_or_revoked_invitation_records_nothing(org, owner, client_for):
    accepted = invitation_create(org=org, actor=owner, email="in@example.com", role=Role.VIEWER)
    invitation_accept(token=accepted.token, user=UserFactory(email="in@example.com"))
    pending = invitation_create(org=org, actor=owner, email="out@example.com", role=Role.VIEWER)
    client = client_for(owner)
    message = (
        "in@example.com accepted this invitation already; remove them from the members instead."
    )
    with pytest.raises(ValidationError, match="accepted this invitation already"):
        invitation_revoke(invitation=accepted.invitation, actor=owner)
    api = client.delete(f"/api/orgs/{org.slug}/invitations/{accepted.invitation.pk}/")
    assert api.status_code == 400 and api.json()["error"]["message"] == message
    page = client.post(f"/o/{org.slug}/invitations/{accepted.invitation.pk}/revoke/", follow=True)
    assert message in page.content.decode().replace("&#x27;", "'")
    assert Invitation.objects.get(pk=accepted.invitation.pk).revoked_at is None
    # A pending one is revoked once; asking again changes and records nothing more.
    invitation_revoke(invitation=pending.invitation, actor=owner)
    first = Invitation.objects.get(pk=pending.invitation.pk).revoked_at
    assert first is not None
    assert (
        client.delete(f"/api/orgs/{org.slug}/invitations/{pending.invitation.pk}/").status_code
        == 204
    )
    assert Invitation.objects.get(pk=pending.invitation.pk).revoked_at == first
    assert AuditEvent.objects.filter(action="invitation.revoked").count() == 1


def test_an_invitation_to_an_address_longer_than_the_column_is_refused(org, owner, client_for):
    long = "x" * 243 + "@example.com"  # 255: Django's validator allows up to 320
    with pytest.raises(ValidationError, match="at most 254 characters"):
        invitation_create(org=org, actor=owner, email=long, role=Role.VIEWER)
    page = client_for(owner).post(
        f"/o/{org.slug}/members/invite/", {"email": long, "role": "viewer"}
    )
    assert page.status_code == 400
    assert "Ensure this value has at most 254 characters" in page.content.decode()
    assert not Invitation.objects.exists()


def test_an_invitation_stands_when_its_email_cannot_be_sent(
    org, owner, mail_down, caplog, django_capture_on_commit_callbacks
):
    with mail_unsent() as unsent, django_capture_on_commit_callbacks(execute=True):
        created = invitation_create(org=org, actor=owner, email="new@example.com", role="viewer")
    assert unsent == ["invitation"]
    assert Invitation.objects.filter(pk=created.invitation.pk, revoked_at=None).exists()
    assert AuditEvent.objects.filter(org=org, action="member.invited").exists()
    [record] = [r for r in caplog.records if r.getMessage() == "could not send an email"]
    assert record.kind == "invitation"  # type: ignore[attr-defined]
    assert created.token not in str(vars(record))


@pytest.mark.django_db(transaction=True)
def test_the_members_page_says_when_an_invitation_email_could_not_be_sent(settings):
    """Not a 500 for an invitation already made (which a retry would revoke and make again)."""
    settings.EMAIL_BACKEND = "tests.mail_down.DownBackend"
    org = OrgFactory()
    client = Client(raise_request_exception=False)
    client.force_login(MembershipFactory(org=org, role=Role.OWNER).user)
    invite = f"/o/{org.slug}/members/invite/"
    response = client.post(invite, {"email": "new@example.com", "role": "developer"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Invitation sent" not in page
    assert "the email to new@example.com could not be sent" in page
    assert Invitation.objects.filter(email="new@example.com", revoked_at=None).count() == 1
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    again = client.post(invite, {"email": "new@example.com", "role": "developer"})
    assert "Invitation sent to new@example.com" in again.content.decode()
    assert mail.outbox[-1].to == ["new@example.com"]


def test_an_invitation_sent_and_revoked_by_a_key_is_audited_as_that_key(
    org, owner, client, django_capture_on_commit_callbacks
):
    from console.services.keys import api_key_create

    manage = api_key_create(org=org, actor=owner, name="ops", scopes=["manage"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {manage.secret}"}
    with django_capture_on_commit_callbacks(execute=True):
        sent = client.post(
            f"/api/orgs/{org.slug}/invitations/",
            {"email": "new@example.com", "role": "viewer"},
            content_type="application/json",
            **auth,
        )
    assert sent.status_code == 201
    # A key is no administrator: the mail says who invited, the organisation.
    assert mail.outbox[-1].body.startswith(f"{org.name} invited you to join it as viewer.")
    revoked = client.delete(f"/api/orgs/{org.slug}/invitations/{sent.json()['id']}/", **auth)
    assert revoked.status_code == 204
    events = AuditEvent.objects.filter(action__in=["member.invited", "invitation.revoked"])
    assert {e.action: e.actor_label for e in events} == {
        "member.invited": f"key {manage.key.prefix}…",
        "invitation.revoked": f"key {manage.key.prefix}…",
    }


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_a_key_cannot_invite_a_role_with_powers_it_lacks(client, org, owner, role):
    """An invitee gets a person's powers; a leaked manage key must not make its holder an admin."""
    from console.services.keys import api_key_create

    secret = api_key_create(org=org, actor=owner, name="ops", scopes=["manage"]).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    refused = client.post(
        f"/api/orgs/{org.slug}/invitations/",
        {"email": "attacker@example.com", "role": role},
        content_type="application/json",
        **auth,
    )
    assert refused.status_code == 403
    assert "members.change_role" in refused.json()["error"]["message"]
    assert not Invitation.objects.filter(email="attacker@example.com").exists()
    fine = client.post(
        f"/api/orgs/{org.slug}/invitations/",
        {"email": "dev@example.com", "role": "developer"},
        content_type="application/json",
        **auth,
    )
    assert fine.status_code == 201


def test_an_organisation_has_a_limited_number_of_pending_invitations(
    org, owner, settings, django_capture_on_commit_callbacks
):
    settings.INVITATIONS_PENDING_PER_ORG = 3
    for n in range(3):
        invitation_create(org=org, actor=owner, email=f"p{n}@example.com", role=Role.VIEWER)
    with django_capture_on_commit_callbacks(execute=True) as sent:
        with pytest.raises(ValidationError, match="at most 3 pending invitations"):
            invitation_create(org=org, actor=owner, email="p3@example.com", role=Role.VIEWER)
    assert not sent and not Invitation.objects.filter(email="p3@example.com").exists()
    assert AuditEvent.objects.filter(org=org, action="member.invited").count() == 3
    # Inviting a pending address again replaces its invitation: still three pending.
    again = invitation_create(org=org, actor=owner, email="p0@example.com", role=Role.DEVELOPER)
    assert again.invitation.role == Role.DEVELOPER
    # Revoked and expired invitations are not pending: each frees a place.
    invitation_revoke(invitation=again.invitation, actor=owner)
    invitation_create(org=org, actor=owner, email="p3@example.com", role=Role.VIEWER)
    Invitation.objects.filter(email="p1@example.com").update(expires_at=timezone.now())
    invitation_create(org=org, actor=owner, email="p4@example.com", role=Role.VIEWER)
    # Another organisation has its own places.
    other = OrgFactory()
    MembershipFactory(org=other, user=owner, role=Role.OWNER)
    invitation_create(org=other, actor=owner, email="p5@example.com", role=Role.VIEWER)


def test_an_organisation_sends_a_limited_number_of_invitation_emails_an_hour(
    org, owner, settings, django_capture_on_commit_callbacks
):
    settings.INVITATION_EMAILS_PER_HOUR = 3
    with django_capture_on_commit_callbacks(execute=True):
        invitation_create(org=org, actor=owner, email="a@example.com", role=Role.VIEWER)
        invitation_create(org=org, actor=owner, email="b@example.com", role=Role.VIEWER)
        # Sending an address a new invitation is one more email.
        invitation_create(org=org, actor=owner, email="a@example.com", role=Role.VIEWER)
    assert len(mail.outbox) == 3
    with django_capture_on_commit_callbacks(execute=True):
        for email in ("c@example.com", "a@example.com"):
            with pytest.raises(ValidationError, match="at most 3 invitation emails an hour"):
                invitation_create(org=org, actor=owner, email=email, role=Role.VIEWER)
    assert len(mail.outbox) == 3
    assert not Invitation.objects.filter(email="c@example.com").exists()
    assert Invitation.objects.filter(email="a@example.com", revoked_at=None).count() == 1
    # Another organisation sends its own.
    other = OrgFactory()
    MembershipFactory(org=other, user=owner, role=Role.OWNER)
    invitation_create(org=other, actor=owner, email="c@example.com", role=Role.VIEWER)


def test_invitations_over_the_limits_are_refused_in_the_panel_and_over_rest(
    org, owner, client, client_for, settings, django_capture_on_commit_callbacks
):
    from console.services.keys import api_key_create

    settings.INVITATIONS_PENDING_PER_ORG = 1
    secret = api_key_create(org=org, actor=owner, name="ops", scopes=["manage"]).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    invite = f"/o/{org.slug}/members/invite/"
    with django_capture_on_commit_callbacks(execute=True):
        client_for(owner).post(invite, {"email": "one@example.com", "role": "viewer"})
        panel = client_for(owner).post(
            invite, {"email": "two@example.com", "role": "viewer"}, HTTP_HX_REQUEST="true"
        )
        refused = client.post(
            f"/api/orgs/{org.slug}/invitations/",
            {"email": "three@example.com", "role": "viewer"},
            content_type="application/json",
            **auth,
        )
    assert panel.status_code == 400
    assert "at most 1 pending invitations" in panel.content.decode()
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid" and "at most 1 pending invitations" in error["message"]
    assert [m.to for m in mail.outbox] == [["one@example.com"]]
    assert list(Invitation.objects.values_list("email", flat=True)) == ["one@example.com"]
    # The hourly emails are refused alike.
    settings.INVITATIONS_PENDING_PER_ORG = 50
    settings.INVITATION_EMAILS_PER_HOUR = 1
    refused = client.post(
        f"/api/orgs/{org.slug}/invitations/",
        {"email": "three@example.com", "role": "viewer"},
        content_type="application/json",
        **auth,
    )
    assert refused.status_code == 400
    assert "at most 1 invitation emails an hour" in refused.json()["error"]["message"]
    panel = client_for(owner).post(
        invite, {"email": "two@example.com", "role": "viewer"}, HTTP_HX_REQUEST="true"
    )
    assert panel.status_code == 400
    assert "at most 1 invitation emails an hour" in panel.content.decode()
    assert Invitation.objects.count() == 1


def _pending(org, email):  # type: ignore[no-untyped-def]
    return Invitation.objects.get(org=org, email=email).revoked_at is None


def test_a_demoted_owner_s_owner_invitations_stop_working_and_the_rest_stay(org, owner):
    """A pending link must not give back a role taken from the person who sent it."""
    second = MembershipFactory(org=org, role=Role.OWNER)
    owner_link = invitation_create(
        org=org, actor=second.user, email="o@example.com", role=Role.OWNER
    )
    invitation_create(org=org, actor=second.user, email="d@example.com", role=Role.DEVELOPER)
    invitation_create(org=org, actor=owner, email="mine@example.com", role=Role.OWNER)
    by_owner = Membership.objects.get(org=org, user=owner)
    membership_change_role(membership=second, actor=by_owner, role=Role.ADMIN)
    assert not _pending(org, "o@example.com")
    assert _pending(org, "d@example.com") and _pending(org, "mine@example.com")
    event = AuditEvent.objects.get(org=org, action="invitation.revoked")
    assert event.target_id == str(owner_link.invitation.pk) and event.actor == owner
    assert event.data == {"reason": "inviter's role changed"}
    with pytest.raises(ValidationError, match="not valid"):
        invitation_accept(token=owner_link.token, user=UserFactory(email="o@example.com"))
    # Demoted to a role that invites no one, the rest go too.
    membership_change_role(membership=second, actor=by_owner, role=Role.DEVELOPER)
    assert not _pending(org, "d@example.com") and _pending(org, "mine@example.com")


@pytest.mark.parametrize("leaves", [True, False])
def test_the_invitations_of_someone_removed_or_leaving_stop_working(org, owner, leaves):
    admin = MembershipFactory(org=org, role=Role.ADMIN)
    invitation_create(org=org, actor=admin.user, email="alt@example.com", role=Role.DEVELOPER)
    invitation_create(org=org, actor=owner, email="kept@example.com", role=Role.VIEWER)
    by = admin if leaves else Membership.objects.get(org=org, user=owner)
    membership_remove(membership=admin, actor=by)
    assert not _pending(org, "alt@example.com") and _pending(org, "kept@example.com")
    event = AuditEvent.objects.get(org=org, action="invitation.revoked")
    assert event.data == {"reason": "inviter left" if leaves else "inviter removed"}


def test_the_invitations_of_someone_who_deletes_their_account_stop_working(org, owner):
    admin = MembershipFactory(org=org, role=Role.ADMIN)
    invitation_create(org=org, actor=admin.user, email="alt@example.com", role=Role.DEVELOPER)
    account_delete(user=admin.user)
    assert not _pending(org, "alt@example.com")
