"""Fitting a scorer head on outcome data.

`fit_from_outcomes` is what the console calls when a tenant uploads an outcome file for a route;
`python -m inference.scorer.train` uses the same functions to produce the shipped weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inference.scorer.embedder import Embedder, EmbedderConfig
from inference.scorer.features import FEATURE_NAMES, prompt_features
from inference.scorer.head import HeadWeights, fit_logistic, standardisation
from inference.scorer.outcomes import Outcome

# Chosen by the leave-subjects-out cross-validation in docs/router.md.
DEFAULT_L2 = 3e-4
# A tenant's file is usually small: its fit is pulled towards the shipped head this hard.
DEFAULT_PRIOR_L2 = 3e-3


@dataclass(frozen=True)
class HeadInputs:
    """Encoder vectors [n, 768] and features [n, len(FEATURE_NAMES)] of n prompts."""

    embeddings: np.ndarray
    features: np.ndarray

    def take(self, index: np.ndarray) -> HeadInputs:
        return HeadInputs(self.embeddings[index], self.features[index])


def head_inputs(
    prompts: Sequence[str],
    embedder: Embedder,
    progress: Callable[[int, int], None] | None = None,
) -> HeadInputs:
    """Embed and featurise prompts, one at a time exactly as the scorer does at serving time."""
    embeddings = np.zeros((len(prompts), embedder.dimensions), dtype=np.float32)
    features = np.zeros((len(prompts), len(FEATURE_NAMES)), dtype=np.float64)
    for i, prompt in enumerate(prompts):
        encoded = embedder.encode(prompt)
        embeddings[i] = embedder.vectors(encoded)
        features[i] = prompt_features(prompt, encoded.prompt_tokens)
        if progress is not None and (i + 1) % 500 == 0:
            progress(i + 1, len(prompts))
    return HeadInputs(embeddings, features)


def weak_good_enough(weak_correct: np.ndarray, strong_correct: np.ndarray) -> np.ndarray:
    """The training label: the weak answer is right, or the strong one is wrong too.

    Routing a prompt to the strong model only pays when the strong model is right and the weak
    one is wrong, so that is the event the head learns to predict (RouteLLM's convention).
    """
    return np.asarray(weak_correct, dtype=bool) | ~np.asarray(strong_correct, dtype=bool)


def fit_head(
    inputs: HeadInputs,
    weak_correct: np.ndarray,
    strong_correct: np.ndarray,
    embedder: EmbedderConfig,
    l2: float = DEFAULT_L2,
    prior: HeadWeights | None = None,
    info: dict[str, object] | None = None,
) -> HeadWeights:
    """Fit the logistic head. With a `prior`, its feature standardisation is kept and the
    coefficients are pulled towards its own rather than towards zero."""
    if prior is not None:
        if prior.embedder != embedder or prior.feature_names != FEATURE_NAMES:
            raise ValueError("the prior head was fitted on different inputs")
        mean, scale = prior.feature_mean, prior.feature_scale
        center: np.ndarray | None = prior.coef
    else:
        mean, scale = standardisation(inputs.features)
        center = None
    x = np.hstack([inputs.embeddings.astype(np.float64), (inputs.features - mean) / scale])
    y = weak_good_enough(weak_correct, strong_correct).astype(np.float64)
    coef, intercept = fit_logistic(x, y, l2, center=center)
    return HeadWeights(
        embedder=embedder,
        feature_names=FEATURE_NAMES,
        feature_mean=mean,
        feature_scale=scale,
        coef=coef,
        intercept=intercept,
        l2=l2,
        info=dict(info or {}),
    )


def fit_from_outcomes(
    rows: Sequence[Outcome],
    *,
    embedder: Embedder | None = None,
    prior: HeadWeights | None = None,
    l2: float | None = None,
) -> HeadWeights:
    """Fit a head on outcome rows (e.g. a tenant's uploaded file, see `outcomes`).

    With `prior` (typically the shipped head) the fit refines it, which suits files of a few
    hundred rows; without it the head is fitted from scratch. Blocking: seconds for thousands of
    rows (every prompt is embedded), so run it in a worker, not in a request.
    """
    if not rows:
        raise ValueError("no outcome rows to fit on")
    config = prior.embedder if prior is not None else EmbedderConfig()
    embedder = embedder or Embedder(config)
    inputs = head_inputs([r.prompt for r in rows], embedder)
    weak = np.array([r.weak_correct for r in rows])
    strong = np.array([r.strong_correct for r in rows])
    if l2 is None:
        l2 = DEFAULT_PRIOR_L2 if prior is not None else DEFAULT_L2
    return fit_head(
        inputs,
        weak,
        strong,
        embedder.config,
        l2=l2,
        prior=prior,
        info={"rows": len(rows), "prior": prior is not None},
    )
