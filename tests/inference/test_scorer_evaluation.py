"""Router metrics, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.scorer.evaluation import (
    CurvePoint,
    apgr,
    cpt,
    evaluate,
    format_evaluation,
    oracle_curve,
    quality_curve,
    random_metrics,
)

# Four prompts in score order (low score = strong model needed):
#   A 0.1: only the strong model is right      (routing it to strong gains one answer)
#   B 0.2: both wrong
#   C 0.3: both right
#   D 0.4: both right
SCORES = [0.3, 0.1, 0.4, 0.2]  # C, A, D, B: the order of the input must not matter
WEAK = [True, False, True, False]
STRONG = [True, True, True, False]
WEAK_Q, STRONG_Q = 0.5, 0.75


def test_curve_sends_the_lowest_scores_to_the_strong_model_first() -> None:
    curve = quality_curve(SCORES, WEAK, STRONG, points=4)
    assert [p.strong_share for p in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # A goes first and gains one answer; B, C and D change nothing.
    assert [p.quality for p in curve] == [0.5, 0.75, 0.75, 0.75, 0.75]


def test_apgr_is_the_normalised_area_between_weak_and_strong() -> None:
    curve = quality_curve(SCORES, WEAK, STRONG, points=4)
    # Area: (0.5 + 0.75) / 2 * 0.25 + 0.75 * 0.75 = 0.71875; (0.71875 - 0.5) / 0.25 = 0.875.
    assert apgr(curve, WEAK_Q, STRONG_Q) == pytest.approx(0.875)


def test_cpt_interpolates_between_curve_points() -> None:
    curve = quality_curve(SCORES, WEAK, STRONG, points=4)
    # 50% of the gap is quality 0.625, half way from share 0 (0.5) to share 0.25 (0.75).
    assert cpt(curve, WEAK_Q, STRONG_Q, 0.5) == pytest.approx(0.125)
    assert cpt(curve, WEAK_Q, STRONG_Q, 0.8) == pytest.approx(0.2)


def test_cpt_is_nan_when_the_curve_never_recovers_the_gap() -> None:
    curve = [CurvePoint(0.0, 0.5), CurvePoint(1.0, 0.6)]
    assert math.isnan(cpt(curve, 0.5, 0.8, 0.5))
    assert math.isnan(cpt(curve, 0.5, 0.5, 0.5))  # no gap to recover


def test_a_router_that_sends_the_wrong_prompts_scores_below_random() -> None:
    inverted = [-s for s in SCORES]
    curve = quality_curve(inverted, WEAK, STRONG, points=4)
    assert apgr(curve, WEAK_Q, STRONG_Q) < 0.5


def test_oracle_spends_its_budget_only_on_prompts_the_strong_model_fixes() -> None:
    curve = oracle_curve(WEAK, STRONG)
    # One prompt in four is fixable: 0.5 + min(share, 0.25).
    assert [p.quality for p in curve[:4]] == pytest.approx([0.5, 0.6, 0.7, 0.75])
    assert curve[-1].quality == pytest.approx(0.75)
    # Area 0.055 + 0.065 + 0.0725 + 0.75 * 0.7 = 0.7175 -> APGR (0.7175 - 0.5) / 0.25 = 0.87.
    assert apgr(curve, WEAK_Q, STRONG_Q) == pytest.approx(0.87)
    assert cpt(curve, WEAK_Q, STRONG_Q, 0.5) == pytest.approx(0.125)


def test_random_router_recovers_about_half_the_gap() -> None:
    rng = np.random.default_rng(1)
    weak = rng.random(4000) < 0.6
    strong = weak | (rng.random(4000) < 0.5)
    metrics = random_metrics(weak, strong)
    assert metrics.apgr == pytest.approx(0.5, abs=0.03)
    assert metrics.cpt50 == pytest.approx(0.5, abs=0.05)
    assert [p.strong_share for p in metrics.curve] == pytest.approx(
        [i / 10 for i in range(11)], abs=1e-3
    )


def test_random_router_is_the_same_on_every_run() -> None:
    first = random_metrics(WEAK * 50, STRONG * 50)
    second = random_metrics(WEAK * 50, STRONG * 50)
    assert first == second


def test_evaluate_reports_the_three_routers_side_by_side() -> None:
    ev = evaluate(SCORES * 25, WEAK * 25, STRONG * 25)
    assert ev.prompts == 100
    assert (ev.weak_quality, ev.strong_quality) == (WEAK_Q, STRONG_Q)
    assert ev.router.apgr > ev.random.apgr
    text = format_evaluation("toy", ev)
    assert "toy: 100 prompts; weak model 50.0% correct, strong model 75.0%" in text
    assert "APGR" in text and "CPT(50%)" in text and "CPT(80%)" in text
    assert text.count("% -> ") == 3 * 11  # three routers, eleven thresholds


def test_curve_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        quality_curve([0.1, 0.2], [True], [True, False])
