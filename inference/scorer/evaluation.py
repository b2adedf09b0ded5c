"""Router metrics: quality against the share of calls sent to the strong model.

The definitions follow RouteLLM's evaluation so that figures can be set side by side:

- The curve: thresholds at the 0th, 10th, ..., 100th percentiles of the router's scores; at each,
  prompts scoring below the threshold go to the strong model (at the last one, every prompt does).
  Each point is (share of prompts sent to the strong model, share answered correctly).
- APGR: the area under that curve minus the weak-only area, over the strong-only area minus the
  weak-only area (trapezoids over the curve's share range). A random router scores about 0.5.
- CPT(x%): the smallest strong share at which the curve, read as a polyline, recovers x% of the
  gap between the weak and the strong model's quality.
- The oracle (RouteLLM's "optimal"): with a budget of c strong calls it sends exactly the prompts
  the strong model gets right and the weak one gets wrong, up to c of them.

Scores here mean "how likely the weak model is good enough": higher goes to the weak model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DECILES = 10


@dataclass(frozen=True)
class CurvePoint:
    strong_share: float
    quality: float


@dataclass(frozen=True)
class RouterMetrics:
    curve: list[CurvePoint]
    apgr: float
    cpt50: float
    cpt80: float


@dataclass(frozen=True)
class Evaluation:
    """The router's metrics beside the random router's (averaged over seeds) and the oracle's."""

    prompts: int
    weak_quality: float
    strong_quality: float
    router: RouterMetrics
    random: RouterMetrics
    oracle: RouterMetrics


def _as_bool_array(values: Sequence[bool] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=bool)


def quality_curve(
    scores: Sequence[float] | np.ndarray,
    weak_correct: Sequence[bool] | np.ndarray,
    strong_correct: Sequence[bool] | np.ndarray,
    points: int = DECILES,
) -> list[CurvePoint]:
    """Quality at thresholds set on the score quantiles, from no strong calls to all of them."""
    s = np.asarray(scores, dtype=np.float64)
    weak = _as_bool_array(weak_correct)
    strong = _as_bool_array(strong_correct)
    if not (len(s) == len(weak) == len(strong)) or len(s) == 0:
        raise ValueError("scores and outcomes must be non-empty and of the same length")
    thresholds = np.quantile(s, np.linspace(0.0, 1.0, points + 1))
    curve = []
    for i, threshold in enumerate(thresholds):
        to_strong = s < threshold if i < points else np.ones_like(weak)
        answered = np.where(to_strong, strong, weak)
        curve.append(CurvePoint(float(to_strong.mean()), float(answered.mean())))
    return curve


def apgr(curve: Sequence[CurvePoint], weak_quality: float, strong_quality: float) -> float:
    """Average performance gap recovered: the normalised area under the curve."""
    ordered = sorted(curve, key=lambda p: p.strong_share)
    x = np.array([p.strong_share for p in ordered])
    y = np.array([p.quality for p in ordered])
    span = x[-1] - x[0]
    gap = strong_quality - weak_quality
    if span <= 0 or gap == 0:
        return math.nan
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return (area - weak_quality * span) / (gap * span)


def cpt(
    curve: Sequence[CurvePoint], weak_quality: float, strong_quality: float, recovered: float
) -> float:
    """Call-performance threshold: the strong share needed to recover `recovered` (0..1) of the
    weak-to-strong gap, interpolated linearly between curve points; NaN if never reached."""
    gap = strong_quality - weak_quality
    if gap <= 0:
        return math.nan
    target = weak_quality + recovered * gap
    ordered = sorted(curve, key=lambda p: p.strong_share)
    # A small tolerance: qualities are ratios of counts and may miss an exact target by 1 ulp.
    eps = 1e-12
    if ordered[0].quality >= target - eps:
        return ordered[0].strong_share
    for a, b in itertools.pairwise(ordered):
        if b.quality >= target - eps:
            if b.quality == a.quality:
                return b.strong_share
            fraction = (target - a.quality) / (b.quality - a.quality)
            return a.strong_share + fraction * (b.strong_share - a.strong_share)
    return math.nan


def metrics(curve: list[CurvePoint], weak_quality: float, strong_quality: float) -> RouterMetrics:
    return RouterMetrics(
        curve=curve,
        apgr=apgr(curve, weak_quality, strong_quality),
        cpt50=cpt(curve, weak_quality, strong_quality, 0.5),
        cpt80=cpt(curve, weak_quality, strong_quality, 0.8),
    )


def oracle_curve(
    weak_correct: Sequence[bool] | np.ndarray,
    strong_correct: Sequence[bool] | np.ndarray,
    points: int = DECILES,
) -> list[CurvePoint]:
    """RouteLLM's optimal router: a budget of c strong calls fixes min(c, gain) extra prompts,
    where gain counts the prompts only the strong model gets right."""
    weak = _as_bool_array(weak_correct)
    strong = _as_bool_array(strong_correct)
    n = len(weak)
    gain = int(np.sum(strong & ~weak))
    base = int(np.sum(weak))
    curve = []
    for i in range(points + 1):
        share = i / points
        curve.append(CurvePoint(share, (base + min(share * n, gain)) / n))
    return curve


def random_metrics(
    weak_correct: Sequence[bool] | np.ndarray,
    strong_correct: Sequence[bool] | np.ndarray,
    seeds: int = 10,
    points: int = DECILES,
) -> RouterMetrics:
    """A router with uniformly random scores, averaged over `seeds` seeds (0 .. seeds-1):
    point-wise for the curve, and metric by metric for APGR and CPT."""
    weak = _as_bool_array(weak_correct)
    strong = _as_bool_array(strong_correct)
    weak_q, strong_q = float(weak.mean()), float(strong.mean())
    runs = []
    for seed in range(seeds):
        scores = np.random.default_rng(seed).random(len(weak))
        runs.append(metrics(quality_curve(scores, weak, strong, points), weak_q, strong_q))
    curve = [
        CurvePoint(
            float(np.mean([r.curve[i].strong_share for r in runs])),
            float(np.mean([r.curve[i].quality for r in runs])),
        )
        for i in range(points + 1)
    ]
    return RouterMetrics(
        curve=curve,
        apgr=float(np.mean([r.apgr for r in runs])),
        cpt50=float(np.mean([r.cpt50 for r in runs])),
        cpt80=float(np.mean([r.cpt80 for r in runs])),
    )


def evaluate(
    scores: Sequence[float] | np.ndarray,
    weak_correct: Sequence[bool] | np.ndarray,
    strong_correct: Sequence[bool] | np.ndarray,
) -> Evaluation:
    """The router's curve and metrics next to the random router's and the oracle's."""
    weak = _as_bool_array(weak_correct)
    strong = _as_bool_array(strong_correct)
    weak_q, strong_q = float(weak.mean()), float(strong.mean())
    return Evaluation(
        prompts=len(weak),
        weak_quality=weak_q,
        strong_quality=strong_q,
        router=metrics(quality_curve(scores, weak, strong), weak_q, strong_q),
        random=random_metrics(weak, strong),
        oracle=metrics(oracle_curve(weak, strong), weak_q, strong_q),
    )


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.1f}%"


def format_evaluation(title: str, ev: Evaluation) -> str:
    """A plain-text table of the three routers' curves and metrics."""
    lines = [
        f"{title}: {ev.prompts} prompts; weak model {_percent(ev.weak_quality)} correct, "
        f"strong model {_percent(ev.strong_quality)}",
        "",
        "quality at each decile of the scores (strong-call share -> share answered correctly)",
        f"{'threshold':>9s}  {'scorer':>15s}  {'random (10 seeds)':>17s}  {'oracle':>15s}",
    ]
    for i, (mine, rand, best) in enumerate(
        zip(ev.router.curve, ev.random.curve, ev.oracle.curve, strict=True)
    ):
        cells = [
            f"{_percent(p.strong_share):>6s} -> {_percent(p.quality):>6s}"
            for p in (mine, rand, best)
        ]
        lines.append(f"{'p' + str(i * 10):>9s}  {cells[0]:>15s}  {cells[1]:>17s}  {cells[2]:>15s}")
    lines.append("")
    lines.append(f"{'':9s}  {'scorer':>15s}  {'random (10 seeds)':>17s}  {'oracle':>15s}")
    for label, attr in (("APGR", "apgr"), ("CPT(50%)", "cpt50"), ("CPT(80%)", "cpt80")):
        values = [getattr(m, attr) for m in (ev.router, ev.random, ev.oracle)]
        cells = [
            ("n/a" if math.isnan(v) else f"{v:.3f}") if attr == "apgr" else _percent(v)
            for v in values
        ]
        lines.append(f"{label:>9s}  {cells[0]:>15s}  {cells[1]:>17s}  {cells[2]:>15s}")
    if ev.strong_quality <= ev.weak_quality:
        lines.append("")
        lines.append(
            "n/a: the strong model answers no more of these prompts correctly than the weak one "
            f"({_percent(ev.strong_quality)} against {_percent(ev.weak_quality)}), so there is "
            "no gap for a router to recover."
        )
    return "\n".join(lines)
