"""Turning scores into routing decisions, and thresholds into strong-model shares.

A score is P(the cheaper model answers as well as the stronger one). A request goes to the
cheaper model when its score clears the threshold (score >= threshold), else to the stronger one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Choice = Literal["weak", "strong"]


def decide(scores: Sequence[float] | np.ndarray, threshold: float) -> list[Choice]:
    """For each score: "weak" when it clears the threshold, else "strong"."""
    return ["weak" if s >= threshold else "strong" for s in np.asarray(scores, dtype=np.float64)]


def choose_target(scores: Sequence[float], threshold: float) -> int:
    """For targets ordered from cheapest to strongest, with one score per target but the last
    (the chance that target answers as well as the strongest): the index of the cheapest target
    whose score clears the threshold, or the strongest target's index if none does."""
    for index, score in enumerate(scores):
        if score >= threshold:
            return index
    return len(scores)


def strong_share(scores: Sequence[float] | np.ndarray, threshold: float) -> float:
    """The share of these scores that the threshold sends to the strong model."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return math.nan
    return float(np.mean(values < threshold))


def calibrate_threshold(scores: Sequence[float] | np.ndarray, max_strong_share: float) -> float:
    """The threshold that sends at most `max_strong_share` of these scores (a route's recent
    traffic) to the strong model, and as close to it as the scores allow.

    The threshold is one of the observed scores (the order statistic at that quantile), so the
    share is exact when scores are distinct; with ties it errs towards fewer strong calls. A
    share of 1 returns +inf (everything strong), a share of 0 the lowest score (nothing strong).
    """
    if not 0.0 <= max_strong_share <= 1.0 or math.isnan(max_strong_share):
        raise ValueError(f"max_strong_share must be in [0, 1], not {max_strong_share!r}")
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("no scores to calibrate on")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    allowed = math.floor(max_strong_share * values.size + 1e-9)
    if allowed >= values.size:
        return math.inf
    # Exactly the `allowed` lowest scores lie strictly below values[allowed] when there are no
    # ties; ties at that value only remove strong calls.
    return float(values[allowed])
