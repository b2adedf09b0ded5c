"""The auto policy's validation and resolution, calibration math, savings and outcome uploads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from billing.ledger import usage_record_batch
from console.models import AuditEvent
from inference.models import RouteScorer
from inference.routing.calibration import MIN_TRAFFIC, target_shares, thresholds_for_share
from inference.routing.config import RouteConfigError, TargetRef, route_spec_parse
from inference.routing.resolve import RequestFeatures, ResolveContext, route_plan
from inference.selectors.router import route_savings_daily
from inference.services.router import route_recalibrate, route_scorer_upload
from inference.services.routes import route_create
from tests.billing.factories import usage
from tests.gateway.conftest import make_deployment

TWO = ["deployment:cheap", "deployment:strong"]


def auto(config):  # type: ignore[no-untyped-def]
    return route_spec_parse(name="r", policy="auto", config=config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"targets": ["deployment:a"], "threshold": 0.5}, "at least two targets"),
        ({"targets": ["deployment:a", "route:b"], "threshold": 0.5}, "not to other routes"),
        ({"targets": ["deployment:a", "deployment:a"], "threshold": 0.5}, "appears twice"),
        ({"targets": TWO}, "max_strong_percent for the platform"),
        ({"targets": TWO, "threshold": 1.5}, "threshold[0]: must be a number from 0 to 1"),
        ({"targets": TWO, "threshold": True}, "threshold[0]"),
        ({"targets": [*TWO, "external:x"], "threshold": 0.5}, "with more, give thresholds"),
        ({"targets": [*TWO, "external:x"], "thresholds": [0.5]}, "a list of 2 number(s)"),
        ({"targets": [*TWO, "external:x"], "thresholds": [0.3, 0.6]}, "must not rise"),
        ({"targets": TWO, "thresholds": [0.5], "max_strong_percent": 101}, "max_strong_percent"),
        ({"targets": TWO, "thresholds": [0.5], "colour": 1}, "unknown field(s) colour"),
    ],
)
def test_bad_auto_configurations_are_refused_naming_the_problem(config, message):
    with pytest.raises(RouteConfigError) as caught:
        auto(config)
    assert message in caught.value.messages[0]


def _plan(spec, score):  # type: ignore[no-untyped-def]
    ctx = ResolveContext(scorer=lambda s, f: score)
    return route_plan(spec, {"r": spec}, RequestFeatures(prompt_text="x"), ctx)


def test_the_cheapest_target_whose_threshold_the_score_reaches_wins_then_stronger_ones():
    spec = auto({"targets": [*TWO, "external:best"], "thresholds": [0.8, 0.4]})
    cheap, strong, best = (
        TargetRef("deployment", "cheap"),
        TargetRef("deployment", "strong"),
        TargetRef("external", "best"),
    )
    high = _plan(spec, 0.8)
    assert high.targets == (cheap, strong, best) and high.decision.choice == "deployment:cheap"
    assert high.decision.baseline == best and high.decision.score == 0.8
    assert _plan(spec, 0.5).targets == (strong, best)
    low = _plan(spec, 0.39)
    assert low.targets == (best,) and low.decision.choice == "external:best"


def test_without_a_score_the_strongest_target_serves_and_the_reason_is_kept():
    spec = auto({"targets": TWO, "threshold": 0.0})
    plan = route_plan(spec, {"r": spec}, RequestFeatures())
    assert plan.targets == (TargetRef("deployment", "strong"),)
    assert plan.decision.score is None and "no scorer" in plan.decision.choice


def test_a_strong_share_gives_that_share_on_the_window_it_was_computed_from():
    scores = [i / 1000 for i in range(1000)]  # distinct
    for percent in (0, 10, 25, 33, 80, 100):
        (threshold,) = thresholds_for_share(scores, targets=2, max_strong_percent=percent)
        assert target_shares(scores, [threshold])[-1] == pytest.approx(percent / 100)
    # Three targets: the strong share as asked, the rest split evenly, highest scores cheapest.
    thresholds = thresholds_for_share(scores, targets=3, max_strong_percent=20)
    assert target_shares(scores, thresholds) == pytest.approx([0.4, 0.4, 0.2])
    # With ties the strong share errs low, never above the cap.
    tied = [0.5] * 50 + [0.9] * 50
    (t,) = thresholds_for_share(tied, targets=2, max_strong_percent=30)
    assert target_shares(tied, [t])[-1] <= 0.3


def test_no_strong_share_sends_nothing_strong_even_below_every_score_seen():
    """0% is a promise for later traffic too: a request scoring under everything the route
    was calibrated on still goes to a cheaper target."""
    scores = [0.75 + i / 1000 for i in range(220)]
    (threshold,) = thresholds_for_share(scores, targets=2, max_strong_percent=0)
    assert threshold == 0.0
    assert target_shares([0.0, 0.01, 0.74], [threshold]) == [1.0, 0.0]
    three = thresholds_for_share(scores, targets=3, max_strong_percent=0)
    assert three[-1] == 0.0 and target_shares([0.0, 0.3], three)[-1] == 0.0


@pytest.fixture
def deployments(org):  # type: ignore[no-untyped-def]
    make_deployment(org, "cheap", [])
    make_deployment(org, "strong", [])


def test_a_route_is_calibrated_on_save_then_on_its_own_traffic(org, owner, deployments):
    route = route_create(
        org=org,
        actor=owner,
        name="smart",
        policy="auto",
        config={"targets": TWO, "max_strong_percent": 25},
    )
    assert route.config["calibration"]["source"] == "reference sample"
    assert len(route.config["thresholds"]) == 1
    now = datetime.now(UTC)
    scores = [i / MIN_TRAFFIC for i in range(MIN_TRAFFIC)]
    usage_record_batch([usage(org.id, now, route="smart", router_score=s) for s in scores])
    assert route_recalibrate(route_id=route.id)
    route.refresh_from_db()
    assert route.config["calibration"]["source"] == "traffic"
    assert route.config["calibration"]["shares"][-1] == pytest.approx(0.25)
    assert route.config["thresholds"] == [pytest.approx(scores[MIN_TRAFFIC // 4])]
    assert AuditEvent.objects.filter(org=org, action="route.recalibrated").exists()
    assert not route_recalibrate(route_id=route.id)  # same traffic: nothing changes


def test_savings_compare_the_cost_with_the_strongest_targets_cost_per_day(org):
    day1 = datetime(2026, 3, 1, 10, tzinfo=UTC)
    day2 = day1 + timedelta(days=1)
    usage_record_batch(
        [
            usage(org.id, day1, route="smart", baseline_cost_micros=5_000),
            usage(org.id, day1, route="smart", baseline_cost_micros=7_000),
            usage(org.id, day2, route="smart"),  # the strongest served it: baseline = cost
            usage(org.id, day2, route="other", baseline_cost_micros=9_999),
        ]
    )
    days = route_savings_daily(org=org, route_name="smart", days=5, now=day2)
    assert [d.day for d in days] == [day2.date(), day1.date()]
    second, first = days
    # The default price of tiny-llama: none in this org, so the ledger's fallback rates them.
    assert first.requests == 2 and first.routed_cheaper == 2
    assert first.baseline_cost_micros == 12_000
    assert first.saved_micros == 12_000 - first.cost_micros
    assert second.requests == 1 and second.saved_micros == 0
    assert isinstance(first.cost_micros, int)


def test_a_bad_outcome_file_names_the_row_and_changes_nothing(org, owner, deployments):
    route = route_create(
        org=org, actor=owner, name="smart", policy="auto", config={"targets": TWO, "threshold": 0.5}
    )
    good = "prompt,weak,strong\n" + "".join(f"q{i},True,False\n" for i in range(30))
    bad = good + "q30,maybe,True\n"
    with pytest.raises(ValidationError) as caught:
        route_scorer_upload(route=route, actor=owner, file_name="x.csv", data=bad.encode())
    assert "row 32" in caught.value.message_dict["file"][0]
    with pytest.raises(ValidationError, match="at least 20"):
        route_scorer_upload(
            route=route, actor=owner, file_name="x.csv", data=b"prompt,a,b\nq,1,0\n"
        )
    assert not RouteScorer.objects.exists()
    assert not AuditEvent.objects.filter(action="route.scorer_uploaded").exists()


def test_stored_thresholds_keep_the_strong_share_when_many_requests_share_a_score(
    org, owner, deployments
):  # type: ignore[no-untyped-def]
    # The scorer caches by prompt: a frequent prompt scores exactly the same every time. A
    # threshold rounded up past that score would send every copy to the strongest target.
    route = route_create(
        org=org,
        actor=owner,
        name="smart",
        policy="auto",
        config={"targets": TWO, "max_strong_percent": 25},
    )
    scores = [0.01 + i / 1000 for i in range(50)] + [0.7000006] * 150
    now = datetime.now(UTC)
    usage_record_batch([usage(org.id, now, route="smart", router_score=s) for s in scores])
    route_recalibrate(route_id=route.id)
    route.refresh_from_db()
    assert route.config["calibration"]["source"] == "traffic"
    assert target_shares(scores, route.config["thresholds"])[-1] == pytest.approx(0.25)


def test_a_new_route_is_not_calibrated_on_the_traffic_of_a_deleted_route_of_that_name(
    org, owner, deployments
):  # type: ignore[no-untyped-def]
    from inference.services.routes import route_delete

    old = route_create(
        org=org, actor=owner, name="smart", policy="auto", config={"targets": TWO, "threshold": 0.5}
    )
    now = datetime.now(UTC)
    usage_record_batch(
        [
            usage(org.id, now - timedelta(minutes=1), route="smart", router_score=0.9)
            for _ in range(MIN_TRAFFIC)
        ]
    )
    route_delete(route=old, actor=owner)
    make_deployment(org, "mid", [])
    new = route_create(
        org=org,
        actor=owner,
        name="smart",
        policy="auto",
        config={"targets": ["deployment:mid", "deployment:strong"], "max_strong_percent": 20},
    )
    assert new.config["calibration"]["source"] == "reference sample"
    route_recalibrate(route_id=new.id)
    new.refresh_from_db()
    assert new.config["calibration"]["source"] == "reference sample"


def test_an_auto_route_behind_a_conditional_route_records_its_score_and_baseline():
    smart = route_spec_parse(name="smart", policy="auto", config={"targets": TWO, "threshold": 0.5})
    front = route_spec_parse(
        name="front",
        policy="conditional",
        config={
            "rules": [{"when": {"tag": "bulk"}, "target": "deployment:batch"}],
            "default": "route:smart",
        },
    )
    routes = {"smart": smart, "front": front}
    ctx = ResolveContext(scorer=lambda spec, f: 0.9)
    plan = route_plan(front, routes, RequestFeatures(prompt_text="hi"), ctx)
    assert plan.targets[0] == TargetRef("deployment", "cheap")
    assert plan.decision.score == 0.9
    assert plan.decision.choice == "deployment:cheap"
    assert plan.decision.baseline == TargetRef("deployment", "strong")
    # An auto route that is only a fallback after another target does not claim the request.
    behind = route_spec_parse(
        name="behind", policy="fallback", config={"targets": ["deployment:first", "route:smart"]}
    )
    plan = route_plan(behind, {**routes, "behind": behind}, RequestFeatures(prompt_text="hi"), ctx)
    assert plan.targets[0] == TargetRef("deployment", "first")
    assert plan.decision.baseline is None


def test_auto_targets_listed_dearest_first_are_refused_and_flagged_after_a_price_change(
    org, owner, client_for
):  # type: ignore[no-untyped-def]
    from tests.billing.factories import price

    make_deployment(org, "big", [])
    make_deployment(org, "small", [])
    price(
        org=org,
        model="big",
        input_micros_per_million=10_000_000,
        output_micros_per_million=30_000_000,
    )
    price(
        org=org, model="small", input_micros_per_million=100_000, output_micros_per_million=300_000
    )
    with pytest.raises(ValidationError) as refused:
        route_create(
            org=org,
            actor=owner,
            name="smart",
            policy="auto",
            config={"targets": ["deployment:big", "deployment:small"], "max_strong_percent": 20},
        )
    assert "deployment:small costs less than deployment:big" in str(refused.value)
    route = route_create(
        org=org,
        actor=owner,
        name="smart",
        policy="auto",
        config={"targets": ["deployment:small", "deployment:big"], "max_strong_percent": 20},
    )
    page = client_for(owner).get(f"/o/{org.slug}/routes/{route.id}/")
    assert "costs less than" not in page.content.decode()
    # The prices change afterwards: the route page says so.
    price(
        org=org,
        model="small",
        input_micros_per_million=20_000_000,
        output_micros_per_million=60_000_000,
        effective_from=datetime.now(UTC),
    )
    page = client_for(owner).get(f"/o/{org.slug}/routes/{route.id}/")
    assert "deployment:big costs less than deployment:small" in page.content.decode()
