"""Two-factor authentication: the codes (RFC 6238's own test vectors), turning it on and off,
signing in with it, recovery codes, the throttle, and organisations that require it."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from django.contrib.auth import SESSION_KEY
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from console import totp
from console.models import AuditEvent, Organisation, RecoveryCode, User
from console.permissions import Role
from console.services import two_factor
from console.services.keys import api_key_create
from console.services.mail import mail_unsent
from console.services.two_factor import secret_unseal, two_factor_enable
from tests.factories import PASSWORD, MembershipFactory, OrgFactory, UserFactory

# RFC 6238, appendix B: the SHA-1 seed "12345678901234567890" in base32, eight digits.
RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


@pytest.mark.parametrize(
    ("when", "code"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_codes_match_rfc_6238(when, code):
    assert totp.code_at(RFC_SECRET, totp.step_at(when), digits=8) == code


def test_a_code_is_good_one_step_either_side_and_only_once():
    secret = totp.new_secret()
    now = 1_800_000_000.0
    step = totp.step_at(now)
    for offset in (-1, 0, 1):
        code = totp.code_at(secret, step + offset)
        assert totp.matching_step(secret, code, after_step=0, when=now) == step + offset
    assert (
        totp.matching_step(secret, totp.code_at(secret, step - 2), after_step=0, when=now) is None
    )
    # Once a step was used, its code (and earlier ones) are refused.
    assert totp.matching_step(secret, totp.code_at(secret, step), after_step=step, when=now) is None
    for junk in ("", "12345", "1234567", "abcdef", "12 34 5x"):
        assert totp.matching_step(secret, junk, after_step=0, when=now) is None
    # Spaces typed in the middle are fine.
    spaced = totp.code_at(secret, step)
    assert totp.matching_step(secret, spaced[:3] + " " + spaced[3:], after_step=0, when=now)


def test_the_provisioning_uri_is_what_authenticator_apps_read():
    uri = totp.provisioning_uri("ABC", account="ada@example.com", issuer="Inference platform")
    assert uri == (
        "otpauth://totp/Inference%20platform:ada@example.com?secret=ABC&issuer=Inference+platform"
        "&algorithm=SHA1&digits=6&period=30"
    )


def now_code(secret: str) -> str:
    return totp.code_at(secret, totp.step_at())


def enable(user: User) -> tuple[str, list[str]]:
    secret = totp.new_secret()
    codes = two_factor_enable(user=user, secret=secret, code=now_code(secret))
    user.refresh_from_db()
    return secret, codes


def next_code(secret: str, user: User) -> str:
    """A code for a step not used yet (the one just used would be refused as a replay)."""
    user.refresh_from_db()
    step = max(totp.step_at(), user.totp_last_step + 1)
    return totp.code_at(secret, step)


@pytest.fixture(autouse=True)
def _forget_failures(db):  # type: ignore[no-untyped-def]
    yield
    for user in User.objects.all():
        cache.delete(two_factor._failures_key(user))


pytestmark = pytest.mark.django_db


def test_turning_it_on_from_the_account_page(
    member, client_for, mailoutbox, django_capture_on_commit_callbacks
):
    client, elsewhere = client_for(member), client_for(member)
    page = client.get(reverse("two_factor_setup"))
    assert page.status_code == 200 and b"<svg" in page.content
    secret = secret_unseal(client.session["two_factor_setup_secret"])
    assert secret and secret.encode() in page.content
    assert page["Cache-Control"].startswith("max-age=0")
    # A wrong code turns nothing on, and the same secret stays (the app already has it).
    wrong = client.post(reverse("two_factor_setup"), {"code": "000000"})
    assert wrong.status_code == 400 and b"does not match" in wrong.content
    assert secret_unseal(client.session["two_factor_setup_secret"]) == secret
    member.refresh_from_db()
    assert not member.has_two_factor
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(reverse("two_factor_setup"), {"code": now_code(secret)})
    assert done.status_code == 200
    codes = done.context["codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    member.refresh_from_db()
    assert member.has_two_factor
    # Stored encrypted and as digests only.
    assert secret not in member.totp_secret_encrypted
    stored = set(RecoveryCode.objects.filter(user=member).values_list("digest", flat=True))
    assert len(stored) == 10 and not stored & set(codes)
    assert "two_factor_setup_secret" not in client.session
    # Sessions opened with the password alone are signed out; this one stays.
    assert elsewhere.get(reverse("account")).status_code == 302
    assert client.get(reverse("account")).status_code == 200
    assert [m.to for m in mailoutbox] == [[member.email]]
    account = client.get(reverse("account")).content.decode()
    assert "10 of 10 recovery codes left" in account


def _password_step(client: Client, user: User, next_url: str = ""):  # type: ignore[no-untyped-def]
    data = {"username": user.email, "password": PASSWORD}
    if next_url:
        data["next"] = next_url
    return client.post(reverse("login"), data)


def test_signing_in_needs_the_code_after_the_password(org, member):
    secret, _ = enable(member)
    client = Client()
    overview = reverse("org_overview", args=[org.slug])
    response = _password_step(client, member, overview)
    assert response.status_code == 302 and response["Location"] == reverse("login_two_factor")
    # The password alone signs nobody in.
    assert SESSION_KEY not in client.session
    assert client.get(overview).status_code == 302
    wrong = client.post(reverse("login_two_factor"), {"code": "123456"})
    assert wrong.status_code == 400 and b"That code is wrong." in wrong.content
    assert SESSION_KEY not in client.session
    good = client.post(reverse("login_two_factor"), {"code": next_code(secret, member)})
    assert good.status_code == 302 and good["Location"] == overview
    assert client.session[SESSION_KEY] == str(member.pk)
    assert client.get(overview).status_code == 200


# Other scripts' digits, by code point: full-width (U+FF10...) and Arabic-Indic (U+0660...).
FULL_WIDTH = str.maketrans({str(d): chr(0xFF10 + d) for d in range(10)})
ARABIC_INDIC = str.maketrans({str(d): chr(0x0660 + d) for d in range(10)})


def test_codes_typed_in_other_scripts_digits_work_and_wrong_ones_are_just_wrong(member):
    secret, _ = enable(member)
    client = Client()
    _password_step(client, member)
    # Comparing non-ASCII text with compare_digest raised a TypeError (a 500) here.
    typed = "123456"
    for wrong in (
        typed.translate(FULL_WIDTH),
        typed.translate(ARABIC_INDIC),
        "\u00b9\u00b2\u00b3" * 2,
    ):
        response = client.post(reverse("login_two_factor"), {"code": wrong})
        assert response.status_code == 400 and b"That code is wrong." in response.content
    code = next_code(secret, member).translate(FULL_WIDTH)
    assert client.post(reverse("login_two_factor"), {"code": code}).status_code == 302
    assert client.session[SESSION_KEY] == str(member.pk)
    now = 1_800_000_000.0
    arabic = totp.code_at(secret, totp.step_at(now)).translate(ARABIC_INDIC)
    assert totp.matching_step(secret, arabic, after_step=0, when=now) == totp.step_at(now)


def test_a_used_code_does_not_work_again(member):
    secret, _ = enable(member)
    code = next_code(secret, member)
    first = Client()
    _password_step(first, member)
    assert first.post(reverse("login_two_factor"), {"code": code}).status_code == 302
    second = Client()
    _password_step(second, member)
    assert second.post(reverse("login_two_factor"), {"code": code}).status_code == 400
    assert SESSION_KEY not in second.session


def test_a_recovery_code_signs_in_once(member, mailoutbox, django_capture_on_commit_callbacks):
    _, codes = enable(member)
    client = Client()
    _password_step(client, member)
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            client.post(reverse("login_two_factor"), {"code": codes[0].upper()}).status_code == 302
        )
    assert any("recovery code was used" in m.body for m in mailoutbox)
    assert two_factor.recovery_codes_left(member) == 9
    again = Client()
    _password_step(again, member)
    assert again.post(reverse("login_two_factor"), {"code": codes[0]}).status_code == 400


def test_too_many_wrong_codes_lock_the_second_step(member):
    secret, _ = enable(member)
    client = Client()
    _password_step(client, member)
    for _ in range(two_factor.MAX_FAILURES):
        client.post(reverse("login_two_factor"), {"code": "000000"})
    # Even the right code is refused now, and says why.
    refused = client.post(reverse("login_two_factor"), {"code": next_code(secret, member)})
    assert refused.status_code == 400 and b"Too many wrong codes" in refused.content
    assert SESSION_KEY not in client.session


def test_the_password_step_expires(member):
    enable(member)
    client = Client()
    _password_step(client, member)
    later = time.time() + 301
    with mock.patch("console.views.two_factor.time.time", return_value=later):
        response = client.get(reverse("login_two_factor"))
    assert response.status_code == 302 and response["Location"] == reverse("login")
    assert client.get(reverse("login_two_factor")).status_code == 302


def test_without_two_factor_the_password_signs_in_as_before(member):
    client = Client()
    response = _password_step(client, member)
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert client.session[SESSION_KEY] == str(member.pk)


def test_the_admin_signs_in_through_the_same_two_steps(client):
    response = client.get("/admin/login/?next=/admin/console/user/")
    assert response.status_code == 302
    assert response["Location"] == reverse("login") + "?next=%2Fadmin%2Fconsole%2Fuser%2F"


def test_turning_it_off_needs_the_password_and_a_code(member, client_for):
    secret, _ = enable(member)
    client = client_for(member)
    client.post(reverse("two_factor_off"), {"off-password": PASSWORD, "off-code": "000000"})
    member.refresh_from_db()
    assert member.has_two_factor
    client.post(
        reverse("two_factor_off"), {"off-password": "wrong", "off-code": next_code(secret, member)}
    )
    member.refresh_from_db()
    assert member.has_two_factor
    client.post(
        reverse("two_factor_off"), {"off-password": PASSWORD, "off-code": next_code(secret, member)}
    )
    member.refresh_from_db()
    assert not member.has_two_factor and member.totp_secret_encrypted == ""
    assert not RecoveryCode.objects.filter(user=member).exists()


def test_new_recovery_codes_replace_the_old_ones(member, client_for):
    secret, old = enable(member)
    client = client_for(member)
    response = client.post(reverse("recovery_codes_new"), {"code": next_code(secret, member)})
    assert response.status_code == 200
    new = response.context["codes"]
    assert len(new) == 10 and not set(new) & set(old)
    fresh = Client()
    _password_step(fresh, member)
    assert fresh.post(reverse("login_two_factor"), {"code": old[1]}).status_code == 400
    assert fresh.post(reverse("login_two_factor"), {"code": new[1]}).status_code == 302


def test_staff_turn_it_off_for_someone_who_lost_everything(
    member, client_for, mailoutbox, django_capture_on_commit_callbacks
):
    staff_client = client_for(UserFactory(is_staff=True, is_superuser=True))
    enable(member)
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(
            reverse("admin:console_user_changelist"),
            {"action": "two_factor_reset", "_selected_action": [member.pk]},
        )
    member.refresh_from_db()
    assert not member.has_two_factor
    assert any("Platform staff turned off" in m.body for m in mailoutbox)


def test_an_org_can_require_it_and_members_without_it_are_kept_out(org, owner, member, client_for):
    owner_client = client_for(owner)
    settings_url = reverse("org_settings", args=[org.slug])
    # The one turning it on must have it, or they would lock themselves out.
    owner_client.post(reverse("org_two_factor", args=[org.slug]), {"require_two_factor": "on"})
    org.refresh_from_db()
    assert not org.require_two_factor
    enable(owner)
    response = owner_client.post(
        reverse("org_two_factor", args=[org.slug]), {"require_two_factor": "on"}
    )
    assert response["Location"] == settings_url
    org.refresh_from_db()
    assert org.require_two_factor
    assert AuditEvent.objects.filter(org=org, action="org.two_factor_required").exists()
    assert owner_client.get(settings_url).status_code == 200
    # A member without it: refused in the console and the REST API, saying why.
    developer = client_for(member)
    page = developer.get(reverse("org_overview", args=[org.slug]))
    assert page.status_code == 403 and b"requires two-factor authentication" in page.content
    api = developer.get(f"/api/orgs/{org.slug}/")
    assert api.status_code == 403 and "requires two-factor" in api.json()["error"]["message"]
    # Keys are not people: they keep working.
    key = api_key_create(org=org, actor=owner, name="ci", scopes=["read"])
    by_key = Client().get(f"/api/orgs/{org.slug}/", HTTP_AUTHORIZATION=f"Bearer {key.secret}")
    assert by_key.status_code == 200 and by_key.json()["require_two_factor"] is True
    # The members list shows who has it on.
    members = owner_client.get(f"/api/orgs/{org.slug}/members/").json()["results"]
    assert {m["email"]: m["two_factor"] for m in members} == {
        owner.email: True,
        member.email: False,
    }
    # Once the member turns it on, they are let in.
    enable(member)
    assert developer.get(reverse("org_overview", args=[org.slug])).status_code == 200


def test_a_member_without_it_lands_on_an_organisation_that_lets_them_in(
    org, owner, member, client_for
):
    """The console's home opens the first organisation joined; one that requires two-factor
    authentication the person lacks is passed over while another opens."""
    Organisation.objects.filter(pk=org.pk).update(require_two_factor=True)
    client = client_for(member)
    # Only that organisation: its refusal says why.
    alone = client.get(reverse("home"))
    assert alone["Location"] == reverse("org_overview", args=[org.slug])
    MembershipFactory(org=OrgFactory(name="Zed", slug="zed"), user=member, role=Role.VIEWER)
    landed = client.get(reverse("home"), follow=True)
    assert landed.redirect_chain == [(reverse("org_overview", args=["zed"]), 302)]
    assert landed.status_code == 200
    # With two-factor on, the first organisation joined again.
    enable(member)
    assert client.get(reverse("home"))["Location"] == reverse("org_overview", args=[org.slug])


def test_a_member_without_it_may_still_leave_the_organisation(org, owner, member, client_for):
    """Leaving only gives up access: the refusal offers it, and it is the one thing a member
    without two-factor authentication may do in an organisation that requires it."""
    Organisation.objects.filter(pk=org.pk).update(require_two_factor=True)
    client = client_for(member)
    leave_url = reverse("org_leave", args=[org.slug])
    refused = client.get(reverse("org_overview", args=[org.slug]))
    assert refused.status_code == 403
    page = refused.content.decode()
    assert "requires two-factor authentication" in page and f'action="{leave_url}"' in page
    # Nothing else gets through.
    rename = client.post(reverse("org_settings", args=[org.slug]), {"name": "Mine now"})
    assert rename.status_code == 403
    org.refresh_from_db()
    assert org.name == "Acme"
    left = client.post(leave_url)
    assert left.status_code == 302 and left["Location"] == reverse("home")
    assert not org.memberships.filter(user=member).exists()
    event = AuditEvent.objects.get(org=org, action="member.removed")
    assert event.actor == member
    # The last owner still cannot leave, two-factor or not.
    User.objects.filter(pk=owner.pk).update(totp_enabled_at=None)
    assert client_for(owner).post(leave_url).status_code == 302
    assert org.memberships.filter(user=owner).exists()


def test_the_rest_api_turns_the_requirement_on_and_off(org, owner, client_for):
    client = client_for(owner)
    refused = client.patch(
        f"/api/orgs/{org.slug}/", {"require_two_factor": True}, content_type="application/json"
    )
    assert refused.status_code == 400 and "your own account first" in refused.content.decode()
    enable(owner)
    on = client.patch(
        f"/api/orgs/{org.slug}/", {"require_two_factor": True}, content_type="application/json"
    )
    assert on.status_code == 200 and on.json()["require_two_factor"] is True
    off = client.patch(
        f"/api/orgs/{org.slug}/", {"require_two_factor": False}, content_type="application/json"
    )
    assert off.json()["require_two_factor"] is False


def test_staff_sign_someone_out_everywhere(member, client_for):
    staff = UserFactory(is_staff=True, is_superuser=True)
    staff_client, victim = client_for(staff), client_for(member)
    staff_client.post(
        reverse("admin:console_user_changelist"),
        {"action": "sign_out_everywhere", "_selected_action": [member.pk, staff.pk]},
    )
    assert victim.get(reverse("account")).status_code == 302
    # Staff who picked themselves stay signed in where they acted.
    assert staff_client.get(reverse("account")).status_code == 200


def test_two_factor_is_turned_on_when_the_notice_cannot_be_sent(
    member, mail_down, django_capture_on_commit_callbacks
):
    with mail_unsent() as unsent, django_capture_on_commit_callbacks(execute=True):
        enable(member)
    assert unsent == ["two-factor notice"]
    member.refresh_from_db()
    assert member.has_two_factor
