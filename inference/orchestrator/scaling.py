"""Apply the autoscaler's decision to a deployment: the same for every backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.utils import timezone

from inference.gateway.inflight import gateway_inflight_read
from inference.models import Deployment
from inference.orchestrator.autoscale import ScaleDecision, ScaleInput, scale_decide


def deployment_desired_replicas(
    *,
    deployment: Deployment,
    load: list[int],
    demand_ttl_s: float,
    say: Callable[[Deployment, str], None],
    stopped: bool = False,
) -> int:
    """Decide how many replicas ``deployment`` should have now, and store the decision.

    ``load`` is each ready replica's measured load (requests running plus waiting). A stopped
    (paused or deleted) deployment wants none. A suspended organisation's deployment keeps what
    it has and may shrink, but does not grow: neither a waiting request nor load wakes or widens
    it. The row is written only when something changed.
    """
    if stopped or deployment.paused:
        if deployment.desired_replicas:
            Deployment.objects.filter(pk=deployment.pk).update(desired_replicas=0)
            deployment.desired_replicas = 0
        return 0
    now = timezone.now()
    # Requests every gateway process has sent to its replicas and not yet seen answered.
    inflight = gateway_inflight_read(deployment.pk)
    suspended = deployment.org.is_suspended
    demand = (
        not suspended
        and deployment.demand_at is not None
        and deployment.demand_at > now - timedelta(seconds=demand_ttl_s)
    )
    decision = scale_decide(
        ScaleInput(
            current=deployment.desired_replicas,
            min_replicas=deployment.min_replicas,
            max_replicas=deployment.max_replicas,
            target_concurrency=deployment.target_concurrency,
            replica_load=load,
            gateway_inflight=inflight,
            demand=demand,
            low_load_since=deployment.low_load_since,
            now=now,
            scale_down_delay_s=deployment.scale_down_delay_s,
        )
    )
    if suspended and decision.desired > deployment.desired_replicas:
        decision = ScaleDecision(
            deployment.desired_replicas, None, "the organisation is suspended: no scaling up"
        )
    if (decision.desired, decision.low_load_since) != (
        deployment.desired_replicas,
        deployment.low_load_since,
    ):
        if decision.desired != deployment.desired_replicas:
            say(
                deployment,
                f"scaling {deployment.desired_replicas} -> {decision.desired} ({decision.reason})",
            )
        deployment.desired_replicas = decision.desired
        deployment.low_load_since = decision.low_load_since
        Deployment.objects.filter(pk=deployment.pk).update(
            desired_replicas=decision.desired, low_load_since=decision.low_load_since
        )
    return decision.desired
