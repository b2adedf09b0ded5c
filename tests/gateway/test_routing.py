"""Route configuration and resolution: pure functions, no database."""

from __future__ import annotations

import pytest

from inference.routing.config import (
    RouteConfigError,
    TargetRef,
    route_spec_parse,
    routes_check_references,
)
from inference.routing.resolve import (
    RequestFeatures,
    ResolveContext,
    route_plan,
    weighted_pick,
)


def spec(name, policy, config, cold=""):  # type: ignore[no-untyped-def]
    return route_spec_parse(name=name, policy=policy, config=config, cold_start_fallback=cold)


@pytest.mark.parametrize(
    ("policy", "config", "message"),
    [
        ("single", {"target": "llama"}, "kind:name"),
        ("single", {"target": "gpu:llama"}, "unknown target kind 'gpu'"),
        ("weighted", {"targets": [{"target": "deployment:a", "weight": 60}]}, "add up to 60"),
        ("weighted", {"targets": [{"target": "deployment:a", "weight": 1.5}]}, "weight"),
        ("fallback", {"targets": []}, "non-empty list"),
        ("fallback", {"targets": ["deployment:a", "deployment:a"]}, "appears twice"),
        ("fallback", {"targets": ["deployment:a"], "max_attempts": 9}, "max_attempts"),
        ("conditional", {"rules": [], "default": "deployment:a"}, "rules"),
        (
            "conditional",
            {"rules": [{"when": {"colour": "red"}, "target": "deployment:a"}], "default": "x:y"},
            "unknown condition(s) colour",
        ),
        (
            "conditional",
            {
                "rules": [
                    {"when": {"prompt_tokens_min": 9, "prompt_tokens_max": 2}, "target": "d:a"}
                ],
                "default": "deployment:a",
            },
            "never match",
        ),
        ("single", {"target": "deployment:a", "extra": 1}, "unknown field(s) extra"),
        ("magic", {}, "unknown policy"),
    ],
)
def test_bad_configurations_are_refused_with_a_message_naming_the_problem(policy, config, message):
    with pytest.raises(RouteConfigError) as caught:
        spec("r", policy, config)
    assert message in caught.value.messages[0]


def test_unknown_targets_and_cycles_are_found():
    a = spec("a", "single", {"target": "route:b"})
    b = spec("b", "fallback", {"targets": ["deployment:d", "route:c"]})
    c = spec("c", "single", {"target": "route:a"})
    with pytest.raises(RouteConfigError, match="cycle: a -> b -> c -> a"):
        routes_check_references({"a": a, "b": b, "c": c}, deployments={"d"}, externals=set())
    with pytest.raises(RouteConfigError, match="external:gpt does not exist"):
        routes_check_references(
            {"x": spec("x", "single", {"target": "external:gpt"})},
            deployments=set(),
            externals=set(),
        )
    b_ends = spec("b", "fallback", {"targets": ["deployment:d"]})
    routes_check_references({"a": a, "b": b_ends}, deployments={"d"}, externals=set())


def test_weighted_pick_follows_the_weights_and_never_picks_a_zero_weight():
    weights = (90, 0, 10)
    assert weighted_pick(weights, 0.0) == 0
    assert weighted_pick(weights, 0.8999) == 0
    assert weighted_pick(weights, 0.9) == 2
    assert weighted_pick(weights, 0.9999) == 2
    counts = [0, 0, 0]
    for i in range(1000):
        counts[weighted_pick(weights, i / 1000)] += 1
    assert counts == [900, 0, 100]


def test_conditional_rules_pick_the_first_match_then_the_default():
    route = spec(
        "smart",
        "conditional",
        {
            "rules": [
                {"when": {"tag": "batch"}, "target": "deployment:cheap"},
                {"when": {"prompt_tokens_min": 1000}, "target": "deployment:long"},
                {"when": {"has_tools": True}, "target": "external:strong"},
                {"when": {"max_tokens_max": 16}, "target": "deployment:cheap"},
            ],
            "default": "deployment:mid",
        },
    )

    def target(**features):  # type: ignore[no-untyped-def]
        plan = route_plan(route, {}, RequestFeatures(**features))
        return str(plan.targets[0]), plan.decision.choice

    assert target(tag="batch", prompt_tokens=5000) == ("deployment:cheap", "rules[0]")
    assert target(prompt_tokens=5000) == ("deployment:long", "rules[1]")
    assert target(has_tools=True) == ("external:strong", "rules[2]")
    assert target(max_tokens=8) == ("deployment:cheap", "rules[3]")
    assert target(max_tokens=None) == ("deployment:mid", "default")
    assert target(max_tokens=100) == ("deployment:mid", "default")


def test_nested_routes_expand_into_one_ordered_plan():
    inner = spec("inner", "fallback", {"targets": ["deployment:b", "deployment:c"]})
    outer = spec(
        "outer",
        "fallback",
        {"targets": ["deployment:a", "route:inner", "deployment:b"], "max_attempts": 4},
        cold="external:warm",
    )
    plan = route_plan(outer, {"inner": inner}, RequestFeatures())
    assert [str(t) for t in plan.targets] == ["deployment:a", "deployment:b", "deployment:c"]
    assert plan.max_attempts == 4
    assert plan.cold_start_fallback == TargetRef("external", "warm")


def test_weighted_route_uses_the_context_draw():
    route = spec(
        "ab",
        "weighted",
        {
            "targets": [
                {"target": "deployment:a", "weight": 50},
                {"target": "deployment:b", "weight": 50},
            ]
        },
    )
    low = route_plan(route, {}, RequestFeatures(), ResolveContext(rand=lambda: 0.1))
    high = route_plan(route, {}, RequestFeatures(), ResolveContext(rand=lambda: 0.9))
    assert (str(low.targets[0]), str(high.targets[0])) == ("deployment:a", "deployment:b")
    assert low.decision.choice == "deployment:a"
