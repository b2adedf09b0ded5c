"""Encryption at rest for external endpoints' API keys (Fernet: AES-128-CBC with HMAC-SHA256).

The Fernet key comes from ``ENDPOINT_KEY_ENCRYPTION_KEY`` (a Fernet key, 32 url-safe base64
bytes) when set, otherwise it is derived from ``DJANGO_SECRET_KEY``; rotating either makes stored
keys unreadable, so the gateway skips such endpoints and logs it.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from console.envvars import env_str


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    configured = env_str("ENDPOINT_KEY_ENCRYPTION_KEY")
    if configured:
        return Fernet(configured.encode())
    digest = hashlib.sha256(b"external-endpoint-keys:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def secret_encrypt(plain: str) -> str:
    if not plain:
        return ""
    return _fernet().encrypt(plain.encode()).decode()


def secret_decrypt(token: str) -> str:
    """The plain secret; raises ValueError when the token cannot be read with the current key."""
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("the stored secret cannot be decrypted with the current key") from None
