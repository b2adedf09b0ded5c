"""Route resolution: pure functions from (validated routes, request features) to a plan.

A plan is the ordered list of terminal targets (deployments and external endpoints) to try for
one request; nested routes are expanded. Nothing here touches the network or the database.

Extension point: a policy registers a resolver in ``RESOLVERS``. A resolver returns the targets
this route sends to, in order (they may be routes, expanded afterwards), and optionally a
decision (a score and the choice made) that ends up on the usage record. The cost/quality ``auto``
policy plugs a scorer in through ``ResolveContext.scorer``.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from inference.routing.config import MAX_ATTEMPTS, Conditions, RouteSpec, TargetRef

MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What routing rules may look at. Token counts are the gateway's estimate."""

    prompt_tokens: int = 0
    max_tokens: int | None = None
    has_tools: bool = False
    has_response_format: bool = False
    tag: str | None = None
    prompt_text: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    score: float | None = None
    choice: str = ""
    # The strongest target of an auto route: what savings are measured against.
    baseline: TargetRef | None = None


@dataclass(slots=True)
class ResolveContext:
    rand: Callable[[], float] = random.random
    # For score-based policies: (route, features) -> an estimate in [0, 1].
    scorer: Callable[[RouteSpec, RequestFeatures], float] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    targets: tuple[TargetRef, ...]
    max_attempts: int = 1
    cold_start_fallback: TargetRef | None = None
    decision: Decision = field(default_factory=Decision)


class RouteResolutionError(Exception):
    pass


Resolver = Callable[
    [RouteSpec, RequestFeatures, ResolveContext], tuple[tuple[TargetRef, ...], Decision | None]
]


def conditions_match(when: Conditions, features: RequestFeatures) -> bool:
    if when.prompt_tokens_min is not None and features.prompt_tokens < when.prompt_tokens_min:
        return False
    if when.prompt_tokens_max is not None and features.prompt_tokens > when.prompt_tokens_max:
        return False
    if when.max_tokens_min is not None and (
        features.max_tokens is None or features.max_tokens < when.max_tokens_min
    ):
        return False
    if when.max_tokens_max is not None and (
        features.max_tokens is None or features.max_tokens > when.max_tokens_max
    ):
        return False
    if when.has_tools is not None and features.has_tools != when.has_tools:
        return False
    if when.has_response_format is not None and (
        features.has_response_format != when.has_response_format
    ):
        return False
    return when.tag is None or features.tag == when.tag


def weighted_pick(weights: tuple[int, ...], draw: float) -> int:
    """Index chosen by ``draw`` in [0, 1) over integer weights (zero weights never win)."""
    cumulative = list(itertools.accumulate(weights))
    return bisect.bisect_right(cumulative, draw * cumulative[-1])


def _single(
    spec: RouteSpec, f: RequestFeatures, ctx: ResolveContext
) -> tuple[tuple[TargetRef, ...], Decision | None]:
    return spec.targets[:1], None


def _weighted(
    spec: RouteSpec, f: RequestFeatures, ctx: ResolveContext
) -> tuple[tuple[TargetRef, ...], Decision | None]:
    index = weighted_pick(spec.weights, ctx.rand())
    return (spec.targets[index],), Decision(choice=str(spec.targets[index]))


def _fallback(
    spec: RouteSpec, f: RequestFeatures, ctx: ResolveContext
) -> tuple[tuple[TargetRef, ...], Decision | None]:
    return spec.targets, None


def _conditional(
    spec: RouteSpec, f: RequestFeatures, ctx: ResolveContext
) -> tuple[tuple[TargetRef, ...], Decision | None]:
    for i, rule in enumerate(spec.rules):
        if conditions_match(rule.when, f):
            return (rule.target,), Decision(choice=f"rules[{i}]")
    assert spec.default is not None
    return (spec.default,), Decision(choice="default")


def auto_choose(score: float, thresholds: tuple[float, ...]) -> int:
    """Index of the cheapest target whose threshold the score reaches (the strongest if none)."""
    for index, threshold in enumerate(thresholds):
        if score >= threshold:
            return index
    return len(thresholds)


def _auto(
    spec: RouteSpec, f: RequestFeatures, ctx: ResolveContext
) -> tuple[tuple[TargetRef, ...], Decision | None]:
    """The chosen target, then the stronger ones (tried in order if it fails). Without a score
    (no scorer, or it failed) the strongest target serves and the reason is recorded."""
    thresholds: tuple[float, ...] = spec.extra["thresholds"]
    strongest = spec.targets[-1]
    try:
        if ctx.scorer is None:
            raise RuntimeError("no scorer")
        score = float(ctx.scorer(spec, f))
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score {score!r} out of range")
    except Exception as error:
        reason = str(error) or type(error).__name__
        choice = f"{strongest} (scorer failed: {reason})"[:100]
        return (strongest,), Decision(score=None, choice=choice, baseline=strongest)
    index = auto_choose(score, thresholds)
    return spec.targets[index:], Decision(
        score=score, choice=str(spec.targets[index]), baseline=strongest
    )


RESOLVERS: dict[str, Resolver] = {
    "single": _single,
    "weighted": _weighted,
    "fallback": _fallback,
    "conditional": _conditional,
    "auto": _auto,
}


def route_plan(
    spec: RouteSpec,
    routes: Mapping[str, RouteSpec],
    features: RequestFeatures,
    ctx: ResolveContext | None = None,
) -> Plan:
    """The targets to try, in order, for one request to ``spec``.

    Nested routes are expanded depth-first; a terminal target appears once. The attempt bound is
    the largest any route on the way asks for (only fallback chains and auto routes ask for more
    than one; without ``max_attempts`` they ask for every target they reach).
    """
    ctx = ctx or ResolveContext()
    out: list[TargetRef] = []
    attempts = 1
    cold: TargetRef | None = None
    top_decision: Decision | None = None

    def expand(current: RouteSpec, depth: int) -> None:
        nonlocal attempts, cold, top_decision
        if depth > MAX_DEPTH:
            raise RouteResolutionError(f"route {spec.name!r} nests deeper than {MAX_DEPTH}")
        resolver = RESOLVERS.get(current.policy)
        if resolver is None:
            raise RouteResolutionError(f"no resolver for policy {current.policy!r}")
        refs, decision = resolver(current, features, ctx)
        if decision is None:
            pass
        elif decision.baseline is None:  # a label: which rule, which weighted target
            if top_decision is None:
                top_decision = decision
        elif not out and (top_decision is None or top_decision.baseline is None):
            # An auto route that supplies the first target decides what is recorded (score,
            # choice, baseline), over the label of a conditional or weighted route around it;
            # one reached only after other targets failed does not.
            top_decision = decision
        if cold is None:
            cold = current.cold_start_fallback
        before = len(out)
        for ref in refs:
            if ref.kind == "route":
                nested = routes.get(ref.name)
                if nested is None:
                    raise RouteResolutionError(f"route {ref.name!r} is not configured")
                expand(nested, depth + 1)
            elif ref not in out:
                out.append(ref)
        if current.attempts_default:
            # Every target this route reaches, through nested routes too (bounded as before).
            attempts = max(attempts, min(len(out) - before, MAX_ATTEMPTS))
        else:
            attempts = max(attempts, current.max_attempts)

    expand(spec, 0)
    return Plan(
        targets=tuple(out),
        max_attempts=max(attempts, 1),
        cold_start_fallback=cold,
        decision=top_decision or Decision(),
    )
