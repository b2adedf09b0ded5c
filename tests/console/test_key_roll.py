"""Rolling a key: a new secret for the same key, the old one working for a grace period."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.models import ApiKey, AuditEvent
from console.services.keys import (
    KeyAuthError,
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    api_key_roll,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def created(org, owner):  # type: ignore[no-untyped-def]
    return api_key_create(
        org=org, actor=owner, name="app", scopes=["inference", "read"], rpm_limit=60
    )


def _works(secret: str) -> bool:
    try:
        api_key_authenticate(secret)
    except KeyAuthError:
        return False
    return True


def test_the_old_secret_works_until_the_grace_period_ends(org, owner, created):
    rolled = api_key_roll(key=created.key, actor=owner, grace_hours=24)
    key = ApiKey.objects.get(pk=created.key.pk)
    assert rolled.secret != created.secret and key.prefix == rolled.secret[:10]
    assert key.previous_prefix == created.secret[:10] and key.previous_active
    assert (key.name, key.scopes, key.rpm_limit) == ("app", ["inference", "read"], 60)
    assert _works(rolled.secret) and _works(created.secret)
    assert api_key_authenticate(created.secret).key.pk == key.pk
    event = AuditEvent.objects.get(org=org, action="key.rolled")
    assert event.data == {"prefix": key.prefix, "replaced": key.previous_prefix, "grace_hours": 24}
    assert created.secret not in str(event.data) and rolled.secret not in str(event.data)
    ApiKey.objects.filter(pk=key.pk).update(previous_expires_at=timezone.now() - timedelta(1))
    assert not _works(created.secret) and _works(rolled.secret)


def test_no_grace_stops_the_old_secret_at_once_and_a_second_roll_ends_the_first_grace(
    owner, created
):
    first = api_key_roll(key=created.key, actor=owner, grace_hours=168)
    second = api_key_roll(key=created.key, actor=owner, grace_hours=1)
    assert not _works(created.secret) and _works(first.secret) and _works(second.secret)
    third = api_key_roll(key=created.key, actor=owner, grace_hours=0)
    assert [_works(s.secret) for s in (first, second, third)] == [False, False, True]
    assert not ApiKey.objects.get(pk=created.key.pk).previous_digest


@pytest.mark.parametrize("grace", [-1, 169, True, "24", None])
def test_a_bad_grace_period_changes_nothing(owner, created, grace):
    with pytest.raises(ValidationError) as caught:
        api_key_roll(key=created.key, actor=owner, grace_hours=grace)
    assert "grace_hours" in caught.value.message_dict
    assert ApiKey.objects.get(pk=created.key.pk).prefix == created.secret[:10]
    assert _works(created.secret)


def test_a_revoked_key_cannot_be_rolled(owner, created):
    api_key_revoke(key=created.key, actor=owner)
    with pytest.raises(ValidationError, match="cannot be rolled"):
        api_key_roll(key=created.key, actor=owner, grace_hours=1)


def test_the_console_shows_the_new_secret_once(org, owner, viewer, created, client_for):
    client = client_for(owner)
    url = reverse("key_roll", args=[org.slug, created.key.id])
    response = client.post(url, {"grace_hours": "24"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    secret = response.context["rolled"].secret
    assert secret.encode() in response.content and _works(secret)
    assert b"keeps working until" in response.content
    listing = client.get(reverse("key_list", args=[org.slug])).content.decode()
    assert secret not in listing and f"old secret <code>{created.secret[:10]}" in listing
    # A refused choice says why and changes nothing.
    bad = client.post(url, {"grace_hours": "forever"}, follow=True)
    assert b"Choose how long the old key keeps working." in bad.content
    assert _works(secret)
    # Viewers may not.
    assert client_for(viewer).post(url, {"grace_hours": "0"}).status_code == 403
    assert _works(secret)


def test_the_rest_api_rolls_a_key(org, owner, created):
    manager = api_key_create(org=org, actor=owner, name="ops", scopes=["manage"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {manager.secret}")
    url = f"/api/orgs/{org.slug}/keys/{created.key.id}/roll/"
    response = client.post(url, {"grace_hours": 2}, content_type="application/json")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    body = response.json()
    assert _works(body["key"]) and body["previous_prefix"] == created.secret[:10]
    assert body["id"] == str(created.key.id) and body["previous_expires_at"]
    refused = client.post(url, {"grace_hours": 500}, content_type="application/json")
    assert refused.status_code == 400 and "grace_hours" in refused.json()["error"]["fields"]
    event = AuditEvent.objects.filter(action="key.rolled").latest("created_at")
    assert event.actor_key_id == manager.key.id
