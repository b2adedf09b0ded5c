"""API keys: creation (shown once), revocation, and authentication of a presented key.

Only the SHA-256 digest and a short visible prefix are stored. Nothing here logs a key.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from console.models import ApiKey, Organisation, Scope, User
from console.services.audit import audit_record
from console.snapshot import snapshot_bump

KEY_PREFIX = "sk-"
VISIBLE_PREFIX_LENGTH = 10  # "sk-" plus 7 random characters, enough to tell keys apart
LAST_USED_RESOLUTION = timedelta(minutes=1)


def key_digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # the full key; the caller shows it once and forgets it


def _validate_limit(field: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError({field: "Enter a whole number of at least 1, or leave it empty."})
    return value


@transaction.atomic
def api_key_create(
    *,
    org: Organisation,
    actor: User | None,
    name: str,
    scopes: list[str],
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    actor_key: ApiKey | None = None,
) -> CreatedKey:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Enter a name for the key."})
    if len(name) > 100:
        raise ValidationError({"name": "Use at most 100 characters."})
    if not scopes:
        raise ValidationError({"scopes": "Choose at least one scope."})
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ValidationError({"scopes": f"Unknown scope(s): {', '.join(unknown)}."})
    models_list = [m.strip() for m in (allowed_models or []) if m and m.strip()]
    if any(len(m) > 200 for m in models_list):
        raise ValidationError({"allowed_models": "A model name is at most 200 characters."})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    rpm = _validate_limit("rpm_limit", rpm_limit)
    tpm = _validate_limit("tpm_limit", tpm_limit)

    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        org=org,
        name=name,
        prefix=secret[:VISIBLE_PREFIX_LENGTH],
        digest=key_digest(secret),
        scopes=sorted(set(scopes)),
        allowed_models=sorted(set(models_list)),
        expires_at=expires_at,
        rpm_limit=rpm,
        tpm_limit=tpm,
        created_by=actor,
    )
    audit_record(
        org=org,
        action="key.created",
        actor=actor,
        actor_key=actor_key,
        target=key,
        data={"scopes": key.scopes, "prefix": key.prefix},
    )
    snapshot_bump()
    return CreatedKey(key=key, secret=secret)


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: User | None, actor_key: ApiKey | None = None) -> ApiKey:
    """Revoke a key. Authentication checks the row, so it stops working at once."""
    changed = ApiKey.objects.filter(pk=key.pk, revoked_at=None).update(revoked_at=timezone.now())
    key.refresh_from_db()
    if changed:
        audit_record(
            org=key.org,
            action="key.revoked",
            actor=actor,
            actor_key=actor_key,
            target=key,
            data={"prefix": key.prefix},
        )
        snapshot_bump()
    return key


class KeyAuthError(Exception):
    """Why a presented key was refused: ``unknown``, ``revoked``, ``expired`` or ``suspended``."""

    MESSAGES = {
        "unknown": "Invalid API key.",
        "revoked": "This API key has been revoked.",
        "expired": "This API key has expired.",
        "suspended": "This organisation is suspended",
    }

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        message = self.MESSAGES[reason]
        super().__init__(f"{message}: {detail}" if detail else message)


@dataclass(frozen=True)
class KeyAuth:
    org: Organisation
    key: ApiKey
    scopes: tuple[str, ...]


def api_key_authenticate(raw_key: str) -> KeyAuth:
    """Return who a presented key belongs to, or raise KeyAuthError with the reason."""
    if not raw_key or not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 200:
        raise KeyAuthError("unknown")
    key = ApiKey.objects.select_related("org").filter(digest=key_digest(raw_key)).first()
    if key is None:
        raise KeyAuthError("unknown")
    if key.revoked_at is not None:
        raise KeyAuthError("revoked")
    if key.expires_at is not None and key.expires_at <= timezone.now():
        raise KeyAuthError("expired")
    if key.org.is_suspended:
        raise KeyAuthError("suspended", key.org.suspended_reason)
    api_key_touch(key)
    return KeyAuth(org=key.org, key=key, scopes=tuple(key.scopes))


def api_key_touch(key: ApiKey, now: datetime | None = None) -> bool:
    """Record use, writing at most once a minute per key. Returns whether a write happened."""
    now = now or timezone.now()
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    written = ApiKey.objects.filter(stale, pk=key.pk).update(last_used_at=now)
    if written:
        key.last_used_at = now
    return bool(written)
