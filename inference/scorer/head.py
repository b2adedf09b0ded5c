"""The scorer's head: L2-regularised logistic regression on the embedding and cheap features.

Fitted with Newton's method in float64 from a zero start: no randomness, no learning-rate schedule,
and the same data always gives the same weights. With ~400 inputs a Newton step is one small
linear solve, so fitting on ten thousand prompts takes well under a second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.scorer.embedder import EmbedderConfig

FORMAT_VERSION = 1
# Significant digits kept in the weights file: far below the noise of the fit, and it keeps the
# file small, readable and identical across runs that differ in the last float bit.
_DIGITS = 6


@dataclass(frozen=True)
class FreeAnswerHead:
    """Coefficients and intercept for prompts without answer options, on the same inputs (and
    the same feature standardisation) as the head that holds it."""

    coef: np.ndarray
    intercept: float
    l2: float

    def as_dict(self) -> dict[str, object]:
        return {
            "coef": _rounded(self.coef),
            "intercept": _rounded(np.array([self.intercept]))[0],
            "l2": self.l2,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], inputs: int) -> FreeAnswerHead:
        coef = np.array(data["coef"], dtype=np.float64)
        if coef.shape != (inputs,):
            raise ValueError("the free-answer coefficients do not match the head's inputs")
        return cls(coef=coef, intercept=float(data["intercept"]), l2=float(data["l2"]))


@dataclass(frozen=True)
class HeadWeights:
    """A fitted head and how its inputs are made.

    `coef` has one weight per encoder vector dimension followed by one per feature in
    `feature_names`; features are standardised with `feature_mean`/`feature_scale` first. The
    output is P(weak model good enough) = sigmoid(x . coef + intercept).

    `free_answer`, where present, scores prompts that list no answer options (`multiple_choice`
    is false) instead: such prompts behave differently enough (no guessing among options) that
    a head fitted on them alone ranks them better. Heads without it score every prompt alike.
    """

    embedder: EmbedderConfig
    feature_names: tuple[str, ...]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    coef: np.ndarray
    intercept: float
    l2: float
    info: dict[str, object] = field(default_factory=dict)
    free_answer: FreeAnswerHead | None = None

    def logits(
        self, embeddings: np.ndarray, features: np.ndarray, choices: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits for n prompts. `choices[i]` says whether prompt i lists answer options; with
        it, prompts without options get the free-answer head where there is one."""
        standardised = (features - self.feature_mean) / self.feature_scale
        x = np.hstack([embeddings.astype(np.float64), standardised])
        out = np.asarray(x @ self.coef + self.intercept, dtype=np.float64)
        if self.free_answer is not None and choices is not None:
            free = ~np.asarray(choices, dtype=bool)
            if free.any():
                out[free] = x[free] @ self.free_answer.coef + self.free_answer.intercept
        return out

    def predict(
        self, embeddings: np.ndarray, features: np.ndarray, choices: np.ndarray | None = None
    ) -> np.ndarray:
        return sigmoid(self.logits(embeddings, features, choices))

    def to_json(self) -> str:
        data = {
            "format": FORMAT_VERSION,
            "embedder": self.embedder.as_dict(),
            "feature_names": list(self.feature_names),
            "feature_mean": _rounded(self.feature_mean),
            "feature_scale": _rounded(self.feature_scale),
            "intercept": _rounded(np.array([self.intercept]))[0],
            "l2": self.l2,
            "coef": _rounded(self.coef),
            "info": self.info,
        }
        if self.free_answer is not None:  # absent otherwise: older heads keep their bytes
            data["free_answer"] = self.free_answer.as_dict()
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HeadWeights:
        """Parse a weights file; any malformed or foreign document raises ValueError."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
                found = data.get("format") if isinstance(data, dict) else None
                raise ValueError(f"unsupported weights format {found!r}")
            return cls._from_dict(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed weights file: {exc!r}") from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> HeadWeights:
        names = tuple(data["feature_names"])
        coef = np.array(data["coef"], dtype=np.float64)
        mean = np.array(data["feature_mean"], dtype=np.float64)
        scale = np.array(data["feature_scale"], dtype=np.float64)
        if len(mean) != len(names) or len(scale) != len(names):
            raise ValueError("feature statistics do not match the feature names")
        free = data.get("free_answer")
        return cls(
            embedder=EmbedderConfig.from_dict(data["embedder"]),
            feature_names=names,
            feature_mean=mean,
            feature_scale=scale,
            coef=coef,
            intercept=float(data["intercept"]),
            l2=float(data["l2"]),
            info=dict(data.get("info", {})),
            free_answer=None if free is None else FreeAnswerHead.from_dict(free, len(coef)),
        )

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> HeadWeights:
        return cls.from_json(path.read_text())


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.{_DIGITS}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    center: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 1e-10,
) -> tuple[np.ndarray, float]:
    """Minimise mean log-loss + l2/2 * |coef - center|^2 (intercept unpenalised) by Newton's
    method. `center` (zeros by default) lets a fit on a small file stay close to a prior head.

    Returns (coef, intercept). Deterministic for given inputs.
    """
    coef, intercepts = fit_logistic_grouped(
        x, y, np.zeros(len(y), dtype=np.int64), l2, center=center, max_iter=max_iter, tol=tol
    )
    return coef, float(intercepts[0])


def fit_logistic_grouped(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    l2: float,
    center: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Like `fit_logistic`, but every group (`groups[i]` in 0..g-1) has its own unpenalised
    intercept and the coefficients are shared.

    With a group per source (an MMLU subject, GSM8K), what sets one source's base rate apart from
    another's goes into the intercepts, so the shared coefficients learn what makes a prompt
    harder or easier than its neighbours rather than which source it came from.

    Returns (coef, one intercept per group). Deterministic for given inputs.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    n, d = x.shape
    if n == 0:
        raise ValueError("no training rows")
    count = int(groups.max()) + 1
    if groups.min() < 0 or len(groups) != n or np.bincount(groups, minlength=count).min() == 0:
        raise ValueError("groups must number the rows 0..g-1, every group with rows")
    design = np.hstack([x, (groups[:, None] == np.arange(count)).astype(np.float64)])
    penalty = np.concatenate([np.full(d, l2), np.zeros(count)])
    anchor = np.zeros(d + count)
    if center is not None:
        anchor[:d] = center
    w = anchor.copy()
    # Start every group at its base rate so the first step is already sensible.
    for group in range(count):
        rate = min(max(float(y[groups == group].mean()), 1e-6), 1 - 1e-6)
        w[d + group] = math.log(rate / (1 - rate))
    for _ in range(max_iter):
        p = sigmoid(design @ w)
        grad = design.T @ (p - y) / n + penalty * (w - anchor)
        hess = (design.T * (p * (1 - p))) @ design / n + np.diag(penalty)
        # A tiny ridge keeps the solve well posed when l2 is 0 and a feature is constant.
        step = np.linalg.solve(hess + 1e-9 * np.eye(d + count), grad)
        w -= step
        if float(np.max(np.abs(step))) < tol:
            break
    return w[:d], w[d:]


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale
