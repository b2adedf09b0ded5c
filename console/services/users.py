"""Writes to a person's own account.

Nothing here is audited: the audit log belongs to an organisation, and these changes belong to the
person, who may be in several organisations or none.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from console.models import Membership, User
from console.permissions import Role
from console.services.audit import audit_record
from console.services.mail import mail_send
from console.services.throttle import failure_add, failures


def user_update(*, user: User, first_name: str, last_name: str) -> User:
    user.first_name = first_name.strip()
    user.last_name = last_name.strip()
    user.save(update_fields=["first_name", "last_name"])
    return user


@sensitive_variables("password")
def user_password_change(*, user: User, password: str) -> User:
    """Give ``user`` a new password, checked by AUTH_PASSWORD_VALIDATORS (ValidationError if not).

    Checking the current password is the caller's job. The new hash changes the user's session
    auth hash, so every session the user has is signed out; a view that should keep the caller's
    own session calls ``update_session_auth_hash`` afterwards.
    """
    validate_password(password, user)
    user.set_password(password)
    user.save(update_fields=["password"])
    return user


# Confirming an email address --------------------------------------------------------------------

EMAIL_VERIFY_SALT = "console.email-verify"
EMAIL_VERIFY_MAX_AGE = timedelta(days=3)
# At most one confirmation email per person per this many seconds (the resend button).
EMAIL_VERIFY_RESEND_S = 60


def email_verification_token(user: User) -> str:
    """A signed, expiring token naming the person and the address it was sent to: a later change
    of address makes it worthless, and nothing needs storing."""
    return signing.TimestampSigner(salt=EMAIL_VERIFY_SALT).sign_object(
        {"u": str(user.public_id), "e": user.email.lower()}
    )


def email_verification_url(user: User) -> str:
    return settings.SITE_URL + reverse("email_verify", args=[email_verification_token(user)])


def email_verification_send(*, user: User) -> bool:
    """Email ``user`` a link that confirms their address; False (and nothing sent) when one was
    sent less than a minute ago or the address is already confirmed. ValidationError when the
    email could not be sent, which does not count against the once-a-minute limit."""
    if user.email_verified_at is not None:
        return False
    sent_key = f"email-verify-sent:{user.pk}"
    if not cache.add(sent_key, 1, timeout=EMAIL_VERIFY_RESEND_S):
        return False
    days = EMAIL_VERIFY_MAX_AGE.days
    sent = mail_send(
        kind="email confirmation",
        subject="Confirm your email address",
        message=(
            f"Confirm that {user.email} is your address by opening this link:\n\n"
            f"{email_verification_url(user)}\n\n"
            f"The link works for {days} days. Until then you can sign in and look around, but not "
            f"create API keys, deployments or routes, or invite anyone.\n\n"
            f"If you did not sign up, ignore this email."
        ),
        to=[user.email],
    )
    if not sent:
        cache.delete(sent_key)
        raise ValidationError(
            "The confirmation email could not be sent just now; try again in a few minutes."
        )
    return True


def _link_value(salt: str, token: str, *, expired: str) -> dict[str, Any]:
    """What an emailed link's token signed, or ValidationError saying why it cannot be used."""
    try:
        value = signing.TimestampSigner(salt=salt).unsign_object(
            token, max_age=EMAIL_VERIFY_MAX_AGE
        )
    except signing.SignatureExpired:
        raise ValidationError(expired) from None
    except signing.BadSignature:
        raise ValidationError("This link is not valid.") from None
    if not isinstance(value, dict) or not isinstance(value.get("u"), str):
        raise ValidationError("This link is not valid.")
    return value


def email_verify(*, token: str) -> User:
    """Confirm the address a token was sent to; ValidationError when the token is not valid
    any more. Opening the link twice is harmless."""
    value = _link_value(
        EMAIL_VERIFY_SALT,
        token,
        expired="This link has expired. Sign in and ask for a new one on your account page.",
    )
    user = User.objects.filter(public_id=value["u"]).first()
    if user is None or user.email.lower() != value.get("e"):
        raise ValidationError("This link is not valid.")
    user_email_verified(user=user)
    return user


def user_email_verified(*, user: User) -> User:
    """Record that ``user`` controls their address (idempotent: the first time is kept)."""
    if user.email_verified_at is None:
        now = timezone.now()
        User.objects.filter(pk=user.pk, email_verified_at=None).update(email_verified_at=now)
        user.refresh_from_db(fields=["email_verified_at"])
    return user


# Changing one's email address ---------------------------------------------------------------------

EMAIL_CHANGE_SALT = "console.email-change"
# Each request emails a link to any address the person types and a notice to their own: at most
# this many an hour per account, so that neither inbox can be flooded through the platform.
EMAIL_CHANGE_LINKS_PER_HOUR = 5
EMAIL_CHANGE_WINDOW_S = 60 * 60


def _address_taken(email: str, user: User) -> bool:
    return User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists()


def email_change_request(*, user: User, new_email: str) -> str:
    """Email a link to ``new_email`` that moves ``user``'s sign-in address there when opened, and
    tell the current address. Checking the password is the caller's job. Returns the address the
    link went to; ValidationError (on ``email``) when it cannot be used, or when the link could
    not be sent (then nothing changes: a link sent before still works)."""
    new_email = (new_email or "").strip().lower()  # addresses are kept in lower case
    try:
        validate_email(new_email)
    except ValidationError:
        raise ValidationError({"email": "Enter a valid email address."}) from None
    if len(new_email) > 254:  # the column's length; the validator allows up to 320
        raise ValidationError({"email": "Use an address of at most 254 characters."})
    if new_email.lower() == user.email.lower():
        raise ValidationError({"email": "This is already your address."})
    if _address_taken(new_email, user):
        raise ValidationError({"email": "Another account uses this address."})
    sent_key = f"email-change-links:{user.public_id}"
    if failures(sent_key) >= EMAIL_CHANGE_LINKS_PER_HOUR:
        raise ValidationError(
            {
                "email": f"You asked for {EMAIL_CHANGE_LINKS_PER_HOUR} address changes in the "
                "last hour; try again later. The last link sent still works."
            }
        )
    # Only the newest request's link works: asking again (say, after a typo) voids the others.
    previous = user.email_change_to
    User.objects.filter(pk=user.pk).update(email_change_to=new_email)
    user.email_change_to = new_email
    token = signing.TimestampSigner(salt=EMAIL_CHANGE_SALT).sign_object(
        {"u": str(user.public_id), "e": user.email.lower(), "n": new_email}
    )
    link = settings.SITE_URL + reverse("email_change_confirm", args=[token])
    days = EMAIL_VERIFY_MAX_AGE.days
    sent = mail_send(
        kind="email change link",
        subject="Confirm your new email address",
        message=(
            f"Open this link to sign in as {new_email} from now on, instead of {user.email}:\n\n"
            f"{link}\n\nThe link works for {days} days. If you did not ask for this, ignore it."
        ),
        to=[new_email],
    )
    if not sent:
        User.objects.filter(pk=user.pk).update(email_change_to=previous)
        user.email_change_to = previous
        raise ValidationError(
            {
                "email": f"We could not send the link to {new_email} just now; try again in a "
                "few minutes."
            }
        )
    failure_add(sent_key, EMAIL_CHANGE_WINDOW_S)
    mail_send(
        kind="email change notice",
        subject="Your email address is being changed",
        message=(
            f"Someone signed in as {user.email} asked to change the account's address to "
            f"{new_email}. Nothing changes until a link sent there is opened.\n\n"
            f"If this was not you, change your password now: {settings.SITE_URL}"
            f"{reverse('password_reset')}"
        ),
        to=[user.email],
    )
    return new_email


def email_change_confirm(*, token: str) -> User:
    """Move the account to the address the link was sent to (which that link confirms). A link
    is worthless once the account's address has changed in any other way."""
    value = _link_value(
        EMAIL_CHANGE_SALT,
        token,
        expired="This link has expired. Ask for a new one on your account page.",
    )
    user = User.objects.filter(public_id=value["u"]).first()
    new_email = value.get("n")
    if (
        user is None
        or not isinstance(new_email, str)
        or user.email.lower() != value.get("e")
        or user.email_change_to.lower() != new_email.lower()
    ):
        # Used already, overtaken by a newer request, or the address changed another way.
        raise ValidationError("This link is not valid any more.")
    if _address_taken(new_email, user):
        raise ValidationError(f"Another account uses {new_email} by now.")
    user.email = new_email
    user.email_verified_at = timezone.now()
    user.email_change_to = ""
    user.save(update_fields=["email", "email_verified_at", "email_change_to"])
    return user


def sessions_end(*, user: User) -> User:
    """Sign ``user`` out of every session. A view acting for the person then re-keys its own
    session (``update_session_auth_hash``) to stay signed in there."""
    User.objects.filter(pk=user.pk).update(session_epoch=F("session_epoch") + 1)
    user.refresh_from_db(fields=["session_epoch"])
    return user


DELETED_DOMAIN = "deleted.invalid"


def _orgs_needing_an_owner(user: User) -> list[str]:
    """The open organisations where ``user`` is the only owner: deleting the account would leave
    them with nobody who may manage billing, owners or closing."""
    owned = Membership.objects.filter(user=user, role=Role.OWNER, org__closed_at=None)
    names = []
    for membership in owned.select_related("org").order_by("org__name"):
        others = membership.org.memberships.filter(role=Role.OWNER).exclude(user=user)
        if not others.exists():
            names.append(membership.org.name)
    return names


def account_delete(*, user: User) -> str:
    """Delete a person's account. Returns the address it had (the caller tells it).

    The row stays, anonymised, so that the audit trails of the organisations the person acted in
    keep pointing at one actor: the address becomes ``deleted-<id>@deleted.invalid`` (freeing the
    real one), the names, any address change waiting for its link and the second factor (its secret
    and recovery codes) are cleared, the password
    becomes unusable (every session and every emailed link stops working) and the account is
    deactivated. Memberships are removed, each recorded in its organisation's audit log. Refused
    while the person is the only owner of an open organisation: another owner must be added, or
    the organisation closed, first."""
    if user.is_staff or user.is_superuser:
        raise ValidationError(
            "Staff accounts are removed by another member of staff, in the admin."
        )
    blocking = _orgs_needing_an_owner(user)
    if blocking:
        raise ValidationError(
            "You are the only owner of "
            + ", ".join(blocking)
            + ". Make another member an owner, or close the organisation (its Settings page), "
            "first."
        )
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        old_email = locked.email
        from console.services.members import invitations_revoke_sent_by  # it imports this

        for membership in locked.memberships.select_related("org"):
            invitations_revoke_sent_by(
                membership=membership, role=None, actor=locked, reason="inviter left"
            )
            # No target: a membership's text names the address, which is going away.
            audit_record(
                org=membership.org,
                action="member.removed",
                actor=locked,
                data={
                    "reason": "account deleted",
                    "role": membership.role,
                    "membership": str(membership.pk),
                },
            )
        locked.memberships.all().delete()
        locked.email = f"deleted-{locked.public_id.hex[:12]}@{DELETED_DOMAIN}"
        locked.email_change_to = ""  # an address asked for and not yet confirmed is theirs too
        locked.first_name = ""
        locked.last_name = ""
        locked.is_active = False
        locked.email_verified_at = None
        locked.set_unusable_password()
        # Nothing of the person's second factor stays either: the secret and the recovery codes.
        locked.totp_secret_encrypted = ""
        locked.totp_enabled_at = None
        locked.totp_last_step = 0
        locked.recovery_codes.all().delete()
        locked.save()
        transaction.on_commit(
            lambda: mail_send(
                kind="account deleted",
                subject="Your account was deleted",
                message=(
                    f"The account {old_email} on the inference platform was deleted, as you "
                    "asked. You can no longer sign in with it, and you are no longer a member "
                    "of any organisation. The organisations keep the API keys and deployments "
                    "you created there.\n"
                ),
                to=[old_email],
            )
        )
    user.refresh_from_db()
    return old_email


# Wrong passwords ----------------------------------------------------------------------------------

# Counted per address and client address: MAX_SIGN_IN_FAILURES wrong passwords within the
# window refuse every sign-in for that pair until it passes (guessing from one place stops;
# the person can still sign in from elsewhere, so a stranger cannot lock them out everywhere).
MAX_SIGN_IN_FAILURES = 10
SIGN_IN_FAILURE_WINDOW_S = 15 * 60
SIGN_IN_THROTTLED = (
    "Too many wrong passwords for this address from here. Wait 15 minutes, or reset the password."
)


def _sign_in_key(email: str, client: str) -> str:
    digest = hashlib.sha256(f"{email.strip().lower()}|{client}".encode()).hexdigest()
    return f"sign-in-failures:{digest}"


def sign_in_throttled(*, email: str, client: str) -> bool:
    return failures(_sign_in_key(email, client)) >= MAX_SIGN_IN_FAILURES


def sign_in_failed(*, email: str, client: str) -> None:
    failure_add(_sign_in_key(email, client), SIGN_IN_FAILURE_WINDOW_S)


def sign_in_succeeded(*, email: str, client: str) -> None:
    cache.delete(_sign_in_key(email, client))


# Password-reset emails ---------------------------------------------------------------------------

# Anyone may ask for a reset link for any address, so the emails are limited: per address (its
# inbox is not flooded) and per client address (one client cannot mail many inboxes). Over
# either, the page answers as usual and nothing is sent.
# The limits are settings.PASSWORD_RESET_EMAILS_PER_HOUR: (per address, per client address).
RESET_WINDOW_S = 60 * 60


def password_reset_allowed(*, email: str, client: str) -> bool:
    """Count one request for a reset link; whether its email may go."""
    per_address, per_client = settings.PASSWORD_RESET_EMAILS_PER_HOUR
    address = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    keys = [(f"reset-emails:{address}", per_address)]
    if client:
        keys.append((f"reset-clients:{client}", per_client))
    if any(failures(key) >= limit for key, limit in keys):
        return False
    for key, _ in keys:
        failure_add(key, RESET_WINDOW_S)
    return True
