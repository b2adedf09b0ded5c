"""Secrets sealed at rest: one key per purpose, the external endpoints' key derivation kept as it
was (keys stored before still open), and key rotation that leaves stored secrets readable until
they are sealed again with the current key."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from console.crypto import Sealer
from console.models import Organisation, User, WebhookEndpoint
from console.services import two_factor, webhooks
from inference.gateway.snapshot import snapshot_build
from inference.models import ExternalEndpoint
from inference.routing.secrets import secret_decrypt, secret_encrypt

OLD_SECRET_KEY = "the-secret-key-before-rotation-0123456789-abcdefghijklmnop"
NEW_SECRET_KEY = "the-secret-key-after-rotation-0123456789-qrstuvwxyzabcdefg"


def test_endpoint_keys_use_the_same_key_as_before():
    digest = hashlib.sha256(b"external-endpoint-keys:" + settings.SECRET_KEY.encode()).digest()
    earlier = Fernet(base64.urlsafe_b64encode(digest))
    assert secret_decrypt(earlier.encrypt(b"sk-stored-long-ago").decode()) == "sk-stored-long-ago"
    assert earlier.decrypt(secret_encrypt("sk-new").encode()) == b"sk-new"


def test_each_purpose_has_its_own_key():
    a, b = Sealer("purpose-a", "UNSET_VARIABLE_A"), Sealer("purpose-b", "UNSET_VARIABLE_B")
    token = a.seal("secret")
    assert "secret" not in token and a.open(token) == "secret"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        b.open(token)
    assert a.seal("") == "" and a.open("") == ""


def test_a_configured_key_wins(monkeypatch):
    key = Fernet.generate_key()
    monkeypatch.setenv("CONFIGURED_TEST_KEY", key.decode())
    token = Sealer("purpose-c", "CONFIGURED_TEST_KEY").seal("x")
    assert Fernet(key).decrypt(token.encode()) == b"x"


def test_secrets_sealed_under_a_rotated_secret_key_open_while_it_is_a_fallback(settings):
    sealer = Sealer("purpose-d", "UNSET_VARIABLE_D")
    settings.SECRET_KEY = OLD_SECRET_KEY
    token = sealer.seal("sk-partner")
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_SECRET_KEY, [OLD_SECRET_KEY]
    assert sealer.open(token) == "sk-partner"
    # New secrets are sealed with the key derived from the new secret key alone.
    settings.SECRET_KEY_FALLBACKS = []
    assert sealer.open(sealer.seal("sk-new")) == "sk-new"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        sealer.open(token)


def test_setting_an_encryption_key_for_the_first_time_keeps_stored_secrets_readable(monkeypatch):
    sealer = Sealer("purpose-e", "CONFIGURED_TEST_KEY")
    derived = sealer.seal("sk-stored-before")
    key = Fernet.generate_key()
    monkeypatch.setenv("CONFIGURED_TEST_KEY", key.decode())
    assert sealer.open(derived) == "sk-stored-before"
    assert Fernet(key).decrypt(sealer.seal("sk-new").encode()) == b"sk-new"


def test_the_first_of_several_configured_keys_seals_and_every_one_opens(monkeypatch):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    monkeypatch.setenv("CONFIGURED_TEST_KEY", f"{new.decode()}, {old.decode()}")
    sealer = Sealer("purpose-f", "CONFIGURED_TEST_KEY")
    assert sealer.open(Fernet(old).encrypt(b"sealed-with-old").decode()) == "sealed-with-old"
    assert Fernet(new).decrypt(sealer.seal("x").encode()) == b"x"


def test_a_malformed_configured_key_is_refused_by_its_variable_and_never_echoed(monkeypatch):
    good = Fernet.generate_key().decode()
    monkeypatch.setenv("CONFIGURED_TEST_KEY", f"{good},not-a-fernet-key")
    with pytest.raises(ImproperlyConfigured, match=r"CONFIGURED_TEST_KEY .* key 2 is not one") as e:
        Sealer("purpose-g", "CONFIGURED_TEST_KEY").seal("x")
    assert "not-a-fernet-key" not in str(e.value)


def _store_secrets(org: Organisation, owner: User) -> tuple[ExternalEndpoint, WebhookEndpoint]:
    endpoint = ExternalEndpoint.objects.create(
        org=org,
        name="partner",
        base_url="https://api.example.com/v1",
        model="large",
        api_key_encrypted=secret_encrypt("sk-partner-secret"),
    )
    hook = WebhookEndpoint.objects.create(
        org=org,
        url="https://hooks.example.com/in",
        secret_encrypted=webhooks._SECRETS.seal("whsec_signing"),
    )
    owner.totp_secret_encrypted = two_factor._SECRETS.seal("JBSWY3DPEHPK3PXP")
    owner.save(update_fields=["totp_secret_encrypted"])
    return endpoint, hook


def test_the_gateway_keeps_external_endpoints_across_a_secret_key_rotation(settings, org, owner):
    settings.SECRET_KEY = OLD_SECRET_KEY
    _store_secrets(org, owner)
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_SECRET_KEY, [OLD_SECRET_KEY]
    external = snapshot_build(1).catalogue(org.id).externals["partner"]
    assert external.api_key == "sk-partner-secret"


def test_resealing_lets_the_old_secret_key_go(settings, org, owner):
    settings.SECRET_KEY = OLD_SECRET_KEY
    endpoint, hook = _store_secrets(org, owner)
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_SECRET_KEY, [OLD_SECRET_KEY]
    out = io.StringIO()
    call_command("secrets_reseal", stdout=out)
    assert "external endpoint keys: 1 resealed" in out.getvalue()
    assert "webhook signing secrets: 1 resealed" in out.getvalue()
    assert "two-factor secrets: 1 resealed" in out.getvalue()

    settings.SECRET_KEY_FALLBACKS = []
    endpoint.refresh_from_db()
    hook.refresh_from_db()
    owner.refresh_from_db()
    assert secret_decrypt(endpoint.api_key_encrypted) == "sk-partner-secret"
    assert webhooks._SECRETS.open(hook.secret_encrypted) == "whsec_signing"
    assert two_factor._SECRETS.open(owner.totp_secret_encrypted) == "JBSWY3DPEHPK3PXP"


def test_resealing_moves_secrets_to_a_newly_set_encryption_key(monkeypatch, org, owner):
    endpoint, _ = _store_secrets(org, owner)
    key = Fernet.generate_key()
    monkeypatch.setenv("ENDPOINT_KEY_ENCRYPTION_KEY", key.decode())
    call_command("secrets_reseal", stdout=io.StringIO())
    endpoint.refresh_from_db()
    assert Fernet(key).decrypt(endpoint.api_key_encrypted.encode()) == b"sk-partner-secret"


def test_a_secret_no_key_can_read_is_named_and_left_as_it_was(settings, org, owner):
    settings.SECRET_KEY = OLD_SECRET_KEY
    endpoint, _ = _store_secrets(org, owner)
    settings.SECRET_KEY = NEW_SECRET_KEY  # the old one dropped too soon
    err = io.StringIO()
    with pytest.raises(CommandError, match="3 stored secret"):
        call_command("secrets_reseal", stdout=io.StringIO(), stderr=err)
    assert f"external endpoint keys: {endpoint.pk}: no configured key can read it" in err.getvalue()
    sealed = endpoint.api_key_encrypted
    endpoint.refresh_from_db()
    assert endpoint.api_key_encrypted == sealed
