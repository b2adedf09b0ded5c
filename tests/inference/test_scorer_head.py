"""The logistic head: fitting is deterministic, and the weights file round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.scorer.embedder import EmbedderConfig
from inference.scorer.features import FEATURE_NAMES, multiple_choice, prompt_features
from inference.scorer.fit import (
    MIN_FREE_ROWS,
    HeadInputs,
    fit_head,
    weak_better,
    weak_good_enough,
)
from inference.scorer.head import HeadWeights, fit_logistic, fit_logistic_grouped, sigmoid


def synthetic(seed: int, n: int = 600) -> tuple[HeadInputs, np.ndarray, np.ndarray]:
    """Embeddings whose first dimension decides whether the weak model copes."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n, 384)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    features = rng.normal(size=(n, len(FEATURE_NAMES)))
    weak = rng.random(n) < sigmoid(40 * embeddings[:, 0])
    strong = weak | (rng.random(n) < 0.7)
    return HeadInputs(embeddings, features), weak, strong


def test_label_is_weak_right_or_strong_wrong() -> None:
    weak = np.array([True, True, False, False])
    strong = np.array([True, False, True, False])
    assert weak_good_enough(weak, strong).tolist() == [True, True, False, True]


def test_training_twice_gives_byte_identical_weights() -> None:
    inputs, weak, strong = synthetic(0)
    first = fit_head(inputs, weak, strong, EmbedderConfig()).to_json()
    second = fit_head(inputs, weak, strong, EmbedderConfig()).to_json()
    assert first == second


def test_the_head_learns_the_direction_that_matters() -> None:
    inputs, weak, strong = synthetic(1, n=3000)
    head = fit_head(inputs, weak, strong, EmbedderConfig(), l2=1e-5)
    assert int(np.argmax(np.abs(head.coef))) == 0
    held_out, weak_test, strong_test = synthetic(2, n=3000)
    p = head.predict(held_out.embeddings, held_out.features)
    label = weak_good_enough(weak_test, strong_test)
    assert p[label].mean() > p[~label].mean() + 0.15


def test_weights_file_round_trips() -> None:
    inputs, weak, strong = synthetic(3)
    head = fit_head(inputs, weak, strong, EmbedderConfig(), info={"rows": 600})
    again = HeadWeights.from_json(head.to_json())
    assert again.to_json() == head.to_json()
    assert again.embedder == EmbedderConfig()
    assert again.info == {"rows": 600}
    np.testing.assert_allclose(
        again.predict(inputs.embeddings, inputs.features),
        head.predict(inputs.embeddings, inputs.features),
        atol=1e-5,
    )


def test_a_prior_keeps_a_small_fit_close_to_it() -> None:
    inputs, weak, strong = synthetic(4)
    prior = fit_head(inputs, weak, strong, EmbedderConfig(), l2=1e-4)
    small, small_weak, small_strong = synthetic(5, n=30)
    free = fit_head(small, small_weak, small_strong, EmbedderConfig(), l2=1e-4)
    anchored = fit_head(small, small_weak, small_strong, EmbedderConfig(), l2=1e-2, prior=prior)
    assert np.linalg.norm(anchored.coef - prior.coef) < np.linalg.norm(free.coef - prior.coef)


def test_logistic_fit_matches_a_known_solution() -> None:
    # One feature, y = 1 exactly when x > 0 with label noise: the slope must be positive and
    # the intercept near zero by symmetry.
    x = np.linspace(-3, 3, 601)[:, None]
    y = (x[:, 0] > 0).astype(float)
    y[::10] = 1 - y[::10]
    coef, intercept = fit_logistic(x, y, l2=0.0)
    assert coef[0] > 0.5
    assert intercept == pytest.approx(0.0, abs=0.05)


def test_unknown_weights_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        HeadWeights.from_json('{"format": 99}')


@pytest.mark.parametrize("text", ['{"format": 1}', "[1, 2]", "not json"])
def test_malformed_weights_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        HeadWeights.from_json(text)


def test_features_see_length_digits_and_notation() -> None:
    plain = prompt_features("What is the capital of France?", 8)
    maths = prompt_features("Solve 3x + 4 = 19 for x.\nThen compute 2^5.", 16)
    assert maths[0] > plain[0]  # log tokens
    assert maths[1] > plain[1] == 0  # digit share
    assert maths[2] > plain[2]  # math symbols
    assert maths[3] > plain[3] == 0  # log lines


def test_weak_better_is_only_the_weak_model_right() -> None:
    weak = np.array([True, True, False, False])
    strong = np.array([True, False, True, False])
    assert weak_better(weak, strong).tolist() == [False, True, False, False]


def test_multiple_choice_prompts_are_those_that_list_options() -> None:
    mmlu = "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:"
    assert multiple_choice(mmlu)
    assert multiple_choice("Pick one:\n(a) red\n(b) blue")
    assert not multiple_choice("Janet has 3 apples. A. Smith gives her 2 more. How many now?")
    assert not multiple_choice("What is the capital of France?")


def test_group_intercepts_keep_a_source_marker_out_of_the_coefficients() -> None:
    # Two sources with different base rates; feature 0 only says which source a row is from,
    # feature 1 moves the odds within each source.
    rng = np.random.default_rng(7)
    n = 4000
    group = (np.arange(n) % 2).astype(np.int64)
    x = np.column_stack([group + 0.01 * rng.normal(size=n), rng.normal(size=n)])
    y = (rng.random(n) < sigmoid(np.where(group == 1, 1.5, -1.0) + x[:, 1])).astype(float)
    pooled, _ = fit_logistic(x, y, l2=1e-4)
    coef, intercepts = fit_logistic_grouped(x, y, group, l2=1e-4)
    assert abs(pooled[0]) > 1.0  # the pooled fit uses the source marker
    assert abs(coef[0]) < abs(pooled[0]) / 5  # the grouped one leaves it to the intercepts
    assert coef[1] == pytest.approx(1.0, abs=0.15)
    assert intercepts[1] - intercepts[0] > 1.5
    with pytest.raises(ValueError, match="groups"):
        fit_logistic_grouped(x, y, group + 1, l2=1e-4)  # group 0 has no rows


def test_one_group_is_the_plain_fit() -> None:
    inputs, weak, strong = synthetic(8)
    x = np.hstack([inputs.embeddings, inputs.features])
    y = weak_good_enough(weak, strong).astype(float)
    coef, intercept = fit_logistic(x, y, l2=1e-3)
    grouped, intercepts = fit_logistic_grouped(x, y, np.zeros(len(y), dtype=np.int64), l2=1e-3)
    np.testing.assert_array_equal(coef, grouped)
    assert intercepts.tolist() == [intercept]


def test_groups_and_free_answer_rows_shape_the_fit() -> None:
    inputs, weak, strong = synthetic(9, n=1000)
    plain = fit_head(inputs, weak, strong, EmbedderConfig())
    # Multiple-choice rows only: no second event, one source: the plain fit.
    all_choices = fit_head(
        inputs, weak, strong, EmbedderConfig(), choices=np.ones(1000, dtype=bool)
    )
    assert all_choices.to_json() == plain.to_json()
    free = fit_head(inputs, weak, strong, EmbedderConfig(), choices=np.zeros(1000, dtype=bool))
    assert not np.allclose(free.coef, plain.coef)
    # Free-answer rows teach the same direction: only the weak model right is more likely
    # where the head says the weak model copes.
    assert int(np.argmax(np.abs(free.coef))) == 0
    # The head's intercept is the mean of the sources' own.
    groups = (np.arange(1000) % 2).astype(np.int64)
    grouped = fit_head(inputs, weak, strong, EmbedderConfig(), groups=groups)
    x = np.hstack(
        [inputs.embeddings, (inputs.features - grouped.feature_mean) / grouped.feature_scale]
    )
    y = weak_good_enough(weak, strong).astype(float)
    _, intercepts = fit_logistic_grouped(x, y, groups, l2=grouped.l2)
    assert grouped.intercept == pytest.approx(float(intercepts.mean()), abs=1e-9)


def two_formats(seed: int, n: int = 1200) -> tuple[HeadInputs, np.ndarray, np.ndarray, np.ndarray]:
    """Half the prompts list options; on those dimension 0 decides, on the others dimension 1."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n, 384)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    features = rng.normal(size=(n, len(FEATURE_NAMES)))
    choices = np.arange(n) % 2 == 0
    deciding = np.where(choices, embeddings[:, 0], embeddings[:, 1])
    weak = rng.random(n) < sigmoid(40 * deciding)
    strong = weak | (rng.random(n) < 0.7)
    return HeadInputs(embeddings, features), weak, strong, choices


def test_a_free_answer_head_learns_what_matters_without_options() -> None:
    inputs, weak, strong, choices = two_formats(11, n=4000)
    head = fit_head(inputs, weak, strong, EmbedderConfig(), l2=1e-5, choices=choices, free_l2=1e-5)
    assert head.free_answer is not None
    assert int(np.argmax(np.abs(head.free_answer.coef))) == 1
    # Scored by format: each head on its own kind of prompt beats the other head on it.
    test, weak_t, strong_t, choices_t = two_formats(12, n=4000)
    label = weak_good_enough(weak_t, strong_t)
    by_format = head.predict(test.embeddings, test.features, choices_t)
    one_head = head.predict(test.embeddings, test.features)
    free = ~choices_t

    def separation(p: np.ndarray) -> float:
        return float(p[free & label].mean() - p[free & ~label].mean())

    assert separation(by_format) > separation(one_head) + 0.05
    np.testing.assert_array_equal(by_format[choices_t], one_head[choices_t])


def test_free_answer_head_round_trips_and_older_files_keep_their_bytes() -> None:
    inputs, weak, strong, choices = two_formats(13)
    head = fit_head(inputs, weak, strong, EmbedderConfig(), choices=choices, free_l2=1e-3)
    again = HeadWeights.from_json(head.to_json())
    assert again.to_json() == head.to_json()
    assert again.free_answer is not None and head.free_answer is not None
    np.testing.assert_allclose(again.free_answer.coef, head.free_answer.coef, rtol=1e-5)
    # A head written before free-answer heads existed loads and writes the same bytes.
    plain = fit_head(inputs, weak, strong, EmbedderConfig(), choices=choices)
    assert plain.free_answer is None
    assert "free_answer" not in plain.to_json()
    assert HeadWeights.from_json(plain.to_json()).to_json() == plain.to_json()


def test_a_free_answer_head_of_the_wrong_size_is_refused() -> None:
    inputs, weak, strong, choices = two_formats(14)
    data = json.loads(
        fit_head(inputs, weak, strong, EmbedderConfig(), choices=choices, free_l2=1e-3).to_json()
    )
    data["free_answer"]["coef"] = data["free_answer"]["coef"][:10]
    with pytest.raises(ValueError, match="free-answer"):
        HeadWeights.from_json(json.dumps(data))


def test_too_few_free_answer_rows_fit_no_free_head() -> None:
    inputs, weak, strong, _ = two_formats(15, n=600)
    choices = np.ones(600, dtype=bool)
    choices[: MIN_FREE_ROWS - 1] = False
    head = fit_head(inputs, weak, strong, EmbedderConfig(), choices=choices, free_l2=1e-3)
    assert head.free_answer is None
    choices[MIN_FREE_ROWS - 1] = False
    head = fit_head(inputs, weak, strong, EmbedderConfig(), choices=choices, free_l2=1e-3)
    assert head.free_answer is not None
