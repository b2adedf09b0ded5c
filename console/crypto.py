"""Encryption at rest for secrets the platform must read back (Fernet: AES-128-CBC with
HMAC-SHA256): external endpoints' API keys, two-factor authentication secrets.

Each purpose has its own key: from an environment variable (a Fernet key, 32 url-safe base64
bytes) when set, otherwise derived from ``DJANGO_SECRET_KEY`` and the purpose's name. Rotating
either makes what was stored under it unreadable.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from console.envvars import env_str


@lru_cache(maxsize=8)
def _fernet(purpose: str, env_name: str, secret_key: str) -> Fernet:
    configured = env_str(env_name)
    if configured:
        return Fernet(configured.encode())
    digest = hashlib.sha256(purpose.encode() + b":" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


class Sealer:
    """Encrypts and decrypts one purpose's secrets."""

    def __init__(self, purpose: str, env_name: str) -> None:
        self.purpose = purpose
        self.env_name = env_name

    def _key(self) -> Fernet:
        return _fernet(self.purpose, self.env_name, settings.SECRET_KEY)

    def seal(self, plain: str) -> str:
        return self._key().encrypt(plain.encode()).decode() if plain else ""

    def open(self, token: str) -> str:
        """The plain secret; ValueError when the token cannot be read with the current key."""
        if not token:
            return ""
        try:
            return self._key().decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("the stored secret cannot be decrypted with the current key") from None
