"""Writing a deployment's summary state, the same way for every backend's loop."""

from __future__ import annotations

from collections.abc import Callable

from console.snapshot import snapshot_bump
from inference.models import Deployment, DeploymentState
from inference.services.notifications import deployment_failed


def summary_write(
    deployment: Deployment, state: str, reason: str, *, say: Callable[[Deployment, str], None]
) -> None:
    """Store ``state`` and ``reason`` if either changed, and tell the gateways. A change of state
    is said (the orchestrator's log); becoming failed is recorded and emailed to the tenant."""
    if (state, reason) == (deployment.state, deployment.state_reason):
        return
    Deployment.objects.filter(pk=deployment.pk).update(state=state, state_reason=reason)
    became = state if state != deployment.state else None
    if became:
        say(deployment, f"{state}: {reason.splitlines()[0]}")
    deployment.state, deployment.state_reason = state, reason
    if became == DeploymentState.FAILED:
        deployment_failed(deployment=deployment, reason=reason)
    snapshot_bump(keys=False)
