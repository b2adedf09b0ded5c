from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.apps import apps
from django.core import serializers
from django.core.exceptions import ValidationError
from django.utils import timezone

from console.models import ApiKey, AuditEvent
from console.services.keys import (
    KeyAuthError,
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    api_key_touch,
    key_digest,
)
from console.services.orgs import org_reactivate, org_suspend


def test_created_key_is_shown_once_and_only_its_digest_is_stored(org, owner):
    created = api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    assert created.secret.startswith("sk-")
    assert len(created.secret) >= 3 + 43  # 32 random bytes, url-safe base64
    key = ApiKey.objects.get(pk=created.key.pk)
    assert key.digest == key_digest(created.secret)
    assert key.prefix == created.secret[:10]
    assert created.secret not in {key.digest, key.prefix, key.name}


def test_no_plaintext_key_in_database_or_logs(org, owner, client_for, caplog):
    caplog.set_level(logging.DEBUG)
    response = client_for(owner).post(
        f"/api/orgs/{org.slug}/keys/",
        {"name": "deploy", "scopes": ["manage"]},
        content_type="application/json",
    )
    assert response.status_code == 201
    secret = response.json()["key"]
    assert response["Cache-Control"] == "no-store"
    # Authenticate with it too, so the authentication path is in the logs as well.
    assert (
        client_for(owner).get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    )
    everything = "".join(
        serializers.serialize("json", model.objects.all()) for model in apps.get_models()
    )
    assert secret not in everything
    assert secret[10:30] not in everything
    assert secret not in caplog.text
    # Listing keys afterwards never shows it again.
    listing = client_for(owner).get(f"/api/orgs/{org.slug}/keys/")
    assert secret not in listing.content.decode()


def test_authenticate_returns_org_key_and_scopes(org, owner):
    created = api_key_create(org=org, actor=owner, name="ci", scopes=["inference", "read"])
    auth = api_key_authenticate(created.secret)
    assert auth.org == org
    assert auth.key.pk == created.key.pk
    assert auth.scopes == ("inference", "read")


@pytest.mark.parametrize("raw", ["", "sk-", "sk-unknown", "not-a-key", "sk-" + "x" * 300])
def test_unknown_keys_are_refused(db, raw):
    with pytest.raises(KeyAuthError) as error:
        api_key_authenticate(raw)
    assert error.value.reason == "unknown"


def test_revoked_key_is_refused_at_once(org, owner):
    created = api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    api_key_revoke(key=created.key, actor=owner)
    with pytest.raises(KeyAuthError) as error:
        api_key_authenticate(created.secret)
    assert error.value.reason == "revoked"
    assert AuditEvent.objects.filter(org=org, action="key.revoked").count() == 1
    # Revoking twice changes nothing and audits nothing more.
    api_key_revoke(key=created.key, actor=owner)
    assert AuditEvent.objects.filter(org=org, action="key.revoked").count() == 1


def test_expired_key_is_refused(org, owner):
    created = api_key_create(
        org=org,
        actor=owner,
        name="ci",
        scopes=["inference"],
        expires_at=timezone.now() + timedelta(hours=1),
    )
    ApiKey.objects.filter(pk=created.key.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(KeyAuthError) as error:
        api_key_authenticate(created.secret)
    assert error.value.reason == "expired"


def test_suspended_org_keys_are_refused_and_work_again_after_reactivation(org, owner):
    created = api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    org_suspend(org=org, reason="payment failed")
    with pytest.raises(KeyAuthError) as error:
        api_key_authenticate(created.secret)
    assert error.value.reason == "suspended"
    assert "payment failed" in str(error.value)
    org_reactivate(org=org)
    assert api_key_authenticate(created.secret).org == org


def test_last_used_is_written_at_most_once_a_minute(org, owner):
    key = api_key_create(org=org, actor=owner, name="ci", scopes=["inference"]).key
    now = timezone.now()
    assert api_key_touch(key, now=now) is True
    assert api_key_touch(key, now=now + timedelta(seconds=30)) is False
    assert api_key_touch(key, now=now + timedelta(seconds=61)) is True
    key.refresh_from_db()
    assert key.last_used_at == now + timedelta(seconds=61)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "  "}, "name"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"tpm_limit": -5}, "tpm_limit"),
        ({"expires_at": timezone.now() - timedelta(days=1)}, "expires_at"),
    ],
)
def test_bad_key_input_is_refused_and_changes_nothing(org, owner, kwargs, field):
    params = {"name": "ok", "scopes": ["inference"], **kwargs}
    with pytest.raises(ValidationError) as error:
        api_key_create(org=org, actor=owner, **params)
    assert field in error.value.message_dict
    assert ApiKey.objects.count() == 0
    assert not AuditEvent.objects.filter(action="key.created").exists()
