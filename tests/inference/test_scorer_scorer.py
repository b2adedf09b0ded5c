"""The shipped scorer: loads offline, scores in [0, 1], caches, is thread-safe, and its weights
are what the training command produces."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.scorer.embedder import EmbedderConfig
from inference.scorer.fit import fit_from_outcomes
from inference.scorer.head import HeadWeights
from inference.scorer.outcomes import Outcome
from inference.scorer.scorer import SHIPPED_WEIGHTS, Scorer

PROMPTS = [
    "What is the capital of France?",
    "Let f(x) = x^3 - 6x^2 + 11x - 6. Find all real roots and prove there are no others.",
    "Translate 'good morning' into Spanish.",
    "A train leaves at 3:15 pm at 80 km/h; a second leaves at 4:00 pm at 100 km/h. When does "
    "the second catch up, and how far from the station?",
]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load()


def test_shipped_weights_are_small_and_describe_their_inputs() -> None:
    assert SHIPPED_WEIGHTS.stat().st_size < 100_000
    head = HeadWeights.load(SHIPPED_WEIGHTS)
    assert head.embedder == EmbedderConfig()
    assert len(head.coef) == 768 + len(head.feature_names)  # two 384-d vectors, features


def test_scores_are_probabilities(scorer: Scorer) -> None:
    scores = scorer.score_batch(PROMPTS)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == len(scores)


def test_a_repeated_prompt_is_served_from_the_cache(scorer: Scorer) -> None:
    first = scorer.score("Name three prime numbers.")
    cached_before = len(scorer._cache)
    assert scorer.score("Name three prime numbers.") == first
    assert len(scorer._cache) == cached_before


def test_cache_keeps_only_the_most_recent_prompts() -> None:
    small = Scorer(HeadWeights.load(SHIPPED_WEIGHTS), cache_size=2)
    for prompt in PROMPTS[:3]:
        small.score(prompt)
    assert len(small._cache) == 2


def test_concurrent_scoring_gives_the_sequential_results(scorer: Scorer) -> None:
    uncached = Scorer(scorer.head, scorer.embedder, cache_size=0)
    expected = [uncached.score(p) for p in PROMPTS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(uncached.score, PROMPTS * 5))
    assert results == expected * 5


def test_a_head_for_other_embeddings_is_refused(scorer: Scorer) -> None:
    head = HeadWeights.load(SHIPPED_WEIGHTS)
    other = HeadWeights(
        embedder=EmbedderConfig("fp32", 256),
        feature_names=head.feature_names,
        feature_mean=head.feature_mean,
        feature_scale=head.feature_scale,
        coef=head.coef,
        intercept=head.intercept,
        l2=head.l2,
    )
    with pytest.raises(ValueError, match="fitted on"):
        Scorer(other, scorer.embedder)


def test_a_head_with_the_wrong_number_of_inputs_is_refused(scorer: Scorer) -> None:
    head = HeadWeights.load(SHIPPED_WEIGHTS)
    short = HeadWeights(
        embedder=head.embedder,
        feature_names=head.feature_names,
        feature_mean=head.feature_mean,
        feature_scale=head.feature_scale,
        coef=head.coef[:388],  # a head for the sentence embedding alone
        intercept=head.intercept,
        l2=head.l2,
    )
    with pytest.raises(ValueError, match="expects 388 inputs"):
        Scorer(short, scorer.embedder)


def test_a_tenant_file_refines_the_shipped_head(scorer: Scorer) -> None:
    rows = [
        Outcome(prompt=p, weak_correct=i % 2 == 0, strong_correct=True)
        for i, p in enumerate(PROMPTS * 3)
    ]
    head = fit_from_outcomes(rows, embedder=scorer.embedder, prior=scorer.head)
    assert head.info == {"rows": 12, "prior": True}
    assert head.embedder == scorer.head.embedder
    # Pulled towards, but not equal to, the shipped coefficients.
    assert 0 < np.linalg.norm(head.coef - scorer.head.coef) < np.linalg.norm(scorer.head.coef)


MMLU_LIKE = "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:"
GSM8K_LIKE = "Janet has 3 apples and buys 4 more. She eats 2. How many apples does she have left?"


def test_prompts_without_options_are_scored_by_the_free_answer_head(scorer: Scorer) -> None:
    head = scorer.head
    assert head.free_answer is not None
    assert not np.allclose(head.free_answer.coef, head.coef)
    single = Scorer(replace(head, free_answer=None), scorer.embedder, cache_size=0)
    both = Scorer(head, scorer.embedder, cache_size=0)
    # Options listed: the main head, whichever head the file has.
    assert both.score(MMLU_LIKE) == single.score(MMLU_LIKE)
    # No options: the free-answer head's own coefficients and intercept.
    embedding, features = both.inputs(GSM8K_LIKE)
    x = np.concatenate([embedding, (features - head.feature_mean) / head.feature_scale])
    expected = 1 / (1 + np.exp(-(x @ head.free_answer.coef + head.free_answer.intercept)))
    assert both.score(GSM8K_LIKE) == pytest.approx(float(expected), abs=1e-9)
    assert both.score(GSM8K_LIKE) != pytest.approx(single.score(GSM8K_LIKE), abs=1e-3)


def test_a_tenant_file_without_free_answer_rows_keeps_the_shipped_free_head(
    scorer: Scorer,
) -> None:
    rows = [
        Outcome(prompt=f"{MMLU_LIKE} ({i})", weak_correct=i % 2 == 0, strong_correct=True)
        for i in range(6)
    ]
    head = fit_from_outcomes(rows, embedder=scorer.embedder, prior=scorer.head)
    assert head.free_answer == scorer.head.free_answer


def test_a_tenant_file_with_free_answer_rows_refines_the_free_head(scorer: Scorer) -> None:
    rows = [
        Outcome(prompt=p, weak_correct=i % 2 == 0, strong_correct=True)
        for i, p in enumerate(PROMPTS * 3)
    ]
    head = fit_from_outcomes(rows, embedder=scorer.embedder, prior=scorer.head)
    assert head.free_answer is not None and scorer.head.free_answer is not None
    moved = np.linalg.norm(head.free_answer.coef - scorer.head.free_answer.coef)
    assert 0 < moved < np.linalg.norm(scorer.head.free_answer.coef)


def test_shipped_weights_are_what_training_produces(shared_data: Path, tmp_path: Path) -> None:
    """Retrains on the shared data (minutes on a first run; embeddings are then cached).

    On the kind of machine that trained the shipped head the result is byte-identical. Another
    CPU's kernels round the encoder's floating point slightly differently, and the fit (l2 3e-4
    over 772 inputs) carries that into coefficients up to about 0.02 apart (an AVX2-only AMD EPYC:
    0.018 of the coefficients' norm). What must not move is what the head does: on the same
    embeddings both heads give every prompt nearly the same score. A change to the data, the
    labels or a hyperparameter moves them far more (l2 4e-4 instead of 3e-4: at most 0.041, 0.0037
    on average; the free-answer head's l2 4e-3 instead of 3e-3: at most 0.031).
    """
    from inference.scorer.dataset import cached_head_inputs, load_data_dir
    from inference.scorer.embedder import Embedder
    from inference.scorer.features import multiple_choice
    from inference.scorer.train import main

    out = tmp_path / "head.json"
    main(["--data", str(shared_data / "routing"), "--out", str(out), "--quiet"])
    shipped = HeadWeights.load(SHIPPED_WEIGHTS)
    trained = HeadWeights.load(out)
    assert trained.info == shipped.info
    assert (trained.l2, trained.embedder, trained.feature_names) == (
        shipped.l2,
        shipped.embedder,
        shipped.feature_names,
    )
    assert shipped.free_answer is not None and trained.free_answer is not None
    for new, old in (
        (trained.coef, shipped.coef),
        (trained.free_answer.coef, shipped.free_answer.coef),
    ):
        assert np.linalg.norm(new - old) <= 0.05 * np.linalg.norm(old)

    files = load_data_dir(shared_data / "routing")
    embedder = Embedder(shipped.embedder)
    parts = [cached_head_inputs(f, embedder) for f in files]  # cached by the training run
    embeddings = np.vstack([p.embeddings for p in parts])
    features = np.vstack([p.features for p in parts])
    choices = np.array([multiple_choice(r.prompt) for f in files for r in f.outcomes.rows])
    moved = np.abs(
        trained.predict(embeddings, features, choices)
        - shipped.predict(embeddings, features, choices)
    )
    assert moved.max() <= 0.01 and moved.mean() <= 0.001, (moved.max(), moved.mean())


def test_importing_the_scorer_loads_neither_django_nor_torch() -> None:
    code = (
        "import sys, inference.scorer; "
        "print(sorted(m for m in ('django', 'torch', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
