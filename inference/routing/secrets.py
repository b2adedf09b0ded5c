"""Encryption at rest for external endpoints' API keys (console/crypto.py).

The key comes from ``ENDPOINT_KEY_ENCRYPTION_KEY`` when set, otherwise it is derived from
``DJANGO_SECRET_KEY``; rotating either makes stored keys unreadable, so the gateway skips such
endpoints and logs it.
"""

from __future__ import annotations

from console.crypto import Sealer

_ENDPOINT_KEYS = Sealer("external-endpoint-keys", "ENDPOINT_KEY_ENCRYPTION_KEY")


def secret_encrypt(plain: str) -> str:
    return _ENDPOINT_KEYS.seal(plain)


def secret_decrypt(token: str) -> str:
    """The plain secret; raises ValueError when the token cannot be read with the current key."""
    return _ENDPOINT_KEYS.open(token)
