"""Encryption at rest for external endpoints' API keys (console/crypto.py).

The keys come from ``ENDPOINT_KEY_ENCRYPTION_KEY`` when set, otherwise from
``DJANGO_SECRET_KEY``, with the older ones still decrypting (console/crypto.py). A stored key
that none of them can read makes the gateway skip that endpoint and log it.
"""

from __future__ import annotations

from console.crypto import Resealed, Sealer, rows_reseal

_ENDPOINT_KEYS = Sealer("external-endpoint-keys", "ENDPOINT_KEY_ENCRYPTION_KEY")


def secret_encrypt(plain: str) -> str:
    return _ENDPOINT_KEYS.seal(plain)


def secret_decrypt(token: str) -> str:
    """The plain secret; raises ValueError when the token cannot be read with the current key."""
    return _ENDPOINT_KEYS.open(token)


def endpoint_keys_reseal() -> Resealed:
    """Encrypt every stored external endpoint key again with the current key."""
    from inference.models import ExternalEndpoint

    return rows_reseal(
        _ENDPOINT_KEYS,
        ExternalEndpoint.objects.all(),
        "api_key_encrypted",
        "external endpoint keys",
    )
