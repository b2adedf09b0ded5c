"""Scores to routing decisions, and a strong-call budget to a threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.scorer.policy import calibrate_threshold, choose_target, decide, strong_share


def test_scores_that_clear_the_threshold_go_to_the_weak_model() -> None:
    assert decide([0.2, 0.5, 0.9], 0.5) == ["strong", "weak", "weak"]


def test_the_cheapest_target_that_clears_the_threshold_wins() -> None:
    # Three targets, cheapest first; scores for the two cheaper ones.
    assert choose_target([0.9, 0.95], 0.8) == 0
    assert choose_target([0.3, 0.85], 0.8) == 1
    assert choose_target([0.3, 0.4], 0.8) == 2  # none clears: the strongest


def test_calibrated_threshold_sends_exactly_the_budget_to_strong() -> None:
    scores = np.random.default_rng(0).random(1000)
    for share in (0.0, 0.1, 0.25, 0.5, 0.8):
        threshold = calibrate_threshold(scores, share)
        assert strong_share(scores, threshold) == pytest.approx(share)


def test_calibration_never_exceeds_the_budget_when_scores_tie() -> None:
    scores = [0.1, 0.5, 0.5, 0.5, 0.9]
    threshold = calibrate_threshold(scores, 0.4)  # two of five allowed; three tie at 0.5
    assert threshold == 0.5
    assert strong_share(scores, threshold) == pytest.approx(0.2)


def test_a_full_budget_sends_everything_to_strong() -> None:
    assert calibrate_threshold([0.2, 0.7], 1.0) == math.inf
    assert decide([1.0], math.inf) == ["strong"]


@pytest.mark.parametrize("share", [-0.1, 1.5, math.nan])
def test_a_budget_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="max_strong_share"):
        calibrate_threshold([0.5], share)


def test_calibration_needs_scores() -> None:
    with pytest.raises(ValueError, match="no scores"):
        calibrate_threshold([], 0.5)
