"""After a request: settle its limits, meter it, count it and log it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from inference.gateway import bodies
from inference.gateway.exchange import Outcome, target_label
from inference.gateway.ledger import UsageEvent, cost_micros
from inference.gateway.limits import Admission, LimiterUnavailable, LocalLimiter
from inference.gateway.snapshot import CONSOLE_KEY_ID, DeploymentEntry, KeyEntry, OrgEntry
from inference.routing.resolve import Plan

if TYPE_CHECKING:
    from inference.gateway.app import Gateway

access_logger = logging.getLogger("inference.gateway.access")


@dataclass(slots=True)
class Finished:
    key: KeyEntry
    org: OrgEntry
    parsed: bodies.ParsedRequest
    route: str
    plan: Plan
    outcome: Outcome
    adm: Admission
    reserve: int
    request_id: str
    started: float
    error_code: str = ""  # the code of the gateway's own error response, if it sent one


def _error_code(outcome: Outcome, code: str) -> str:
    """Why a request failed, in OpenAI's ``code`` terms: the gateway's own error, or what it saw
    happen (never the engine's message, which may quote the request)."""
    if code:
        return code
    if outcome.disconnected or outcome.status == 499:
        return "client_disconnected"
    if outcome.status >= 500:
        return "upstream_error"  # the stream broke after its first bytes
    return "upstream_rejected"  # the engine's own 4xx, passed through as it was


def _baseline_cost(gateway: Gateway, org_id: int, plan: Plan, outcome: Outcome) -> int | None:
    """What an auto route's request would have cost at its strongest target (same tokens, at
    the snapshot's price); None when the strongest target served it (then it is the cost)."""
    baseline = plan.decision.baseline
    if baseline is None or outcome.target is None or target_label(outcome.target) == str(baseline):
        return None
    entry = gateway.snapshot.target_entry(org_id, baseline)
    if entry is None:
        return None
    price = gateway.snapshot.price(org_id, entry)
    return cost_micros(
        price, outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens
    )


async def _settle(gateway: Gateway, adm: Admission, token_delta: int, cost_delta: int) -> None:
    """Settle off the request path. If Redis fails here the correction is lost: the minute's
    token count keeps the prompt estimate, and the month's budget counter keeps the reservation
    (more than was spent: the safe side) until it is seeded from the ledger again (next month,
    or after Redis loses its data)."""
    try:
        await gateway.limiter.settle(adm, token_delta, cost_delta)
    except LimiterUnavailable as failure:
        gateway.metrics.limiter_errors.inc(("settle",))
        gateway.warn_limiter(failure)


def request_account(gateway: Gateway, done: Finished) -> None:
    """Settle limits, meter, count and log one finished request (nothing here awaits)."""
    key, org, parsed, route, plan = done.key, done.org, done.parsed, done.route, done.plan
    outcome, adm, reserve, request_id = done.outcome, done.adm, done.reserve, done.request_id
    started = done.started
    elapsed = time.perf_counter() - started
    target = outcome.target
    cost = 0
    # The tokens recorded are what the ledger bills, estimates included (a stream cut short
    # before the engine's usage arrived), so the budget counters settle the same cost.
    if target is not None and (outcome.prompt_tokens or outcome.completion_tokens) and adm.budgets:
        price = gateway.snapshot.price(org.id, target)
        cost = cost_micros(
            price, outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens
        )
    if adm.token_keys or adm.budgets:
        token_delta = (
            outcome.prompt_tokens + outcome.completion_tokens - parsed.prompt_tokens_estimate
        )
        if isinstance(gateway.limiter, LocalLimiter):
            gateway.limiter.settle_now(adm, token_delta, cost - reserve)
        else:
            assert gateway.loop is not None
            task = gateway.loop.create_task(_settle(gateway, adm, token_delta, cost - reserve))
            # Keep a reference until it is done (the loop holds only a weak one).
            gateway.background.add(task)
            task.add_done_callback(gateway.background.discard)
    status = str(outcome.status)
    label = route or parsed.model
    gateway.metrics.requests.inc((label, status))
    gateway.metrics.latency.observe((label, status), elapsed)
    if outcome.ttft_s is not None:
        gateway.metrics.ttft.observe((label,), outcome.ttft_s)
    if outcome.prompt_tokens or outcome.completion_tokens:
        gateway.metrics.tokens.inc((label, "prompt"), outcome.prompt_tokens)
        gateway.metrics.tokens.inc((label, "completion"), outcome.completion_tokens)
    deployment = target if isinstance(target, DeploymentEntry) else None
    baseline_cost = _baseline_cost(gateway, org.id, plan, outcome)
    if gateway.meter is not None and target is not None:
        model = (
            deployment.served_model_name if deployment is not None else getattr(target, "model", "")
        )
        gateway.meter.record(
            UsageEvent(
                request_id=request_id,
                org_id=org.id,
                model=model,
                served_at=datetime.now(UTC),
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                cached_tokens=outcome.cached_tokens,
                status_code=outcome.status,
                latency_ms=int(elapsed * 1000),
                ttft_ms=int(outcome.ttft_s * 1000) if outcome.ttft_s is not None else None,
                api_key_id=None if key.id == CONSOLE_KEY_ID else key.id,
                route=route or parsed.model,
                target=target_label(target),
                deployment_id=deployment.id if deployment is not None else None,
                replica_id=outcome.replica.id if outcome.replica is not None else None,
                router_score=plan.decision.score,
                router_choice=plan.decision.choice,
                baseline_cost_micros=baseline_cost,
                error_code=_error_code(outcome, done.error_code) if outcome.status >= 400 else "",
            )
        )
    if gateway.config.access_log:
        access_logger.info(
            "request",
            extra={
                "request_id": request_id,
                "org": org.slug,
                "key": key.prefix,
                "model": parsed.model,
                "target": target_label(target),
                "replica": outcome.replica.key if outcome.replica is not None else "",
                "status": outcome.status,
                "latency_ms": round(elapsed * 1000, 2),
                "ttft_ms": round(outcome.ttft_s * 1000, 2) if outcome.ttft_s is not None else None,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "attempts": outcome.attempts,
            },
        )
