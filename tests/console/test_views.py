"""Console pages over HTTP: owner, member and outsider, full pages and htmx partials."""

from __future__ import annotations

from console.models import ApiKey, Invitation, Membership
from console.permissions import Role
from console.services.keys import api_key_create

HTMX = {"HTTP_HX_REQUEST": "true"}


def test_pages_render_for_a_member(client_for, org, member):
    client = client_for(member)
    for path in ["", "deployments/", "routes/", "keys/", "usage/", "members/", "settings/"]:
        response = client.get(f"/o/{org.slug}/{path}")
        assert response.status_code == 200, path


def test_anonymous_visitors_are_sent_to_log_in(client, org):
    response = client.get(f"/o/{org.slug}/keys/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_outsider_gets_404(client_for, org, outsider):
    assert client_for(outsider).get(f"/o/{org.slug}/keys/").status_code == 404


def test_key_create_with_htmx_returns_the_panel_with_the_secret_once(client_for, org, member):
    client = client_for(member)
    response = client.post(
        f"/o/{org.slug}/keys/new/", {"name": "svc", "scopes": ["inference"]}, **HTMX
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="key-panel">')  # a partial, not the whole page
    key = ApiKey.objects.get(name="svc")
    secret = html.split('data-testid="new-key-secret">')[1].split("<")[0]
    assert secret.startswith(key.prefix)
    assert secret not in client.get(f"/o/{org.slug}/keys/").content.decode()


def test_key_create_without_javascript_renders_the_full_page(client_for, org, owner):
    response = client_for(owner).post(
        f"/o/{org.slug}/keys/new/", {"name": "svc", "scopes": ["read"]}
    )
    assert response.status_code == 200
    assert b"<html" in response.content and b"new-key-secret" in response.content


def test_invalid_key_form_shows_errors_beside_fields_and_creates_nothing(client_for, org, owner):
    response = client_for(owner).post(
        f"/o/{org.slug}/keys/new/", {"name": "", "rpm_limit": "0"}, **HTMX
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "This field is required." in html and "greater than or equal to 1" in html
    assert ApiKey.objects.count() == 0


def test_revoke_with_htmx_returns_the_list(client_for, org, owner):
    key = api_key_create(org=org, actor=owner, name="svc", scopes=["inference"]).key
    response = client_for(owner).post(f"/o/{org.slug}/keys/{key.pk}/revoke/", **HTMX)
    assert response.content.decode().lstrip().startswith('<div id="key-list">')
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_viewer_sees_keys_but_no_create_form(client_for, org, viewer, owner):
    api_key_create(org=org, actor=owner, name="svc", scopes=["inference"])
    html = client_for(viewer).get(f"/o/{org.slug}/keys/").content.decode()
    assert "svc" in html and "Create key" not in html and "Revoke" not in html


def test_invite_and_change_role_and_remove_in_place(client_for, org, owner, member):
    client = client_for(owner)
    response = client.post(
        f"/o/{org.slug}/members/invite/", {"email": "new@example.com", "role": "viewer"}, **HTMX
    )
    assert response.status_code == 200 and "new@example.com" in response.content.decode()
    assert Invitation.objects.filter(email="new@example.com").exists()
    invitation = Invitation.objects.get(email="new@example.com")
    revoked = client.post(f"/o/{org.slug}/invitations/{invitation.pk}/revoke/", **HTMX)
    assert "The invitation to new@example.com is revoked." in revoked.content.decode()
    target = Membership.objects.get(user=member)
    changed = client.post(f"/o/{org.slug}/members/{target.pk}/role/", {"role": "admin"}, **HTMX)
    target.refresh_from_db()
    assert target.role == Role.ADMIN
    assert f"{member.email} is now admin." in changed.content.decode()
    removed = client.post(f"/o/{org.slug}/members/{target.pk}/remove/", **HTMX)
    assert not Membership.objects.filter(pk=target.pk).exists()
    assert f"{member.email} is no longer a member." in removed.content.decode()


def test_a_member_removed_while_signed_in_is_told_why_by_the_next_panel_request(
    client_for, org, owner, member
):
    """A panel's poll after the removal gets 404; the console shows the page's alert above the
    page (static/js/console.js), which says the organisation is not theirs, not "try again"."""
    import re

    client = client_for(member)
    assert client.get(f"/o/{org.slug}/deployments/", **HTMX).status_code == 200
    Membership.objects.filter(org=org, user=member).delete()
    poll = client.get(f"/o/{org.slug}/deployments/", **HTMX)
    assert poll.status_code == 404
    main = poll.content.decode().split("<main>", 1)[1]
    alert = re.search(r'<p[^>]*role="alert"[^>]*>([^<]*)</p>', main)
    assert alert is not None
    assert alert.group(1) == (
        "There is nothing at this address, or it belongs to an organisation you are not in."
    )


def test_a_refused_revocation_is_said_in_the_panel(client_for, org, owner, member):
    from django.utils import timezone

    invitation = Invitation.objects.create(
        org=org,
        email="done@example.com",
        role=Role.VIEWER,
        token_digest="x" * 64,
        expires_at=timezone.now(),
        accepted_at=timezone.now(),
    )
    answer = client_for(owner).post(f"/o/{org.slug}/invitations/{invitation.pk}/revoke/", **HTMX)
    assert answer.status_code == 400
    assert 'role="alert"' in answer.content.decode()


def test_last_owner_demotion_is_refused_with_a_message(client_for, org, owner):
    mine = Membership.objects.get(user=owner)
    response = client_for(owner).post(
        f"/o/{org.slug}/members/{mine.pk}/role/", {"role": "viewer"}, **HTMX
    )
    assert response.status_code == 400 and "last owner" in response.content.decode()
    mine.refresh_from_db()
    assert mine.role == Role.OWNER


def test_member_can_leave_but_last_owner_cannot(client_for, org, owner, member):
    assert client_for(member).post(f"/o/{org.slug}/leave/").status_code == 302
    assert not Membership.objects.filter(user=member, org=org).exists()
    client_for(owner).post(f"/o/{org.slug}/leave/")
    assert Membership.objects.filter(user=owner, org=org).exists()


def test_invitation_accept_page(client_for, org, owner):
    from console.services.members import invitation_create
    from tests.factories import UserFactory

    created = invitation_create(org=org, actor=owner, email="join@example.com", role=Role.VIEWER)
    joiner = UserFactory(email="join@example.com")
    client = client_for(joiner)
    assert b"Join Acme" in client.get(f"/invitations/{created.token}/").content
    response = client.post(f"/invitations/{created.token}/")
    assert response.status_code == 302 and response["Location"] == f"/o/{org.slug}/"
    assert client.post(f"/invitations/{created.token}/").status_code == 400


def test_signup_rejects_duplicate_email(client, org, owner):
    response = client.post(
        "/signup/",
        {"email": owner.email, "password1": "x-Long-pass-1234", "password2": "x-Long-pass-1234"},
    )
    assert response.status_code == 200 and b"already exists" in response.content


def test_an_address_in_other_letter_cases_is_the_same_account(client, org, owner):
    """Ann@ and ann@ are one mailbox: a second account is refused, and signing in takes the
    address in any case."""
    from console.models import User
    from tests.factories import PASSWORD

    password = "x-Long-pass-1234"
    response = client.post(
        "/signup/", {"email": owner.email.upper(), "password1": password, "password2": password}
    )
    assert response.status_code == 200 and b"already exists" in response.content
    assert User.objects.filter(email__iexact=owner.email).count() == 1
    created = client.post(
        "/signup/", {"email": "Bob@Example.COM", "password1": password, "password2": password}
    )
    assert created.status_code == 302
    assert User.objects.filter(email="bob@example.com").exists()
    client.logout()
    assert client.login(email="BOB@example.com", password=password)
    client.logout()
    assert client.login(email=owner.email.title(), password=PASSWORD)


def test_wrong_passwords_from_one_place_are_stopped_for_a_while(client, owner):
    """Ten wrong passwords for an address from one client refuse further tries from there, even
    the right one, until the window passes; another client is not affected."""
    from django.core.cache import cache

    from console.services.users import MAX_SIGN_IN_FAILURES
    from tests.factories import PASSWORD

    cache.clear()
    for _ in range(MAX_SIGN_IN_FAILURES):
        wrong = client.post("/login/", {"username": owner.email, "password": "guess"})
        assert wrong.status_code == 200
    refused = client.post("/login/", {"username": owner.email.upper(), "password": PASSWORD})
    assert refused.status_code == 429
    assert "Too many wrong passwords for this address from here" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    elsewhere = client.post(
        "/login/", {"username": owner.email, "password": PASSWORD}, REMOTE_ADDR="198.51.100.7"
    )
    assert elsewhere.status_code == 302
    # A success clears the count for its own client.
    other = client.post(
        "/login/", {"username": owner.email, "password": "guess"}, REMOTE_ADDR="198.51.100.7"
    )
    assert other.status_code == 200
    cache.clear()


def test_a_new_password_from_the_reset_link_lifts_the_refusal_there(client, owner, mailoutbox):
    """The refusal says to wait or reset the password: a reset from that client lets the new
    password in there at once. Another client's count is its own."""
    import re

    from django.core.cache import cache

    from console.services.users import MAX_SIGN_IN_FAILURES, sign_in_throttled

    cache.clear()
    for address in ("127.0.0.1", "198.51.100.9"):
        for _ in range(MAX_SIGN_IN_FAILURES):
            client.post(
                "/login/", {"username": owner.email, "password": "guess"}, REMOTE_ADDR=address
            )
    client.post("/password-reset/", {"email": owner.email})
    [link] = re.findall(r"http://\S+(/password-reset/\S+/)", mailoutbox[0].body)
    form = client.get(link, follow=True).redirect_chain[-1][0]
    new_password = "Another-pass-2468"
    done = client.post(form, {"new_password1": new_password, "new_password2": new_password})
    assert done.status_code == 302 and done["Location"] == "/password-reset/done/"
    signed_in = client.post("/login/", {"username": owner.email, "password": new_password})
    assert signed_in.status_code == 302 and "_auth_user_id" in client.session
    assert sign_in_throttled(email=owner.email, client="198.51.100.9")
    cache.clear()


def test_password_reset_sends_an_email(client, owner, mailoutbox):
    client.post("/password-reset/", {"email": owner.email})
    assert len(mailoutbox) == 1 and "/password-reset/" in mailoutbox[0].body


def test_the_password_reset_link_goes_to_site_url_not_to_the_requests_host(
    client, owner, mailoutbox, settings
):
    settings.SITE_URL = "https://console.example.com"
    settings.ALLOWED_HOSTS = ["testserver", "elsewhere.example"]
    client.post("/password-reset/", {"email": owner.email}, HTTP_HOST="elsewhere.example")
    [message] = mailoutbox
    assert "Choose a new password: https://console.example.com/password-reset/" in message.body
    assert "elsewhere.example" not in message.body + message.subject


def test_opening_a_form_only_address_shows_a_page_and_changes_nothing(client_for, org, owner):
    client = client_for(owner)
    key = api_key_create(org=org, actor=owner, name="kept", scopes=["inference"]).key
    for path in (f"/o/{org.slug}/keys/new/", f"/o/{org.slug}/keys/{key.pk}/revoke/"):
        page = client.get(path)
        assert page.status_code == 405 and page["Allow"] == "POST", path
        text = page.content.decode()
        assert "This address takes a form, not a visit" in text
        assert f'href="/o/{org.slug}/"' in text  # back to the organisation
    key.refresh_from_db()
    assert key.revoked_at is None and ApiKey.objects.count() == 1
    # htmx and the REST API keep their own answers.
    assert client.get(f"/o/{org.slug}/keys/new/", HTTP_HX_REQUEST="true").content == b""
    api = client.get(f"/api/orgs/{org.slug}/keys/{key.pk}/revoke/")
    assert api.status_code == 405 and api.json()["error"]["code"] == "method_not_allowed"
    # HEAD is allowed wherever GET is, with GET's permission.
    assert client.head(f"/api/orgs/{org.slug}/keys/").status_code == 200


def test_a_password_reset_email_that_cannot_be_sent_is_said(client, owner, mail_down):
    response = client.post("/password-reset/", {"email": owner.email})
    assert response.status_code == 200
    assert "could not be sent just now" in response.content.decode()


def test_every_field_on_the_routes_page_has_an_id_of_its_own(client_for, org, owner):
    """The route form, the endpoint form and the try box share the page: each label must name
    its own field."""
    import re

    from tests.gateway.conftest import make_deployment

    make_deployment(org, "tiny", [1])  # the try box appears once there is a chat model
    html = client_for(owner).get(f"/o/{org.slug}/routes/").content.decode()
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert sorted({i for i in ids if ids.count(i) > 1}) == []
    for field_id in re.findall(r'<label for="([^"]*)"', html):
        assert field_id and f'id="{field_id}"' in html


def test_a_group_of_checkboxes_is_named_by_a_legend_and_gpus_are_spelt_so(client_for, org, owner):
    keys = client_for(owner).get(f"/o/{org.slug}/keys/").content.decode()
    assert '<label for="">' not in keys
    assert "<legend>Scopes</legend>" in keys
    deploy = client_for(owner).get(f"/o/{org.slug}/deployments/new/").content.decode()
    assert "GPUs per replica" in deploy and "Gpus" not in deploy


def test_password_reset_emails_are_limited_per_address_and_per_client(
    client, db, settings, mailoutbox
):
    import uuid

    from tests.factories import UserFactory

    settings.PASSWORD_RESET_EMAILS_PER_HOUR = (5, 20)
    run = uuid.uuid4().hex[:8]  # the counts outlive the test in a shared cache
    here = f"198.18.{int(run[:2], 16)}.{int(run[2:4], 16)}"
    elsewhere = f"198.19.{int(run[:2], 16)}.{int(run[2:4], 16)}"
    person = UserFactory(email=f"reset-{run}@example.com")
    for _ in range(8):
        answer = client.post("/password-reset/", {"email": person.email}, REMOTE_ADDR=here)
        assert answer.status_code == 302  # the same answer whether or not an email went
    assert len(mailoutbox) == 5
    # From one client, across many addresses: at most 20 an hour.
    for n in range(20):
        client.post("/password-reset/", {"email": f"x{n}-{run}@example.com"}, REMOTE_ADDR=here)
    other = UserFactory(email=f"late-{run}@example.com")
    client.post("/password-reset/", {"email": other.email}, REMOTE_ADDR=here)
    assert not [m for m in mailoutbox if m.to == [other.email]]
    # Another client may still ask for that address.
    client.post("/password-reset/", {"email": other.email}, REMOTE_ADDR=elsewhere)
    assert [m for m in mailoutbox if m.to == [other.email]]
