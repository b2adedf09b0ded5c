"""Fitting a scorer head on outcome data.

`fit_from_outcomes` is what the console calls when a tenant uploads an outcome file for a route;
`python -m inference.scorer.train` uses the same functions to produce the shipped weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inference.scorer.embedder import Embedder, EmbedderConfig
from inference.scorer.features import FEATURE_NAMES, multiple_choice, prompt_features
from inference.scorer.head import (
    FreeAnswerHead,
    HeadWeights,
    fit_logistic_grouped,
    standardisation,
)
from inference.scorer.outcomes import Outcome

# Chosen by the leave-subjects-out cross-validation in docs/router.md.
DEFAULT_L2 = 3e-4
# The free-answer head's, chosen the same way (nested: see docs/router.md).
DEFAULT_FREE_L2 = 3e-3
# Without a prior, a free-answer head is fitted only from at least this many free-answer rows.
MIN_FREE_ROWS = 100
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


def weak_better(weak_correct: np.ndarray, strong_correct: np.ndarray) -> np.ndarray:
    """The second event the head learns on free-answer prompts: only the weak model is right."""
    return np.asarray(weak_correct, dtype=bool) & ~np.asarray(strong_correct, dtype=bool)


def fit_head(
    inputs: HeadInputs,
    weak_correct: np.ndarray,
    strong_correct: np.ndarray,
    embedder: EmbedderConfig,
    l2: float = DEFAULT_L2,
    prior: HeadWeights | None = None,
    info: dict[str, object] | None = None,
    *,
    groups: np.ndarray | None = None,
    choices: np.ndarray | None = None,
    free_l2: float | None = None,
) -> HeadWeights:
    """Fit the logistic head. With a `prior`, its feature standardisation is kept and the
    coefficients are pulled towards its own rather than towards zero.

    `choices` marks the rows whose prompt lists answer options (`multiple_choice`); the
    other rows, free-answer ones, also teach the head `weak_better` with the same coefficients
    and an intercept of its own, so the score orders prompts by how far the weak model is ahead
    (strong minus weak correct: -1, 0 or 1). Multiple-choice rows leave that event out: there a
    weak model that is right where the strong one is wrong has often guessed. Without `choices`
    only the label is learnt. The shipped head is fitted with `choices`.

    With `choices` and `free_l2`, a second set of coefficients is fitted on the free-answer rows
    alone (label and event, l2 `free_l2`) and scores prompts without options at serving time
    (`HeadWeights.free_answer`). From scratch that needs `MIN_FREE_ROWS` such rows; with a
    prior that has a free-answer head, it is refined towards that head's coefficients (kept as
    it is when there are no free-answer rows).

    `groups` (a variant measured in docs/router.md, not shipped) numbers each row's source
    (0..g-1, e.g. one per outcome file): each source gets its own intercept while fitting, and
    the head's intercept is their mean, that of an average source.
    """
    if prior is not None:
        if prior.embedder != embedder or prior.feature_names != FEATURE_NAMES:
            raise ValueError("the prior head was fitted on different inputs")
        mean, scale = prior.feature_mean, prior.feature_scale
        center: np.ndarray | None = prior.coef
    else:
        mean, scale = standardisation(inputs.features)
        center = None
    n = len(inputs.features)
    x = np.hstack([inputs.embeddings.astype(np.float64), (inputs.features - mean) / scale])
    group = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    free = np.zeros(n, dtype=bool) if choices is None else ~np.asarray(choices, dtype=bool)
    free_head = None
    if choices is not None and free_l2 is not None:
        free_head = _fit_free_answer(x, weak_correct, strong_correct, free, free_l2, prior)
    coef, intercepts, label_groups = _fit_label_and_event(
        x, weak_correct, strong_correct, group, free, l2, center
    )
    return HeadWeights(
        embedder=embedder,
        feature_names=FEATURE_NAMES,
        feature_mean=mean,
        feature_scale=scale,
        coef=coef,
        intercept=float(np.mean(intercepts[:label_groups])),
        l2=l2,
        info=dict(info or {}),
        free_answer=free_head,
    )


def _fit_label_and_event(
    x: np.ndarray,
    weak_correct: np.ndarray,
    strong_correct: np.ndarray,
    group: np.ndarray,
    event_rows: np.ndarray,
    l2: float,
    center: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The label on every row (an intercept per group, 0..g-1) and `weak_better` on the rows
    `event_rows` (one more intercept, after the label's), with shared coefficients. Returns
    (coefficients, intercepts, g)."""
    y = weak_good_enough(weak_correct, strong_correct).astype(np.float64)
    label_groups = int(group.max()) + 1 if len(group) else 1
    if event_rows.any():
        x = np.vstack([x, x[event_rows]])
        y = np.concatenate([y, weak_better(weak_correct, strong_correct)[event_rows]])
        group = np.concatenate([group, np.full(int(event_rows.sum()), label_groups)])
    coef, intercepts = fit_logistic_grouped(x, y, group, l2, center=center)
    return coef, intercepts, label_groups


def _fit_free_answer(
    x: np.ndarray,
    weak_correct: np.ndarray,
    strong_correct: np.ndarray,
    free: np.ndarray,
    l2: float,
    prior: HeadWeights | None,
) -> FreeAnswerHead | None:
    """The free-answer head on the rows `free` of the design `x` (see `fit_head`)."""
    prior_free = prior.free_answer if prior is not None else None
    rows = int(free.sum())
    if rows == 0 or (prior_free is None and rows < MIN_FREE_ROWS):
        return prior_free
    center = prior_free.coef if prior_free is not None else None
    coef, intercepts, _ = _fit_label_and_event(
        x[free],
        np.asarray(weak_correct)[free],
        np.asarray(strong_correct)[free],
        np.zeros(rows, dtype=np.int64),
        np.ones(rows, dtype=bool),
        l2,
        center,
    )
    return FreeAnswerHead(coef=coef, intercept=float(intercepts[0]), l2=l2)


def fit_from_outcomes(
    rows: Sequence[Outcome],
    *,
    embedder: Embedder | None = None,
    prior: HeadWeights | None = None,
    l2: float | None = None,
) -> HeadWeights:
    """Fit a head on outcome rows (e.g. a tenant's uploaded file, see `outcomes`).

    With `prior` (typically the shipped head) the fit refines it, which suits files of a few
    hundred rows; without it the head is fitted from scratch. The objective is the shipped
    head's (see `fit_head`). Blocking: seconds for thousands of rows (every prompt is embedded),
    so run it in a worker, not in a request.
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
        free_l2 = DEFAULT_PRIOR_L2 if prior is not None else DEFAULT_FREE_L2
    else:
        free_l2 = l2
    return fit_head(
        inputs,
        weak,
        strong,
        embedder.config,
        l2=l2,
        prior=prior,
        info={"rows": len(rows), "prior": prior is not None},
        choices=np.array([multiple_choice(r.prompt) for r in rows]),
        free_l2=free_l2,
    )
