"""Thresholds of an auto route from a score distribution, and what they will do.

Pure functions. A route with ``max_strong_percent`` P over targets t0 (cheapest) .. tN (strongest)
sends the lowest-scoring P% of requests to tN; the rest is split evenly among the cheaper
targets, the highest scores to the cheapest. With two targets that is simply "at most P% strong".
The thresholds are order statistics of the scores (``inference.scorer.policy.
calibrate_threshold``), so on the distribution they were computed from the strong share is at
most P% and as close to it as ties allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from inference.routing.resolve import auto_choose
from inference.scorer.policy import calibrate_threshold

# A route is calibrated on its own traffic once it has this many scored requests in the window.
MIN_TRAFFIC = 200
WINDOW_REQUESTS = 2000
WINDOW_DAYS = 7


def thresholds_for_share(
    scores: Sequence[float], *, targets: int, max_strong_percent: int
) -> tuple[float, ...]:
    """One threshold per target but the strongest, non-increasing, each in [0, 1]."""
    if targets < 2:
        raise ValueError("an auto route has at least two targets")
    if not scores:
        raise ValueError("no scores to calibrate on")
    strong = max_strong_percent / 100
    cheaper = targets - 1
    out: list[float] = []
    for i in range(cheaper):
        # Below threshold i: the strong share plus the shares of targets i+1 .. N-1.
        below = strong + (cheaper - 1 - i) * (1 - strong) / cheaper
        # None below means none, not none of these scores: a later request may score lower.
        value = 0.0 if below <= 0 else calibrate_threshold(scores, min(1.0, below))
        out.append(1.0 if math.isinf(value) else min(1.0, max(0.0, value)))
    for i in range(1, len(out)):  # float noise must not make them rise
        out[i] = min(out[i], out[i - 1])
    return tuple(out)


def target_shares(scores: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Share of these scores each target would get, cheapest first."""
    counts = [0] * (len(thresholds) + 1)
    for score in scores:
        counts[auto_choose(score, tuple(thresholds))] += 1
    total = len(scores)
    return [c / total if total else 0.0 for c in counts]
