"""The account page: a person's own name, password and organisations."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from console.services.users import user_password_change, user_update
from tests.factories import PASSWORD

NEW_PASSWORD = "a-different-long-passphrase-7"


def _change_password(client: Client, old: str, new: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/account/password/",
        {"old_password": old, "new_password1": new, "new_password2": new},
    )


def test_user_update_strips_and_saves_both_names(member):
    user_update(user=member, first_name="  Ada ", last_name="Lovelace ")
    member.refresh_from_db()
    assert (member.first_name, member.last_name) == ("Ada", "Lovelace")


def test_user_password_change_refuses_a_common_password(member):
    with pytest.raises(ValidationError, match="too common"):
        user_password_change(user=member, password="password123")
    member.refresh_from_db()
    assert member.check_password(PASSWORD)


@pytest.mark.parametrize("url", ["/account/", "/account/password/"])
def test_anonymous_visitors_are_sent_to_log_in(client, db, url):
    for response in (client.get(url), client.post(url)):
        assert response.status_code == 302
        assert response["Location"] == f"/login/?next={url}"


def test_top_bar_links_to_the_account_page(client_for, org, member):
    html = client_for(member).get(f"/o/{org.slug}/").content.decode()
    link = re.escape(f">{member.email}</a>")
    assert re.search(r'<a class="who" href="/account/"[^>]*' + link, html)


def test_page_shows_the_email_and_the_current_names(client_for, member):
    user_update(user=member, first_name="Ada", last_name="Lovelace")
    response = client_for(member).get("/account/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f"<code>{member.email}</code>" in html
    assert 'value="Ada"' in html and 'value="Lovelace"' in html


def test_name_change_is_saved(client_for, member):
    client = client_for(member)
    response = client.post("/account/", {"first_name": "Ada", "last_name": "Lovelace"})
    assert response.status_code == 302 and response["Location"] == "/account/"
    member.refresh_from_db()
    assert (member.first_name, member.last_name) == ("Ada", "Lovelace")
    assert "Saved." in client.get("/account/").content.decode()


def test_a_too_long_name_is_refused_and_changes_nothing(client_for, member):
    response = client_for(member).post("/account/", {"first_name": "A" * 151, "last_name": "L"})
    assert response.status_code == 400
    assert "at most 150 characters" in response.content.decode()
    member.refresh_from_db()
    assert (member.first_name, member.last_name) == ("", "")


def test_password_change_keeps_this_session_and_the_new_password_logs_in(client_for, member):
    client = client_for(member)
    response = _change_password(client, PASSWORD, NEW_PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/account/"
    page = client.get("/account/")
    assert page.status_code == 200
    assert "Password changed." in page.content.decode()
    assert NEW_PASSWORD not in page.content.decode()

    assert Client().login(email=member.email, password=NEW_PASSWORD)
    assert not Client().login(email=member.email, password=PASSWORD)


def test_password_change_signs_out_the_users_other_sessions(client_for, member):
    elsewhere = client_for(member)
    assert elsewhere.get("/account/").status_code == 200
    _change_password(client_for(member), PASSWORD, NEW_PASSWORD)
    response = elsewhere.get("/account/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_wrong_current_password_is_refused_and_changes_nothing(client_for, member):
    client = client_for(member)
    response = _change_password(client, "not-my-password", NEW_PASSWORD)
    assert response.status_code == 400
    assert "Your old password was entered incorrectly" in response.content.decode()
    member.refresh_from_db()
    assert member.check_password(PASSWORD)
    assert client.get("/account/").status_code == 200


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("x7#kq", "This password is too short. It must contain at least 8 characters."),
        ("password123", "This password is too common."),
    ],
)
def test_weak_new_password_is_refused_with_the_validators_message(client_for, member, new, message):
    response = _change_password(client_for(member), PASSWORD, new)
    assert response.status_code == 400
    assert message in response.content.decode()
    member.refresh_from_db()
    assert member.check_password(PASSWORD)


def test_page_lists_only_the_users_own_organisations_with_their_roles(
    client_for, org, member, outsider
):
    html = client_for(member).get("/account/").content.decode()
    assert '<tr data-org="acme"><td><a href="/o/acme/">Acme</a></td><td>Developer</td>' in html
    assert 'data-org="other"' not in html and "Other" not in html

    html = client_for(outsider).get("/account/").content.decode()
    assert '<tr data-org="other"><td><a href="/o/other/">Other</a></td><td>Owner</td>' in html
    assert 'data-org="acme"' not in html


def test_signing_out_everywhere_else_keeps_this_session(member, client_for):
    from django.urls import reverse

    here, elsewhere = client_for(member), client_for(member)
    assert elsewhere.get(reverse("account")).status_code == 200
    response = here.post(reverse("sessions_end"))
    assert response.status_code == 302 and response["Location"] == reverse("account")
    assert here.get(reverse("account")).status_code == 200
    gone = elsewhere.get(reverse("account"))
    assert gone.status_code == 302 and gone["Location"].startswith(reverse("login"))


def test_the_session_hash_is_djangos_own_until_the_first_sign_out(member):
    """Sessions from before the session epoch existed stay valid: epoch 0 gives Django's value."""
    from django.utils.crypto import salted_hmac

    from console.services.users import sessions_end

    djangos = salted_hmac(
        "django.contrib.auth.models.AbstractBaseUser.get_session_auth_hash",
        member.password,
        algorithm="sha256",
    ).hexdigest()
    assert member.get_session_auth_hash() == djangos
    sessions_end(user=member)
    assert member.get_session_auth_hash() != djangos
