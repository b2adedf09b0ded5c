from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from console.models import ApiKey, Invitation, Membership, Organisation, User
from console.permissions import MATRIX, SCOPE_MATRIX, Action, Role, role_may_assign
from console.services.audit import audit_record
from console.services.mail import mail_send
from console.services.throttle import failure_add, failures
from console.services.users import user_email_verified


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _clean_role(role: str) -> str:
    if role not in Role.values:
        choices = ", ".join(Role.values)
        raise ValidationError({"role": f"Unknown role “{role}”; choose one of {choices}."})
    return role


# Invitation emails an organisation sent in the hour since its first one; the limit is
# settings.INVITATION_EMAILS_PER_HOUR. Keyed by the public id, which no other organisation reuses.
INVITATION_EMAIL_WINDOW_S = 60 * 60


def _emails_key(org: Organisation) -> str:
    return f"invitation-emails:{org.public_id}"


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: Invitation
    token: str

    @property
    def accept_url(self) -> str:
        return settings.SITE_URL + reverse("invitation_accept", args=[self.token])


@transaction.atomic
def invitation_create(
    *,
    org: Organisation,
    actor: User | None,
    email: str,
    role: str,
    actor_key: ApiKey | None = None,
) -> CreatedInvitation:
    """Invite ``email`` to ``org`` with ``role`` and email them a single-use link.

    A previous pending invitation to the same address is revoked (and recorded so, naming the one
    that replaces it), so only the newest link works. ``actor_key`` is the API key that asked,
    when a program did. An organisation has at most ``INVITATIONS_PENDING_PER_ORG`` pending
    invitations and sends at most ``INVITATION_EMAILS_PER_HOUR`` of them an hour; beyond either,
    nothing is created or sent.
    """
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": "Enter a valid email address."}) from None
    if len(email) > 254:  # the column's length; the validator allows up to 320
        raise ValidationError({"email": "Use an address of at most 254 characters."})
    role = _clean_role(role)
    if actor_key is not None:
        # A key's invitee gets a person's powers: no more than the key itself carries, or a
        # leaked key would make its holder an admin (member and billing changes need a person).
        carried = frozenset().union(*(SCOPE_MATRIX.get(s, frozenset()) for s in actor_key.scopes))
        beyond = MATRIX.get(role, frozenset()) - carried
        if beyond:
            allows = ", ".join(sorted(str(action) for action in beyond))
            raise PermissionDenied(
                f"A key cannot invite an {role}: the role allows {allows}, which the key may "
                "not do. Ask an owner or admin to invite them."
            )
    if role == Role.OWNER:
        inviter = org.memberships.filter(user=actor).first() if actor is not None else None
        if inviter is None or inviter.role != Role.OWNER:
            raise PermissionDenied("Only an owner can invite another owner.")
    if org.memberships.filter(user__email__iexact=email).exists():
        raise ValidationError({"email": f"{email} is already a member."})
    # Lock the organisation's row so that two invitations at once cannot both pass the count.
    Organisation.objects.select_for_update().filter(pk=org.pk).first()
    now = timezone.now()
    pending = org.invitations.filter(accepted_at=None, revoked_at=None, expires_at__gt=now)
    cap = settings.INVITATIONS_PENDING_PER_ORG
    if pending.exclude(email=email).count() >= cap:  # one to this address is replaced
        raise ValidationError(
            f"An organisation has at most {cap} pending invitations. Revoke one, or wait until "
            "one is accepted or expires."
        )
    per_hour = settings.INVITATION_EMAILS_PER_HOUR
    if failures(_emails_key(org)) >= per_hour:
        raise ValidationError(
            f"An organisation sends at most {per_hour} invitation emails an hour. Try again later."
        )
    failure_add(_emails_key(org), INVITATION_EMAIL_WINDOW_S)
    earlier = list(org.invitations.filter(email=email, accepted_at=None, revoked_at=None))
    org.invitations.filter(pk__in=[e.pk for e in earlier]).update(revoked_at=now)
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        org=org,
        email=email,
        role=role,
        token_digest=_digest(token),
        invited_by=actor,
        expires_at=now + timedelta(hours=settings.INVITATION_TTL_HOURS),
    )
    created = CreatedInvitation(invitation=invitation, token=token)
    for replaced in earlier:
        audit_record(
            org=org,
            action="invitation.revoked",
            actor=actor,
            actor_key=actor_key,
            target=replaced,
            data={"replaced_by": str(invitation.pk)},
        )
    audit_record(
        org=org,
        action="member.invited",
        actor=actor,
        actor_key=actor_key,
        target=invitation,
        data={"role": role},
    )
    # A key acts for the organisation, so the organisation is who invites.
    invited = (
        f"{actor.email} invited you to join {org.name}"
        if actor is not None
        else f"{org.name} invited you to join it"
    )
    transaction.on_commit(
        lambda: mail_send(
            kind="invitation",
            subject=f"You are invited to {org.name}",
            message=(
                f"{invited} as {role}.\n\n"
                f"Accept the invitation: {created.accept_url}\n\n"
                f"The link works once and expires in {settings.INVITATION_TTL_HOURS} hours."
            ),
            to=[email],
        )
    )
    return created


def invitation_lookup(token: str) -> Invitation | None:
    return (
        Invitation.objects.select_related("org").filter(token_digest=_digest(token or "")).first()
    )


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Turn an invitation into a membership. Works once, before expiry, for the invited address."""
    invitation = invitation_lookup(token)
    if invitation is None or invitation.revoked_at is not None:
        raise ValidationError("This invitation link is not valid.")
    if invitation.accepted_at is not None:
        raise ValidationError("This invitation has already been used.")
    if invitation.expires_at <= timezone.now():
        raise ValidationError("This invitation has expired; ask for a new one.")
    if invitation.email.lower() != user.email.lower():
        raise ValidationError(
            f"This invitation was sent to {invitation.email}; sign in with that address."
        )
    existing = Membership.objects.filter(org=invitation.org, user=user).only("role").first()
    if existing is not None:
        # Left unused: it would neither add a member nor change a role (admins do that).
        raise ValidationError(
            f"You are already a member of {invitation.org.name}, as {existing.role}. This "
            f"invitation (as {invitation.role}) is left unused; an admin can change your role."
        )
    # Claim the invitation with a conditional update so that two tabs cannot both use it.
    claimed = Invitation.objects.filter(pk=invitation.pk, accepted_at=None).update(
        accepted_at=timezone.now(), accepted_by=user
    )
    if not claimed:
        raise ValidationError("This invitation has already been used.")
    # The link went to this address: opening it proves the person reads that mailbox.
    user_email_verified(user=user)
    membership, created = Membership.objects.get_or_create(
        org=invitation.org, user=user, defaults={"role": invitation.role}
    )
    if created:
        audit_record(
            org=invitation.org,
            action="member.joined",
            actor=user,
            target=membership,
            data={"role": invitation.role},
        )
    return membership


@transaction.atomic
def invitation_revoke(
    *, invitation: Invitation, actor: User | None, actor_key: ApiKey | None = None
) -> Invitation:
    """Cancel a pending invitation. One already revoked stays as it is (nothing recorded twice);
    one already accepted cannot be revoked: the person is a member now."""
    revoked = Invitation.objects.filter(pk=invitation.pk, revoked_at=None, accepted_at=None).update(
        revoked_at=timezone.now()
    )
    invitation.refresh_from_db()
    if not revoked:
        if invitation.accepted_at is not None:
            raise ValidationError(
                f"{invitation.email} accepted this invitation already; remove them from the "
                "members instead."
            )
        return invitation
    audit_record(
        org=invitation.org,
        action="invitation.revoked",
        actor=actor,
        actor_key=actor_key,
        target=invitation,
    )
    return invitation


def invitations_revoke_sent_by(
    *, membership: Membership, role: str | None, actor: User | None, reason: str
) -> None:
    """Revoke the pending invitations ``membership``'s person sent that their new ``role`` (None:
    they are no longer a member) could not send, so that a pending link does not bring back
    access, or a role, taken from the person who sent it."""
    pending = membership.org.invitations.filter(
        invited_by=membership.user_id, accepted_at=None, revoked_at=None
    )
    for invitation in pending:
        if role is not None and Action.MEMBERS_INVITE in MATRIX.get(role, frozenset()):
            if invitation.role != Role.OWNER or role == Role.OWNER:
                continue
        revoked = Invitation.objects.filter(pk=invitation.pk, revoked_at=None).update(
            revoked_at=timezone.now()
        )
        if revoked:
            audit_record(
                org=membership.org,
                action="invitation.revoked",
                actor=actor,
                target=invitation,
                data={"reason": reason},
            )


def _owner_count(org: Organisation) -> int:
    # Lock the owners' rows so that two concurrent demotions cannot both pass the check.
    owners = org.memberships.select_for_update().filter(role=Role.OWNER)
    return len(list(owners))


@transaction.atomic
def membership_change_role(*, membership: Membership, actor: Membership, role: str) -> Membership:
    """Change a member's role. Only owners touch the owner role; the last owner stays an owner."""
    role = _clean_role(role)
    if not role_may_assign(actor.role, membership.role, role):
        raise PermissionDenied("Only an owner can grant or change the owner role.")
    if membership.role == Role.OWNER and role != Role.OWNER and _owner_count(membership.org) <= 1:
        raise ValidationError({"role": "The last owner cannot be demoted; add another owner."})
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        org=membership.org,
        action="member.role_changed",
        actor=actor.user,
        target=membership,
        data={"from": old, "to": role},
    )
    invitations_revoke_sent_by(
        membership=membership, role=role, actor=actor.user, reason="inviter's role changed"
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Membership) -> None:
    """Remove a member (or let one leave). The last owner cannot be removed."""
    if membership.pk != actor.pk and not role_may_assign(actor.role, membership.role, "viewer"):
        raise PermissionDenied("Only an owner can remove an owner.")
    if membership.role == Role.OWNER and _owner_count(membership.org) <= 1:
        raise ValidationError(
            "The last owner cannot be removed; add another owner first, or close the "
            "organisation (Settings)."
        )
    audit_record(
        org=membership.org,
        action="member.removed",
        actor=actor.user,
        target=membership,
        data={"email": membership.user.email},
    )
    invitations_revoke_sent_by(
        membership=membership,
        role=None,
        actor=actor.user,
        reason="inviter left" if membership.pk == actor.pk else "inviter removed",
    )
    membership.delete()
