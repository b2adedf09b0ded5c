"""The autoscaling decision: how many replicas a deployment should have, from measured load.

Pure: no database, no clock, no network. The orchestrator feeds it what it measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class ScaleInput:
    current: int
    """The replicas the deployment is set to have now."""
    min_replicas: int
    max_replicas: int
    target_concurrency: int
    """Requests (running plus waiting) one replica should carry."""
    replica_load: Sequence[int]
    """vLLM's ``num_requests_running + num_requests_waiting`` for each ready replica."""
    now: datetime
    scale_down_delay_s: int
    low_load_since: datetime | None = None
    """Since when the load has allowed fewer replicas than ``current`` (None: it has not)."""
    gateway_inflight: int | None = None
    """Requests the gateways hold for this deployment, where they report it."""
    demand: bool = False
    """A request arrived recently and found no ready replica."""


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    low_load_since: datetime | None
    reason: str


def replicas_needed(*, load: int, target_concurrency: int) -> int:
    return math.ceil(load / max(1, target_concurrency)) if load > 0 else 0


def scale_decide(params: ScaleInput) -> ScaleDecision:
    """Scale up at once; scale down only after the load has stayed low for the delay.

    The load is the larger of what the engines report and what the gateways hold, because each
    misses something: requests in flight between gateway and engine, or requests sent directly.
    A lowered maximum (or a pause, which sets it to zero) takes effect at once.
    """
    low, high = params.min_replicas, max(params.min_replicas, params.max_replicas)
    load = max(sum(max(0, n) for n in params.replica_load), params.gateway_inflight or 0)
    needed = replicas_needed(load=load, target_concurrency=params.target_concurrency)
    why = f"load {load} at {params.target_concurrency} per replica needs {needed}"
    if params.demand and needed == 0:
        needed, why = 1, "a request is waiting for a replica"
    needed = min(high, max(low, needed))

    if params.current > high:
        return ScaleDecision(high, None, f"maximum is {high}")
    if needed >= params.current:
        return ScaleDecision(needed, None, why)
    since = params.low_load_since or params.now
    if params.now - since >= timedelta(seconds=params.scale_down_delay_s):
        return ScaleDecision(needed, None, f"{why}; low for {params.scale_down_delay_s} s")
    return ScaleDecision(params.current, since, f"{why}; waiting out the scale-down delay")
