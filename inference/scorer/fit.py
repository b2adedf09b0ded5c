"""Fitting a scorer head on outcome data.

`fit_from_outcomes` is what the console calls when a tenant uploads an outcome file for a route;
`python -m inference.scorer.train` uses the same functions to produce the shipped weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inference.scorer.embedder import Embedder, EmbedderConfig
from inference.scorer.features import FEATURE_NAMES, prompt_features
from inference.scorer.head import HeadWeights, fit_logistic_grouped, standardisation
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


def weak_better(weak_correct: np.ndarray, strong_correct: np.ndarray) -> np.ndarray:
    """The second event the head learns on free-answer prompts: only the weak model is right."""
    return np.asarray(weak_correct, dtype=bool) & ~np.asarray(strong_correct, dtype=bool)


# Two or more lines that start like "A. ", "b) " or "(C) ": the prompt offers its answers.
_OPTION_LINE = re.compile(r"^\s*\(?[A-Ja-j][.)]\s", re.MULTILINE)


def multiple_choice(prompt: str) -> bool:
    """Whether a prompt lists answer options (an MMLU question does, a GSM8K one does not)."""
    return len(_OPTION_LINE.findall(prompt, 0, 20_000)) >= 2


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
) -> HeadWeights:
    """Fit the logistic head. With a `prior`, its feature standardisation is kept and the
    coefficients are pulled towards its own rather than towards zero.

    `choices` marks the rows whose prompt lists answer options (`multiple_choice`); the
    other rows, free-answer ones, also teach the head `weak_better` with the same coefficients
    and an intercept of its own, so the score orders prompts by how far the weak model is ahead
    (strong minus weak correct: -1, 0 or 1). Multiple-choice rows leave that event out: there a
    weak model that is right where the strong one is wrong has often guessed. Without `choices`
    only the label is learnt. The shipped head is fitted with `choices`.

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
    y = weak_good_enough(weak_correct, strong_correct).astype(np.float64)
    group = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    label_groups = int(group.max()) + 1 if n else 1
    if choices is not None:
        free = ~np.asarray(choices, dtype=bool)
        if free.any():
            # The second event's rows: one more intercept, after the label's.
            x = np.vstack([x, x[free]])
            y = np.concatenate([y, weak_better(weak_correct, strong_correct)[free]])
            group = np.concatenate([group, np.full(int(free.sum()), label_groups)])
    coef, intercepts = fit_logistic_grouped(x, y, group, l2, center=center)
    return HeadWeights(
        embedder=embedder,
        feature_names=FEATURE_NAMES,
        feature_mean=mean,
        feature_scale=scale,
        coef=coef,
        intercept=float(np.mean(intercepts[:label_groups])),
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
    return fit_head(
        inputs,
        weak,
        strong,
        embedder.config,
        l2=l2,
        prior=prior,
        info={"rows": len(rows), "prior": prior is not None},
        choices=np.array([multiple_choice(r.prompt) for r in rows]),
    )
