"""Route configuration: parse a route's JSON into typed, validated specs, with clear errors.

A target reference is a string ``kind:name``: ``deployment:<deployment name>``,
``external:<endpoint name>`` or ``route:<route name>`` (a route may delegate to another route; the
graph must stay acyclic). Policies and their ``config`` shapes:

- ``single``: ``{"target": REF}``
- ``weighted``: ``{"targets": [{"target": REF, "weight": 90}, ...]}``, whole weights adding to 100
- ``fallback``: ``{"targets": [REF, ...], "max_attempts": 3}`` (tried in order; ``max_attempts``
  bounds how many targets are tried and defaults to every target the chain reaches, nested
  routes' targets included, at most 5; a connection failure
  is also retried once on another replica of the same deployment, whatever the policy)
- ``conditional``: ``{"rules": [{"when": {...}, "target": REF}, ...], "default": REF}``; the first
  rule whose every condition holds wins. Conditions: ``prompt_tokens_min``, ``prompt_tokens_max``,
  ``max_tokens_min``, ``max_tokens_max`` (whole numbers), ``has_tools``, ``has_response_format``
  (booleans) and ``tag`` (equal to the request's ``x-route-tag`` header).

- ``auto``: ``{"targets": [REF, ...], "thresholds": [0.6, ...], "max_strong_percent": 30}``:
  the cost/quality router. Targets run from cheapest to strongest (2 to 16 deployments or external
  endpoints). The scorer gives one estimate per request that the cheaper models answer as well as
  the strongest; the request goes to the first target ``i`` whose ``thresholds[i]`` the score
  reaches, else to the strongest. ``thresholds`` holds one value in [0, 1] per target but the
  strongest, never rising along the list (``threshold``, one number, is short for two targets).
  With ``max_strong_percent`` (a whole number 0 to 100) the platform computes the thresholds from
  the route's recent traffic and keeps them current (``inference.routing.calibration``);
  ``calibration`` holds what that computation found and is written by the platform.
  ``max_attempts`` bounds how many targets are tried on failure (the chosen one, then the
  stronger ones in order).

New policies register a parser here and a resolver in ``inference.routing.resolve``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

TARGET_KINDS = ("deployment", "external", "route")
MAX_TARGETS = 16
MAX_ATTEMPTS = 5
CONDITION_INTS = ("prompt_tokens_min", "prompt_tokens_max", "max_tokens_min", "max_tokens_max")
CONDITION_BOOLS = ("has_tools", "has_response_format")
CONDITION_KEYS = (*CONDITION_INTS, *CONDITION_BOOLS, "tag")


class RouteConfigError(ValidationError):
    """A route configuration problem; ``messages`` name the place, e.g. ``targets[1].weight``."""


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Conditions:
    prompt_tokens_min: int | None = None
    prompt_tokens_max: int | None = None
    max_tokens_min: int | None = None
    max_tokens_max: int | None = None
    has_tools: bool | None = None
    has_response_format: bool | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    when: Conditions
    target: TargetRef


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A validated route. Exactly the fields its policy uses are set."""

    name: str
    policy: str
    targets: tuple[TargetRef, ...] = ()
    weights: tuple[int, ...] = ()
    rules: tuple[Rule, ...] = ()
    default: TargetRef | None = None
    max_attempts: int = 1
    # The attempts were not given: every target the chain reaches may be tried, nested routes'
    # targets included (``max_attempts`` then counts only this route's own entries).
    attempts_default: bool = False
    cold_start_fallback: TargetRef | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def references(self) -> tuple[TargetRef, ...]:
        """Every target this route can send to, including its cold-start fallback."""
        refs = list(self.targets) + [rule.target for rule in self.rules]
        if self.default is not None:
            refs.append(self.default)
        if self.cold_start_fallback is not None:
            refs.append(self.cold_start_fallback)
        return tuple(refs)


def target_ref_parse(raw: object, where: str) -> TargetRef:
    if not isinstance(raw, str) or ":" not in raw:
        raise RouteConfigError(
            f"{where}: a target is written kind:name, with kind one of "
            f"{', '.join(TARGET_KINDS)} (got {raw!r})."
        )
    kind, _, name = raw.partition(":")
    kind, name = kind.strip(), name.strip()
    if kind not in TARGET_KINDS:
        raise RouteConfigError(
            f"{where}: unknown target kind {kind!r}; use one of {', '.join(TARGET_KINDS)}."
        )
    if not name or len(name) > 128:
        raise RouteConfigError(f"{where}: the target name must be 1 to 128 characters.")
    return TargetRef(kind, name)


def _whole(value: object, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RouteConfigError(f"{where}: must be a whole number from {lo} to {hi}.")
    return value


def _target_list(config: Mapping[str, Any], where: str = "targets") -> list[Any]:
    items = config.get("targets")
    if not isinstance(items, list) or not items:
        raise RouteConfigError(f"{where}: give a non-empty list of targets.")
    if len(items) > MAX_TARGETS:
        raise RouteConfigError(f"{where}: at most {MAX_TARGETS} targets.")
    return items


def _parse_single(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {"targets": (target_ref_parse(config.get("target"), "target"),)}


def _parse_weighted(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    targets: list[TargetRef] = []
    weights: list[int] = []
    for i, item in enumerate(_target_list(config)):
        if not isinstance(item, Mapping):
            raise RouteConfigError(f"targets[{i}]: write {{'target': 'kind:name', 'weight': N}}.")
        targets.append(target_ref_parse(item.get("target"), f"targets[{i}].target"))
        weights.append(_whole(item.get("weight"), f"targets[{i}].weight", 0, 100))
    if sum(weights) != 100:
        raise RouteConfigError(
            f"targets: the weights add up to {sum(weights)}; they must add to 100."
        )
    return {"targets": tuple(targets), "weights": tuple(weights)}


def _parse_fallback(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    targets = tuple(
        target_ref_parse(item, f"targets[{i}]") for i, item in enumerate(_target_list(config))
    )
    if len(set(targets)) != len(targets):
        raise RouteConfigError("targets: a target appears twice in the fallback chain.")
    raw_attempts = config.get("max_attempts")
    attempts = (
        min(len(targets), MAX_ATTEMPTS)
        if raw_attempts is None
        else _whole(raw_attempts, "max_attempts", 1, MAX_ATTEMPTS)
    )
    return {"targets": targets, "max_attempts": attempts, "attempts_default": raw_attempts is None}


def _parse_conditions(raw: object, where: str) -> Conditions:
    if not isinstance(raw, Mapping) or not raw:
        raise RouteConfigError(
            f"{where}: give at least one condition ({', '.join(CONDITION_KEYS)})."
        )
    unknown = sorted(set(raw) - set(CONDITION_KEYS))
    if unknown:
        raise RouteConfigError(
            f"{where}: unknown condition(s) {', '.join(unknown)}; use {', '.join(CONDITION_KEYS)}."
        )
    values: dict[str, Any] = {}
    for key in CONDITION_INTS:
        if key in raw:
            values[key] = _whole(raw[key], f"{where}.{key}", 0, 10_000_000)
    for key in CONDITION_BOOLS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise RouteConfigError(f"{where}.{key}: must be true or false.")
            values[key] = raw[key]
    if "tag" in raw:
        tag = raw["tag"]
        if not isinstance(tag, str) or not tag or len(tag) > 64:
            raise RouteConfigError(f"{where}.tag: must be a string of 1 to 64 characters.")
        values["tag"] = tag
    for lo, hi in (
        ("prompt_tokens_min", "prompt_tokens_max"),
        ("max_tokens_min", "max_tokens_max"),
    ):
        if lo in values and hi in values and values[lo] > values[hi]:
            raise RouteConfigError(f"{where}: {lo} is above {hi}, so the rule can never match.")
    return Conditions(**values)


def _parse_conditional(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    raw_rules = config.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RouteConfigError("rules: give a non-empty list of rules.")
    if len(raw_rules) > MAX_TARGETS:
        raise RouteConfigError(f"rules: at most {MAX_TARGETS} rules.")
    rules = []
    for i, item in enumerate(raw_rules):
        if not isinstance(item, Mapping):
            raise RouteConfigError(f"rules[{i}]: write {{'when': {{...}}, 'target': 'kind:name'}}.")
        unknown = sorted(set(item) - {"when", "target"})
        if unknown:
            raise RouteConfigError(f"rules[{i}]: unknown field(s) {', '.join(unknown)}.")
        rules.append(
            Rule(
                when=_parse_conditions(item.get("when"), f"rules[{i}].when"),
                target=target_ref_parse(item.get("target"), f"rules[{i}].target"),
            )
        )
    default = target_ref_parse(config.get("default"), "default")
    return {"rules": tuple(rules), "default": default}


def _parse_auto(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    items = _target_list(config)
    if len(items) < 2:
        raise RouteConfigError(
            "targets: the auto policy needs at least two targets, cheapest first, strongest last."
        )
    targets = tuple(target_ref_parse(item, f"targets[{i}]") for i, item in enumerate(items))
    for i, ref in enumerate(targets):
        if ref.kind == "route":
            raise RouteConfigError(
                f"targets[{i}]: the auto policy sends to deployments or external endpoints, "
                "not to other routes (it prices the strongest target for savings)."
            )
    if len(set(targets)) != len(targets):
        raise RouteConfigError("targets: a target appears twice.")
    share = config.get("max_strong_percent")
    if share is not None:
        _whole(share, "max_strong_percent", 0, 100)
    raw = config.get("thresholds")
    if raw is None and "threshold" in config:
        if len(targets) != 2:
            raise RouteConfigError(
                "threshold: one threshold serves two targets; with more, give thresholds "
                f"(a list of {len(targets) - 1}, one per target but the strongest)."
            )
        raw = [config["threshold"]]
        where = "threshold"
    else:
        where = "thresholds"
    if raw is None:
        raise RouteConfigError(
            "thresholds: give the thresholds (one per target but the strongest), or "
            "max_strong_percent for the platform to calibrate them."
        )
    if not isinstance(raw, list) or len(raw) != len(targets) - 1:
        raise RouteConfigError(
            f"{where}: give a list of {len(targets) - 1} number(s), one per target but the "
            "strongest."
        )
    thresholds: list[float] = []
    for i, value in enumerate(raw):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise RouteConfigError(f"{where}[{i}]: must be a number from 0 to 1.")
        if thresholds and value > thresholds[-1]:
            raise RouteConfigError(
                f"{where}[{i}]: thresholds must not rise from cheaper to stronger targets "
                f"({value} is above {thresholds[-1]})."
            )
        thresholds.append(float(value))
    raw_attempts = config.get("max_attempts")
    attempts = (
        min(len(targets), MAX_ATTEMPTS)
        if raw_attempts is None
        else _whole(raw_attempts, "max_attempts", 1, MAX_ATTEMPTS)
    )
    calibration = config.get("calibration")
    if calibration is not None and not isinstance(calibration, Mapping):
        raise RouteConfigError("calibration: written by the platform; leave it out.")
    return {
        "targets": targets,
        "max_attempts": attempts,
        "attempts_default": raw_attempts is None,
        "extra": {"thresholds": tuple(thresholds), "max_strong_percent": share},
    }


PolicyParser = Callable[[str, Mapping[str, Any]], dict[str, Any]]

# Policy name -> parser of its config. A new policy adds itself here and in resolve.RESOLVERS.
PARSERS: dict[str, PolicyParser] = {
    "single": _parse_single,
    "weighted": _parse_weighted,
    "fallback": _parse_fallback,
    "conditional": _parse_conditional,
    "auto": _parse_auto,
}
_ALLOWED_KEYS = {
    "single": {"target"},
    "weighted": {"targets"},
    "fallback": {"targets", "max_attempts"},
    "conditional": {"rules", "default"},
    "auto": {
        "targets",
        "thresholds",
        "threshold",
        "max_strong_percent",
        "max_attempts",
        "calibration",
    },
}


def route_spec_parse(
    *, name: str, policy: str, config: object, cold_start_fallback: str = ""
) -> RouteSpec:
    """Validate one route on its own (shape, kinds, weights). Raises RouteConfigError."""
    parser = PARSERS.get(policy)
    if parser is None:
        raise RouteConfigError(
            f"policy: unknown policy {policy!r}; use one of {', '.join(PARSERS)}."
        )
    if not isinstance(config, Mapping):
        raise RouteConfigError("config: must be a JSON object.")
    allowed = _ALLOWED_KEYS.get(policy)
    if allowed is not None:
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise RouteConfigError(
                f"config: unknown field(s) {', '.join(unknown)} for the {policy} policy."
            )
    fields = parser(name, config)
    fallback = (
        target_ref_parse(cold_start_fallback, "cold_start_fallback")
        if cold_start_fallback
        else None
    )
    if fallback is not None and fallback.kind == "route":
        raise RouteConfigError("cold_start_fallback: must be a deployment or an external endpoint.")
    return RouteSpec(name=name, policy=policy, cold_start_fallback=fallback, **fields)


def routes_check_references(
    specs: Mapping[str, RouteSpec], *, deployments: set[str], externals: set[str]
) -> None:
    """Check that every reference names an existing object and that no route reaches itself.

    ``deployments`` and ``externals`` are the org's deployment and endpoint names. Raises
    RouteConfigError naming the route and the problem.
    """
    known = {"deployment": deployments, "external": externals, "route": set(specs)}
    for spec in specs.values():
        for ref in spec.references():
            if ref.name not in known[ref.kind]:
                raise RouteConfigError(f"route {spec.name!r}: {ref} does not exist in this org.")
            if ref.kind == "route" and ref.name == spec.name:
                raise RouteConfigError(f"route {spec.name!r}: a route cannot send to itself.")

    # Depth-first search for a cycle among route -> route references.
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(specs, WHITE)

    def visit(name: str, path: list[str]) -> None:
        colour[name] = GREY
        for ref in specs[name].references():
            if ref.kind != "route":
                continue
            if colour[ref.name] == GREY:
                cycle = [*path[path.index(ref.name) :], ref.name]
                raise RouteConfigError(f"routes form a cycle: {' -> '.join(cycle)}.")
            if colour[ref.name] == WHITE:
                visit(ref.name, [*path, ref.name])
        colour[name] = BLACK

    for name in sorted(specs):
        if colour[name] == WHITE:
            visit(name, [name])
