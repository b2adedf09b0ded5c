"""People change the address they sign in with: a link to the new address, a notice to the old."""

from __future__ import annotations

import re

import pytest
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import ValidationError

from console.models import User
from tests.factories import PASSWORD, UserFactory

LINK = re.compile(r"http://\S+/account/email/confirm/\S+/")


@pytest.fixture
def person(client, db):  # type: ignore[no-untyped-def]
    cache.clear()
    user = UserFactory(email="old@example.com")
    client.force_login(user)
    return user


def _ask(client, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post("/account/email/", {"email": email, "password": password}, follow=True)


def test_the_address_changes_when_the_link_sent_there_is_opened(client, person, mailoutbox):
    response = _ask(client, "New@Example.com")
    # Addresses are kept in lower case, and sign-in ignores case.
    assert "We sent a link to new@example.com" in response.content.decode()
    person.refresh_from_db()
    assert person.email == "old@example.com"  # nothing changes yet
    to_new, to_old = mailoutbox
    assert to_new.to == ["new@example.com"] and to_old.to == ["old@example.com"]
    assert "/password-reset/" in to_old.body
    link = LINK.search(to_new.body)
    assert link is not None and not LINK.search(to_old.body)

    opened = client.get(link.group(0))
    assert opened.status_code == 200
    assert "You sign in as <strong>new@example.com</strong>" in opened.content.decode()
    person.refresh_from_db()
    assert person.email == "new@example.com"
    assert person.email_verified_at is not None
    client.logout()
    assert client.login(email="New@Example.com", password=PASSWORD)
    # Used once: the account's address moved, so the link is worthless now.
    assert client.get(link.group(0)).status_code == 400


def test_only_the_newest_link_works_and_only_once(client, person, mailoutbox):
    """A typo'd request's link must not move the account once a newer one was asked for, and
    a used link must not work again when the address comes back to what it named."""
    _ask(client, "typo@example.com")
    _ask(client, "right@example.com")
    typo, right = LINK.search(mailoutbox[0].body), LINK.search(mailoutbox[2].body)
    assert typo is not None and right is not None
    assert client.get(typo.group(0)).status_code == 400
    person.refresh_from_db()
    assert person.email == "old@example.com"
    assert client.get(right.group(0)).status_code == 200
    person.refresh_from_db()
    assert person.email == "right@example.com"
    # And back: the first move's link names the address the account has again.
    mailoutbox.clear()
    client.force_login(person)
    _ask(client, "old@example.com")
    back = LINK.search(mailoutbox[0].body)
    assert back is not None and client.get(back.group(0)).status_code == 200
    person.refresh_from_db()
    assert person.email == "old@example.com"
    assert client.get(right.group(0)).status_code == 400
    person.refresh_from_db()
    assert person.email == "old@example.com"


def test_an_address_longer_than_the_column_is_refused(client, person, mailoutbox):
    long = "x" * 243 + "@example.com"  # 255 characters: the validator allows up to 320
    response = _ask(client, long)
    assert "Ensure this value has at most 254 characters" in response.content.decode()
    assert mailoutbox == []
    from console.services.users import email_change_request

    with pytest.raises(ValidationError, match="at most 254 characters"):
        email_change_request(user=person, new_email=long)


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("not-an-address", PASSWORD, "Enter a valid email address."),
        ("OLD@example.com", PASSWORD, "This is already your address."),
        ("taken@example.com", PASSWORD, "Another account uses this address."),
        ("new@example.com", "wrong", "Your current password was entered incorrectly."),
    ],
)
def test_bad_requests_say_why_and_send_nothing(
    client, person, mailoutbox, email, password, message
):
    UserFactory(email="taken@example.com")
    response = _ask(client, email, password)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert mailoutbox == []


def test_a_link_is_refused_once_someone_else_took_the_address_or_it_expired(
    client, person, mailoutbox, monkeypatch
):
    _ask(client, "new@example.com")
    link = LINK.search(mailoutbox[0].body).group(0)
    UserFactory(email="new@example.com")
    refused = client.get(link)
    assert refused.status_code == 400
    assert "Another account uses new@example.com by now." in refused.content.decode()

    User.objects.filter(email="new@example.com").delete()
    real_time = signing.time.time
    monkeypatch.setattr(signing.time, "time", lambda: real_time() + 4 * 86400)
    expired = client.get(link)
    assert expired.status_code == 400 and "expired" in expired.content.decode()
    person.refresh_from_db()
    assert person.email == "old@example.com"


def test_a_tampered_link_changes_nothing(client, person, mailoutbox):
    _ask(client, "new@example.com")
    link = LINK.search(mailoutbox[0].body).group(0)
    assert client.get(link[:-3] + "xx/").status_code == 400
    person.refresh_from_db()
    assert person.email == "old@example.com"


def test_a_link_that_cannot_be_sent_changes_nothing_and_can_be_asked_for_again(
    client, person, settings, mailoutbox
):
    assert (
        "We sent a link to first@example.com" in _ask(client, "first@example.com").content.decode()
    )
    first_link = LINK.search(mailoutbox[0].body)
    assert first_link is not None
    settings.EMAIL_BACKEND = "tests.mail_down.DownBackend"
    response = _ask(client, "second@example.com")
    assert response.status_code == 400
    assert "could not send the link to second@example.com" in response.content.decode()
    person.refresh_from_db()
    assert person.email_change_to == "first@example.com"  # the link already sent still works
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert (
        "We sent a link to second@example.com"
        in _ask(client, "second@example.com").content.decode()
    )


def test_at_most_five_address_changes_an_hour_are_sent(client, person, mailoutbox):
    """Each request mails the address typed and the person's own: past the limit nothing is
    sent or changed, and the last link sent still works."""
    for n in range(5):
        assert _ask(client, f"try{n}@example.com").status_code == 200
    assert len(mailoutbox) == 10
    refused = _ask(client, "victim@example.com")
    assert refused.status_code == 400
    assert "You asked for 5 address changes in the last hour" in refused.content.decode()
    assert len(mailoutbox) == 10
    person.refresh_from_db()
    assert person.email_change_to == "try4@example.com"
    link = LINK.search(mailoutbox[-2].body)
    assert link is not None and client.get(link.group(0)).status_code == 200
    person.refresh_from_db()
    assert person.email == "try4@example.com"
