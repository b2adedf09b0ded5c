from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from billing.models import BillingAccount
from console.models import Membership, Organisation, User
from console.permissions import Role
from console.services.audit import audit_record
from console.snapshot import snapshot_bump

RESERVED_SLUGS = frozenset({"new", "admin", "api", "v1", "static", "settings", "login"})


class OrgSuspendedError(ValidationError):
    """A change refused because the organisation is suspended: one that would start replicas or
    let its deployments use more. The console shows it as it shows a validation error; the REST
    API answers 403 with the code ``org_suspended``.
    """

    def __init__(self, org: Organisation, refused: str) -> None:
        # The gateway's words for the same state, then what cannot be done.
        reason = org.suspended_reason or "no reason given"
        super().__init__(
            f"This organisation is suspended: {reason}. {refused}", code="org_suspended"
        )


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Enter a name."})
    if len(name) > 100:
        raise ValidationError({"name": "Use at most 100 characters."})
    return name


def _free_slug(base: str) -> str:
    base = base[:40] or "org"
    candidate, n = base, 1
    while candidate in RESERVED_SLUGS or Organisation.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


@transaction.atomic
def org_create(*, name: str, owner: User, slug: str | None = None) -> Organisation:
    """Create an organisation with ``owner`` as its first owner.

    An explicit slug must be free; without one, a free slug is derived from the name. Someone
    whose email address is not confirmed yet may create one organisation, no more.
    """
    name = _clean_name(name)
    if owner.email_verified_at is None and owner.memberships.filter(role=Role.OWNER).exists():
        raise ValidationError(
            f"Confirm your email address to create another organisation: open the link we "
            f"emailed to {owner.email}."
        )
    if slug:
        slug = slug.strip().lower()
        if slug != slugify(slug) or len(slug) > 50:
            raise ValidationError({"slug": "Use lowercase letters, digits and hyphens only."})
        if slug in RESERVED_SLUGS or Organisation.objects.filter(slug=slug).exists():
            raise ValidationError({"slug": f"The slug “{slug}” is taken."})
    else:
        slug = _free_slug(slugify(name))
    org = Organisation.objects.create(name=name, slug=slug)
    Membership.objects.create(org=org, user=owner, role=Role.OWNER)
    audit_record(org=org, action="org.created", actor=owner, target=org)
    return org


@transaction.atomic
def org_update(*, org: Organisation, actor: User, name: str) -> Organisation:
    name = _clean_name(name)
    old = org.name
    org.name = name
    org.save(update_fields=["name"])
    audit_record(org=org, action="org.renamed", actor=actor, target=org, data={"from": old})
    return org


@transaction.atomic
def org_suspend(*, org: Organisation, reason: str, actor: User | None = None) -> Organisation:
    """Suspend an org: its keys stop authenticating at once and the gateway answers 402.

    A suspension by a person (platform staff; ``actor``) takes over one the platform made for an
    unpaid invoice: its reason is shown, and paying the invoice no longer lifts it (staff do)."""
    Organisation.objects.filter(pk=org.pk, suspended_at__isnull=True).update(
        suspended_at=timezone.now(), suspended_reason=reason[:200]
    )
    if actor is not None:
        took_over = BillingAccount.objects.filter(org=org, suspended_for_payment=True).update(
            suspended_for_payment=False
        )
        if took_over:
            Organisation.objects.filter(pk=org.pk).update(suspended_reason=reason[:200])
    org.refresh_from_db()
    audit_record(org=org, action="org.suspended", actor=actor, target=org, data={"reason": reason})
    snapshot_bump()
    return org


@transaction.atomic
def org_reactivate(*, org: Organisation, actor: User | None = None) -> Organisation:
    Organisation.objects.filter(pk=org.pk).update(suspended_at=None, suspended_reason="")
    org.refresh_from_db()
    audit_record(org=org, action="org.reactivated", actor=actor, target=org)
    snapshot_bump()
    return org
