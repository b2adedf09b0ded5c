"""Who is told when a deployment fails, and that a failure fixed meanwhile is not told."""

from __future__ import annotations

import pytest

from console.models import AuditEvent
from console.permissions import Role
from inference.models import Deployment, DeploymentState
from inference.services.notifications import deployment_failed, deployment_failed_notify
from tests.deployments.factories import make_deployment

pytestmark = pytest.mark.django_db


def _failed(deployment: Deployment, reason: str = "A replica failed: exited with code 1.") -> None:
    Deployment.objects.filter(pk=deployment.pk).update(
        state=DeploymentState.FAILED, state_reason=reason
    )
    deployment.refresh_from_db()


def test_owners_admins_and_the_creator_are_told_viewers_are_not(
    org, owner, make_member, model_root, mailoutbox
):
    admin = make_member(Role.ADMIN).user
    creator = make_member(Role.DEVELOPER).user
    make_member(Role.VIEWER)
    other_developer = make_member(Role.DEVELOPER).user
    deployment = make_deployment(org=org, actor=creator, model_root=model_root)
    _failed(deployment, "A replica failed and will not be restarted: out of memory.\nline 2")
    deployment_failed(deployment=deployment, reason=deployment.state_reason)
    [mail] = mailoutbox
    assert sorted(mail.to) == sorted([owner.email, admin.email, creator.email])
    assert other_developer.email not in mail.to
    assert "out of memory" in mail.body and "line 2" in mail.body
    event = AuditEvent.objects.get(org=org, action="deployment.failed")
    assert event.actor is None and event.data["reason"].endswith("out of memory.")


def test_a_deployment_fixed_before_the_email_goes_is_not_told(org, owner, model_root, mailoutbox):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    assert deployment_failed_notify(deployment_id=str(deployment.pk)) == 0  # never failed
    _failed(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(state=DeploymentState.STARTING)
    assert deployment_failed_notify(deployment_id=str(deployment.pk)) == 0
    _failed(deployment)
    assert deployment_failed_notify(deployment_id=str(deployment.pk)) == 1
    assert len(mailoutbox) == 1


def test_a_long_reason_is_quoted_by_its_first_line_and_its_end(org, owner, model_root, mailoutbox):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    log = [f"log line {i}" for i in range(30)]
    _failed(deployment, "\n".join(["A replica failed: exited with code 1.", *log, "ValueError: x"]))
    deployment_failed_notify(deployment_id=str(deployment.pk))
    body = mailoutbox[0].body
    assert "exited with code 1." in body and "ValueError: x" in body and "log line 29" in body
    assert "log line 5\n" not in body
