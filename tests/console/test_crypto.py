"""Secrets sealed at rest: one key per purpose, and the external endpoints' key derivation kept
as it was (keys stored before still open)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

from console.crypto import Sealer
from inference.routing.secrets import secret_decrypt, secret_encrypt


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
