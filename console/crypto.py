"""Encryption at rest for secrets the platform must read back (Fernet: AES-128-CBC with
HMAC-SHA256): external endpoints' API keys, webhooks' signing secrets, two-factor secrets.

Each purpose has its own keys. Its variable (``ENDPOINT_KEY_ENCRYPTION_KEY``, ...) holds
comma-separated Fernet keys: the first encrypts, all of them decrypt. Without it, the key is
derived from ``DJANGO_SECRET_KEY`` and the purpose's name. Keys derived from the secret key and
from each of ``DJANGO_SECRET_KEY_FALLBACKS`` always decrypt too, after the configured ones: so
rotating the secret key (the old one kept as a fallback), adding a key to the variable, or
setting the variable for the first time leaves every stored secret readable. ``manage.py
secrets_reseal`` then encrypts them all with the current key, after which older keys can go
(docs/operations.md, "Rotating secret keys").
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db.models import QuerySet

from console.envvars import env_fernet_keys


def _derived(purpose: str, secret_key: str) -> Fernet:
    digest = hashlib.sha256(purpose.encode() + b":" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


@lru_cache(maxsize=16)
def _keys(
    purpose: str, configured: tuple[str, ...], secret_key: str, fallbacks: tuple[str, ...]
) -> MultiFernet:
    derived = [_derived(purpose, key) for key in (secret_key, *fallbacks)]
    return MultiFernet([*(Fernet(key.encode()) for key in configured), *derived])


class Sealer:
    """Encrypts and decrypts one purpose's secrets."""

    def __init__(self, purpose: str, env_name: str) -> None:
        self.purpose = purpose
        self.env_name = env_name

    def _keys(self) -> MultiFernet:
        return _keys(
            self.purpose,
            tuple(env_fernet_keys(self.env_name)),
            settings.SECRET_KEY,
            tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ())),
        )

    def seal(self, plain: str) -> str:
        return self._keys().encrypt(plain.encode()).decode() if plain else ""

    def open(self, token: str) -> str:
        """The plain secret; ValueError when no current or older key can read the token."""
        if not token:
            return ""
        try:
            return self._keys().decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError(_UNREADABLE) from None

    def reseal(self, token: str) -> str:
        """``token`` encrypted again with the current key; ValueError when no key can read it."""
        if not token:
            return ""
        try:
            return self._keys().rotate(token.encode()).decode()
        except InvalidToken:
            raise ValueError(_UNREADABLE) from None


@dataclass
class Resealed:
    """What ``rows_reseal`` did to one kind of stored secret."""

    what: str
    resealed: int = 0
    # Primary keys of rows that no configured key can read (their secret must be set again).
    unreadable: list[Any] = field(default_factory=list)


def rows_reseal(sealer: Sealer, rows: QuerySet[Any], column: str, what: str) -> Resealed:
    """Encrypt ``column`` of each of ``rows`` again with ``sealer``'s current key. A row is
    written only if the column is as it was read: one changed in between was sealed with the
    current key already."""
    done = Resealed(what)
    for pk, token in rows.exclude(**{column: ""}).values_list("pk", column).iterator():
        try:
            fresh = sealer.reseal(token)
        except ValueError:
            done.unreadable.append(pk)
            continue
        done.resealed += rows.filter(pk=pk, **{column: token}).update(**{column: fresh})
    return done


_UNREADABLE = "the stored secret cannot be decrypted with the current key or any older one"
