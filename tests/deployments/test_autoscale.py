from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inference.orchestrator.autoscale import ScaleInput, replicas_needed, scale_decide

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def decide(**overrides):  # type: ignore[no-untyped-def]
    params = {
        "current": 1,
        "min_replicas": 0,
        "max_replicas": 4,
        "target_concurrency": 8,
        "replica_load": [],
        "now": NOW,
        "scale_down_delay_s": 60,
    }
    params.update(overrides)
    return scale_decide(ScaleInput(**params))


@pytest.mark.parametrize(
    ("load", "target", "needed"), [(0, 8, 0), (1, 8, 1), (8, 8, 1), (9, 8, 2), (33, 8, 5)]
)
def test_replicas_needed_rounds_up(load, target, needed):
    assert replicas_needed(load=load, target_concurrency=target) == needed


def test_load_above_target_scales_up_at_once():
    decision = decide(current=1, replica_load=[10, 9])
    assert decision.desired == 3
    assert decision.low_load_since is None


def test_scale_up_is_capped_at_max():
    assert decide(current=1, replica_load=[100]).desired == 4


def test_gateway_inflight_counts_when_it_exceeds_engine_load():
    assert decide(current=1, replica_load=[2], gateway_inflight=20).desired == 3
    assert decide(current=1, replica_load=[20], gateway_inflight=2).desired == 3


def test_low_load_waits_out_the_delay_before_scaling_down():
    first = decide(current=3, replica_load=[1, 0, 0])
    assert first.desired == 3
    assert first.low_load_since == NOW

    still = decide(
        current=3, replica_load=[1, 0, 0], low_load_since=NOW, now=NOW + timedelta(seconds=59)
    )
    assert still.desired == 3
    assert still.low_load_since == NOW

    done = decide(
        current=3, replica_load=[1, 0, 0], low_load_since=NOW, now=NOW + timedelta(seconds=60)
    )
    assert done.desired == 1
    assert done.low_load_since is None


def test_a_burst_during_the_delay_resets_it():
    decision = decide(current=2, replica_load=[9, 9], low_load_since=NOW - timedelta(seconds=50))
    assert decision.desired == 3
    assert decision.low_load_since is None


def test_idle_deployment_with_min_zero_scales_to_zero_after_the_delay():
    decision = decide(
        current=1, replica_load=[0], low_load_since=NOW - timedelta(seconds=61), min_replicas=0
    )
    assert decision.desired == 0


def test_min_replicas_is_kept_when_idle():
    decision = decide(
        current=2, replica_load=[0, 0], low_load_since=NOW - timedelta(hours=1), min_replicas=2
    )
    assert decision.desired == 2


def test_demand_starts_one_replica_from_zero():
    assert decide(current=0, demand=True).desired == 1
    assert decide(current=0, demand=False).desired == 0


def test_demand_does_not_start_replicas_past_max():
    assert decide(current=0, demand=True, max_replicas=0).desired == 0


def test_lowering_max_takes_effect_without_the_delay():
    decision = decide(current=3, replica_load=[30, 30, 30], max_replicas=1)
    assert decision.desired == 1


def test_raising_min_takes_effect_at_once():
    assert decide(current=1, min_replicas=3).desired == 3
