"""Two-factor authentication: an authenticator app's codes (TOTP) and single-use recovery codes.

Turning it on takes a code from the app, so a mistyped secret cannot lock anyone out. The secret
is stored encrypted (``TWO_FACTOR_ENCRYPTION_KEY``, or derived from ``DJANGO_SECRET_KEY``);
recovery codes only as SHA-256 digests. A code is accepted once: the last accepted step is
kept, and a recovery code is marked used. Wrong codes are counted per person in the cache: after
``MAX_FAILURES`` within ``FAILURE_WINDOW_S`` every code is refused until the window passes.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from console import totp
from console.crypto import Resealed, Sealer, rows_reseal
from console.models import Organisation, RecoveryCode, User
from console.services.audit import audit_record
from console.services.mail import mail_send
from console.services.throttle import failure_add, failures

_SECRETS = Sealer("two-factor-secrets", "TWO_FACTOR_ENCRYPTION_KEY")
RECOVERY_CODE_COUNT = 10
MAX_FAILURES = 10
FAILURE_WINDOW_S = 15 * 60
ISSUER = "Inference platform"


def _digest(code: str) -> str:
    return hashlib.sha256(_normalised(code).encode()).hexdigest()


def _normalised(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _new_recovery_codes(user: User) -> list[str]:
    """Replace the person's recovery codes with new ones; the plain codes are returned once."""
    codes = [
        f"{secrets.token_hex(4)[:4]}-{secrets.token_hex(4)[:4]}" for _ in range(RECOVERY_CODE_COUNT)
    ]
    RecoveryCode.objects.filter(user=user).delete()
    RecoveryCode.objects.bulk_create(RecoveryCode(user=user, digest=_digest(c)) for c in codes)
    return codes


@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str


def enrolment_start(*, user: User, secret: str | None = None) -> Enrolment:
    """A secret for the app to scan (a new one unless given). Nothing is stored until
    ``two_factor_enable``."""
    secret = secret or totp.new_secret()
    return Enrolment(secret, totp.provisioning_uri(secret, account=user.email, issuer=ISSUER))


def secret_seal(secret: str) -> str:
    """A secret being set up, sealed for the session until the person proves it."""
    return _SECRETS.seal(secret)


def secret_unseal(token: str) -> str | None:
    try:
        return _SECRETS.open(token) or None
    except ValueError:
        return None


def _failures_key(user: User) -> str:
    return f"two-factor-failures:{user.public_id}"


def _throttled(user: User) -> bool:
    return failures(_failures_key(user)) >= MAX_FAILURES


def _failed(user: User) -> None:
    failure_add(_failures_key(user), FAILURE_WINDOW_S)


TOO_MANY = "Too many wrong codes. Wait 15 minutes, then try again."


@transaction.atomic
def two_factor_enable(*, user: User, secret: str, code: str) -> list[str]:
    """Turn two-factor authentication on with ``secret`` once ``code`` proves the app has it.
    Returns the recovery codes, which are shown once."""
    if user.has_two_factor:
        raise ValidationError("Two-factor authentication is already on.")
    if _throttled(user):
        raise ValidationError({"code": TOO_MANY})
    step = totp.matching_step(secret, code, after_step=0)
    if step is None:
        _failed(user)
        raise ValidationError(
            {"code": "That code does not match. Check the app's clock and try the next code."}
        )
    User.objects.filter(pk=user.pk).update(
        totp_secret_encrypted=_SECRETS.seal(secret),
        totp_enabled_at=timezone.now(),
        totp_last_step=step,
    )
    user.refresh_from_db()
    codes = _new_recovery_codes(user)
    _notify(user, "Two-factor authentication was turned on for your account.")
    return codes


def code_check(*, user: User, code: str) -> bool:
    """Whether ``code`` (from the app, or an unused recovery code) is good for ``user`` now;
    a good code is used up. Wrong codes count towards the throttle."""
    if not user.has_two_factor or _throttled(user):
        return False
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        secret = _SECRETS.open(locked.totp_secret_encrypted)
        step = totp.matching_step(secret, code, after_step=locked.totp_last_step)
        if step is not None:
            User.objects.filter(pk=user.pk).update(totp_last_step=step)
            return True
        normalised = _normalised(code)
        if len(normalised) == 8:
            used = RecoveryCode.objects.filter(
                user=locked, digest=_digest(normalised), used_at=None
            ).update(used_at=timezone.now())
            if used:
                _notify(locked, "A recovery code was used to sign in to your account.")
                return True
    _failed(user)
    return False


def code_throttled(user: User) -> bool:
    return _throttled(user)


def recovery_codes_left(user: User) -> int:
    return RecoveryCode.objects.filter(user=user, used_at=None).count()


@transaction.atomic
def recovery_codes_regenerate(*, user: User, code: str) -> list[str]:
    if not code_check(user=user, code=code):
        raise ValidationError({"code": TOO_MANY if _throttled(user) else "That code is wrong."})
    return _new_recovery_codes(user)


def two_factor_disable(*, user: User, code: str | None, by_staff: User | None = None) -> None:
    """Turn it off: by the person (with a good code), or by staff for someone who lost both the
    app and the recovery codes (no code; the person is told)."""
    if not user.has_two_factor:
        return
    if by_staff is None and not code_check(user=user, code=code or ""):
        raise ValidationError({"code": TOO_MANY if _throttled(user) else "That code is wrong."})
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(
            totp_secret_encrypted="", totp_enabled_at=None, totp_last_step=0
        )
        RecoveryCode.objects.filter(user=user).delete()
    user.refresh_from_db()
    who = "Platform staff turned" if by_staff is not None else "You turned"
    _notify(user, f"{who} off two-factor authentication for your account.")


@transaction.atomic
def org_two_factor_require(*, org: Organisation, actor: User, required: bool) -> Organisation:
    """Require (or stop requiring) two-factor authentication of every member. Whoever turns it on
    must have it, so they do not lock themselves out."""
    if required and not actor.has_two_factor:
        raise ValidationError(
            "Turn on two-factor authentication for your own account first (Account page)."
        )
    if org.require_two_factor == required:
        return org
    Organisation.objects.filter(pk=org.pk).update(require_two_factor=required)
    org.refresh_from_db()
    audit_record(
        org=org,
        action="org.two_factor_required" if required else "org.two_factor_not_required",
        actor=actor,
        target=org,
    )
    return org


def two_factor_missing_message(org: Organisation) -> str:
    return (
        f"{org.name} requires two-factor authentication. Turn it on for your account on the "
        "Account page, then come back."
    )


def _notify(user: User, what: str) -> None:
    email = user.email
    transaction.on_commit(
        lambda: mail_send(
            kind="two-factor notice",
            subject="Your account's two-factor authentication",
            message=f"{what}\n\nIf this was not you, reset your password and contact support.\n",
            to=[email],
        )
    )


def two_factor_secrets_reseal() -> Resealed:
    """Encrypt everyone's two-factor secret again with the current key."""
    return rows_reseal(_SECRETS, User.objects.all(), "totp_secret_encrypted", "two-factor secrets")
