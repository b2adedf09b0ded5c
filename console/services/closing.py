"""Closing an organisation: the tenant leaves the platform.

What stops at once: every API key (the gateways refuse them within their snapshot's refresh),
every deployment (marked deleted; the orchestrator drains and stops its replicas, and dedicated
uptime stops accruing), routes and external endpoints (with the endpoints' stored API keys),
webhooks, pending invitations and every membership (the org disappears from its members'
consoles). What stays: the organisation's row, its slug, its usage and uptime records,
rollups, meter events and audit log, for the final invoice and for platform staff.

A paid subscription runs to the end of its period and ends there, so the usage up to the close
is invoiced as usual (metered usage is billed in arrears).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import stripe
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.services.accounts import account_for, subscription_end_with_period
from console.models import (
    ApiKey,
    DeliveryStatus,
    Invitation,
    Organisation,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)
from console.services.audit import audit_record
from console.services.mail import mail_send
from console.snapshot import snapshot_bump
from inference.models import Deployment, ExternalEndpoint, Route

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrgClosed:
    keys_revoked: int
    deployments_deleted: int
    routes_deleted: int
    endpoints_deleted: int
    members_removed: int
    subscription_ending: bool


def org_close(*, org: Organisation, actor: User, confirm: str) -> OrgClosed:
    """Close ``org`` for good. ``confirm`` must be the org's slug, typed by the owner.

    Stripe is asked first: if it refuses, nothing here has changed and the owner can try again."""
    if (confirm or "").strip() != org.slug:
        raise ValidationError({"confirm": f"Type the organisation's slug, {org.slug}, to confirm."})
    if org.closed_at is not None:
        raise ValidationError("This organisation is already closed.")
    try:
        subscription_ending = subscription_end_with_period(account=account_for(org=org))
    except stripe.StripeError as error:
        logger.warning("closing an org: Stripe refused", extra={"org": org.slug}, exc_info=True)
        raise ValidationError(
            "Stripe could not end the subscription, so nothing was closed; try again in a few "
            f"minutes. ({error.user_message or type(error).__name__})"
        ) from error
    return _close_records(org=org, actor=actor, subscription_ending=subscription_ending)


@transaction.atomic
def _close_records(*, org: Organisation, actor: User, subscription_ending: bool) -> OrgClosed:
    locked = Organisation.objects.select_for_update().get(pk=org.pk)
    if locked.closed_at is not None:
        raise ValidationError("This organisation is already closed.")
    now = timezone.now()
    members = list(locked.memberships.select_related("user").order_by("created_at"))
    recipients = [m.user.email for m in members if m.user.is_active]
    closed = OrgClosed(
        keys_revoked=ApiKey.objects.filter(org=locked, revoked_at=None).update(revoked_at=now),
        deployments_deleted=Deployment.objects.filter(org=locked, deleted_at=None).update(
            deleted_at=now, updated_at=now
        ),
        routes_deleted=Route.objects.filter(org=locked).delete()[1].get("inference.Route", 0),
        endpoints_deleted=ExternalEndpoint.objects.filter(org=locked)
        .delete()[1]
        .get("inference.ExternalEndpoint", 0),
        members_removed=len(members),
        subscription_ending=subscription_ending,
    )
    Invitation.objects.filter(
        org=locked, accepted_at=None, revoked_at=None, expires_at__gt=now
    ).update(revoked_at=now)
    # Webhooks stop too (the members are emailed instead); pending deliveries are dropped.
    WebhookEndpoint.objects.filter(org=locked, disabled_at=None).update(disabled_at=now)
    WebhookDelivery.objects.filter(endpoint__org=locked, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.FAILED, error="The organisation was closed.", finished_at=now
    )
    locked.memberships.all().delete()
    locked.closed_at = now
    locked.save(update_fields=["closed_at"])
    org.closed_at = now
    audit_record(
        org=locked,
        action="org.closed",
        actor=actor,
        target=locked,
        data={
            "keys_revoked": closed.keys_revoked,
            "deployments_deleted": closed.deployments_deleted,
            "routes_deleted": closed.routes_deleted,
            "endpoints_deleted": closed.endpoints_deleted,
            "members": [{"email": m.user.email, "role": m.role} for m in members],
            "subscription_ending": subscription_ending,
        },
    )
    snapshot_bump()
    name, closer = locked.name, actor.email
    transaction.on_commit(
        lambda: (
            mail_send(
                kind="organisation closed",
                subject=f"{name} was closed",
                message=(
                    f"{closer} closed the organisation {name} on the inference platform.\n\n"
                    "Its API keys no longer work, its deployments are being stopped, and its "
                    "members no longer have access. "
                    + (
                        "Its subscription ends with the current billing period, and the usage up "
                        "to now is on that period's invoice.\n"
                        if subscription_ending
                        else "\n"
                    )
                ),
                to=recipients,
            )
            if recipients
            else None
        )
    )
    return closed
