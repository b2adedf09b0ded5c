"""Telling a tenant's people when one of their deployments fails.

The orchestrator calls ``deployment_failed`` when a deployment's state becomes ``failed`` (a
replica crashed more times in a row than the restart limit allows, so nothing will restart it
until the deployment changes). That records a ``deployment.failed`` audit event at once and
queues one email to the org's owners and admins and to whoever created the deployment, if they
are still a member. A deployment that fails again after being fixed is a new failure and is
told again; one that stays failed is told once.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse

from console.models import Membership
from console.permissions import Role
from console.services.audit import audit_record
from inference.models import Deployment, DeploymentState

logger = logging.getLogger(__name__)

# The reason holds the engine's last log lines; the email quotes its first line and the log's
# end, where the exception that ended the engine is.
REASON_LINES = 12


def _quoted(reason: str) -> str:
    lines = reason.splitlines()
    if len(lines) > REASON_LINES:
        lines = [lines[0], "…", *lines[-(REASON_LINES - 2) :]]
    return "\n".join(lines)


def deployment_failed(*, deployment: Deployment, reason: str) -> None:
    """Record the failure and queue the email (never raises: the orchestrator goes on)."""
    audit_record(
        org=deployment.org,
        action="deployment.failed",
        target=deployment,
        data={"reason": reason.splitlines()[0][:300] if reason else ""},
    )
    from inference.tasks import deployment_failed_notify_task

    try:
        deployment_failed_notify_task.delay(str(deployment.pk))
    except Exception:  # the broker is down: the audit event and the console still say it
        logger.exception("could not queue the failure email", extra={"deployment": deployment.pk})


def deployment_failed_recipients(deployment: Deployment) -> list[str]:
    members = Membership.objects.filter(org_id=deployment.org_id, user__is_active=True)
    managers = members.filter(role__in=[Role.OWNER, Role.ADMIN])
    emails = set(managers.values_list("user__email", flat=True))
    if deployment.created_by_id is not None:
        emails.update(
            members.filter(user_id=deployment.created_by_id).values_list("user__email", flat=True)
        )
    return sorted(emails)


def deployment_failed_notify(*, deployment_id: str) -> int:
    """Send the email if the deployment is still failed; returns how many were addressed."""
    deployment = (
        Deployment.objects.select_related("org")
        .filter(pk=deployment_id, deleted_at=None, state=DeploymentState.FAILED)
        .first()
    )
    if deployment is None:
        return 0  # fixed, deleted or gone meanwhile
    recipients = deployment_failed_recipients(deployment)
    if not recipients:
        return 0
    url = settings.SITE_URL + reverse(
        "deployment_detail", args=[deployment.org.slug, deployment.pk]
    )
    reason = _quoted(deployment.state_reason)
    send_mail(
        subject=f"Deployment {deployment.name} failed in {deployment.org.name}",
        message=(
            f"The deployment {deployment.name} ({deployment.model}) in {deployment.org.name} "
            "failed, and will not be restarted until it is changed: edit it (engine arguments, "
            "model), or scale it, to try again.\n\n"
            f"{reason}\n\n"
            f"Its page, with the replicas' logs: {url}\n"
        ),
        from_email=None,
        recipient_list=recipients,
    )
    return len(recipients)
