"""API keys: creation (shown once), editing, rolling, revocation, and authentication of a
presented key.

Only the SHA-256 digest and a short visible prefix are stored. Nothing here logs a key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict, Unpack

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from console.models import ApiKey, Membership, Organisation, Scope, User
from console.permissions import MATRIX, SCOPE_MATRIX, Action
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


# The largest per-minute limit a key can have (the column's range).
MAX_KEY_LIMIT = 2**31 - 1


def _validate_limit(field: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEY_LIMIT:
        raise ValidationError(
            {field: f"Enter a whole number from 1 to {MAX_KEY_LIMIT:,}, or leave it empty."}
        )
    return value


# The checks below are shared by creation and editing, so that an edit can never store what
# creation would have refused.


def _clean_name(name: str | None) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Enter a name for the key."})
    if len(name) > 100:
        raise ValidationError({"name": "Use at most 100 characters."})
    return name


def _clean_scopes(scopes: list[str] | None) -> list[str]:
    if not scopes:
        raise ValidationError({"scopes": "Choose at least one scope."})
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ValidationError({"scopes": f"Unknown scope(s): {', '.join(unknown)}."})
    return sorted(set(scopes))


def _clean_allowed_models(allowed_models: list[str] | None) -> list[str]:
    models_list = [m.strip() for m in (allowed_models or []) if m and m.strip()]
    if any(len(m) > 200 for m in models_list):
        raise ValidationError({"allowed_models": "A model name is at most 200 characters."})
    return sorted(set(models_list))


MAX_ALLOWED_NETWORKS = 50


def _clean_allowed_ips(allowed_ips: list[str] | None) -> list[str]:
    """Addresses or networks (``203.0.113.7``, ``10.0.0.0/8``, ``2001:db8::/32``), normalised;
    a network given with host bits set is taken as the network that holds them."""
    cleaned: list[str] = []
    for raw in allowed_ips or []:
        text = (raw or "").strip()
        if not text:
            continue
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValidationError(
                {"allowed_ips": f"“{text[:60]}” is not an IP address or network (CIDR)."}
            ) from None
        cleaned.append(str(network))
    unique = sorted(set(cleaned), key=lambda n: (":" in n, n))
    if len(unique) > MAX_ALLOWED_NETWORKS:
        raise ValidationError(
            {"allowed_ips": f"At most {MAX_ALLOWED_NETWORKS} addresses or networks."}
        )
    return unique


def ip_allowed(networks: list[str], address: str | None) -> bool:
    """Whether ``address`` is inside one of ``networks`` (an empty list allows every address)."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n) for n in networks)


def _clean_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    return expires_at


def _actor_powers(
    org: Organisation, actor: User | None, actor_key: ApiKey | None
) -> tuple[str, frozenset[Action]] | None:
    """Who is acting, in words, and what they may do in ``org``; None for the platform itself
    (a management command, staff), which is not limited here."""
    if actor_key is not None:
        scopes = sorted(actor_key.scopes)
        powers = frozenset().union(*(SCOPE_MATRIX.get(s, frozenset()) for s in scopes))
        return f"A key with the scope(s) {', '.join(scopes)}", powers
    if actor is None or not actor.is_authenticated:
        return None
    role = Membership.objects.filter(org=org, user=actor).values_list("role", flat=True).first()
    if role is None:
        return None  # staff acting from outside the organisation
    return f"Your role ({role})", MATRIX.get(role, frozenset())


def _check_may_hold(
    org: Organisation,
    actor: User | None,
    actor_key: ApiKey | None,
    scopes: list[str],
    doing: str,
) -> None:
    """A key's secret carries its scopes' powers: whoever receives one (creating or rolling the
    key) must already have them, or a developer could hand themselves an admin's reach."""
    acting = _actor_powers(org, actor, actor_key)
    if acting is None:
        return
    who, powers = acting
    for scope in scopes:
        beyond = SCOPE_MATRIX.get(scope, frozenset()) - powers
        if beyond:
            allows = ", ".join(sorted(str(action) for action in beyond))
            message = (
                f"{who} cannot {doing} a key with the '{scope}' scope: it allows {allows}, "
                "which you may not do. Ask an owner or admin."
            )
            raise ValidationError({"scopes": message} if doing == "create" else message)


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
    allowed_ips: list[str] | None = None,
    actor_key: ApiKey | None = None,
) -> CreatedKey:
    name = _clean_name(name)
    scopes = _clean_scopes(scopes)
    _check_may_hold(org, actor, actor_key, scopes, "create")
    models_list = _clean_allowed_models(allowed_models)
    networks = _clean_allowed_ips(allowed_ips)
    expires_at = _clean_expiry(expires_at)
    rpm = _validate_limit("rpm_limit", rpm_limit)
    tpm = _validate_limit("tpm_limit", tpm_limit)

    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        org=org,
        name=name,
        prefix=secret[:VISIBLE_PREFIX_LENGTH],
        digest=key_digest(secret),
        scopes=scopes,
        allowed_models=models_list,
        allowed_ips=networks,
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


class KeyChanges(TypedDict, total=False):
    """What ``api_key_update`` may change. ``None`` removes a limit or the expiry."""

    name: str
    scopes: list[str]
    allowed_models: list[str] | None
    allowed_ips: list[str] | None
    expires_at: datetime | None
    rpm_limit: int | None
    tpm_limit: int | None


EDITABLE_FIELDS = (
    "name",
    "scopes",
    "allowed_models",
    "allowed_ips",
    "expires_at",
    "rpm_limit",
    "tpm_limit",
)


def _audit_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@transaction.atomic
def api_key_update(
    *,
    key: ApiKey,
    actor: User | None,
    actor_key: ApiKey | None = None,
    **changes: Unpack[KeyChanges],
) -> ApiKey:
    """Change a key in place; the secret, its prefix and its digest stay, so programs using the
    key keep working and see the new models and limits within the gateways' next snapshot.

    Only the fields given change, each checked as ``api_key_create`` checks it; ``None`` for
    ``rpm_limit``, ``tpm_limit`` or ``expires_at`` removes that limit or the expiry. A new
    expiry must be in the future, which also lets an expired key be given a new lease; an
    expiry equal to the stored one is no change, so a client may send back what it read.

    Scopes can be narrowed but not widened. Creating a key with any scope needs the same
    permission, so widening would grant nothing new to the person editing; but it would hand
    new powers to every program that already holds the secret (an ``inference`` key spread
    over many servers would become a ``manage`` key able to create keys and invite members).
    Whoever needs a wider scope creates a key for it and gives it only where it is needed.

    A revoked key cannot be changed. Bad input raises ValidationError naming the field and
    changes nothing. Changes are audited as ``key.updated`` with each changed field's before
    and after; a call that changes nothing records nothing and does not disturb the gateways.
    """
    unknown = sorted(set(changes) - set(EDITABLE_FIELDS))
    if unknown:
        raise TypeError(f"api_key_update() cannot change {', '.join(unknown)}")
    # Locked, so that a concurrent edit or revocation is seen rather than overwritten.
    key.refresh_from_db(from_queryset=ApiKey.objects.select_for_update())
    if key.revoked_at is not None:
        raise ValidationError("This key has been revoked; a revoked key cannot be changed.")

    wanted: dict[str, Any] = {}
    if "name" in changes:
        wanted["name"] = _clean_name(changes["name"])
    if "scopes" in changes:
        scopes = _clean_scopes(changes["scopes"])
        added = sorted(set(scopes) - set(key.scopes))
        if added:
            raise ValidationError(
                {
                    "scopes": f"Scopes can be removed but not added ({', '.join(added)}): "
                    "create a new key for a wider scope."
                }
            )
        wanted["scopes"] = scopes
    if "allowed_models" in changes:
        wanted["allowed_models"] = _clean_allowed_models(changes["allowed_models"])
    if "allowed_ips" in changes:
        wanted["allowed_ips"] = _clean_allowed_ips(changes["allowed_ips"])
    if "expires_at" in changes and changes["expires_at"] != key.expires_at:
        wanted["expires_at"] = _clean_expiry(changes["expires_at"])
    if "rpm_limit" in changes:
        wanted["rpm_limit"] = _validate_limit("rpm_limit", changes["rpm_limit"])
    if "tpm_limit" in changes:
        wanted["tpm_limit"] = _validate_limit("tpm_limit", changes["tpm_limit"])

    changed = {
        field: {"before": _audit_value(getattr(key, field)), "after": _audit_value(value)}
        for field, value in wanted.items()
        if getattr(key, field) != value
    }
    if not changed:
        return key
    for field in changed:
        setattr(key, field, wanted[field])
    key.save(update_fields=list(changed))
    audit_record(
        org=key.org,
        action="key.updated",
        actor=actor,
        actor_key=actor_key,
        target=key,
        data=changed,
    )
    snapshot_bump()
    return key


# The longest a replaced secret may keep working after a roll.
MAX_ROLL_GRACE_HOURS = 7 * 24


@transaction.atomic
def api_key_roll(
    *, key: ApiKey, actor: User | None, grace_hours: int, actor_key: ApiKey | None = None
) -> CreatedKey:
    """Give the key a new secret; everything else (id, name, scopes, models, limits, budget,
    usage history) stays. The replaced secret keeps working for ``grace_hours`` (0 to 168) so
    that programs can move over without an outage; 0 stops it at once (a leaked secret). Only
    the secret just replaced has a grace period: rolling again ends an earlier one."""
    if isinstance(grace_hours, bool) or not isinstance(grace_hours, int):
        raise ValidationError({"grace_hours": "Enter a whole number of hours."})
    if not 0 <= grace_hours <= MAX_ROLL_GRACE_HOURS:
        raise ValidationError(
            {"grace_hours": f"Enter a number of hours from 0 to {MAX_ROLL_GRACE_HOURS}."}
        )
    key.refresh_from_db(from_queryset=ApiKey.objects.select_for_update())
    if key.revoked_at is not None:
        raise ValidationError("This key has been revoked; a revoked key cannot be rolled.")
    _check_may_hold(key.org, actor, actor_key, list(key.scopes), "roll")
    now = timezone.now()
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    replaced = key.prefix
    if grace_hours:
        key.previous_digest, key.previous_prefix = key.digest, key.prefix
        key.previous_expires_at = now + timedelta(hours=grace_hours)
    else:
        key.previous_digest, key.previous_prefix, key.previous_expires_at = "", "", None
    key.digest = key_digest(secret)
    key.prefix = secret[:VISIBLE_PREFIX_LENGTH]
    key.rolled_at = now
    key.save(
        update_fields=[
            "digest",
            "prefix",
            "previous_digest",
            "previous_prefix",
            "previous_expires_at",
            "rolled_at",
        ]
    )
    audit_record(
        org=key.org,
        action="key.rolled",
        actor=actor,
        actor_key=actor_key,
        target=key,
        data={"prefix": key.prefix, "replaced": replaced, "grace_hours": grace_hours},
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
    """Why a presented key was refused: ``unknown``, ``revoked``, ``expired``, ``suspended`` or
    ``ip_not_allowed``."""

    MESSAGES = {
        "unknown": "Invalid API key.",
        "revoked": "This API key has been revoked.",
        "expired": "This API key has expired.",
        "suspended": "This organisation is suspended",
        "ip_not_allowed": "This API key may not be used from this address",
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


def api_key_authenticate(raw_key: str, client_ip: str | None = None) -> KeyAuth:
    """Return who a presented key belongs to, or raise KeyAuthError with the reason.
    ``client_ip`` is checked against the key's allowed networks, if it has any."""
    if not raw_key or not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 200:
        raise KeyAuthError("unknown")
    digest = key_digest(raw_key)
    key = ApiKey.objects.select_related("org").filter(digest=digest).first()
    if key is None:
        # A secret replaced by a roll works until its grace period ends.
        key = (
            ApiKey.objects.select_related("org")
            .filter(previous_digest=digest, previous_expires_at__gt=timezone.now())
            .first()
        )
    if key is None:
        raise KeyAuthError("unknown")
    if key.revoked_at is not None:
        raise KeyAuthError("revoked")
    if key.expires_at is not None and key.expires_at <= timezone.now():
        raise KeyAuthError("expired")
    if key.org.is_suspended:
        raise KeyAuthError("suspended", key.org.suspended_reason)
    if not ip_allowed(key.allowed_ips, client_ip):
        raise KeyAuthError("ip_not_allowed", client_ip or "unknown address")
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
