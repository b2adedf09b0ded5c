"""Leave-subjects-out cross-validation of the scorer: `python -m inference.scorer.crossval`.

Every figure comes from prompts whose file the head never saw in training:
- MMLU, leave one subject out: for each `mmlu_*` file, fit on every other file (the other
  subjects and GSM8K) and score that subject; the held-out scores of all subjects are pooled and
  evaluated together, as RouteLLM evaluates MMLU as one benchmark.
- GSM8K, k folds over questions: fit on all MMLU files and the other folds, score the fold.
- GSM8K held out whole: fit on MMLU only, score all of GSM8K (a new kind of task).

Options choose the embedding (precision, token budget), so the quality cost of each speed
choice is measured with the same protocol. Embeddings are cached under `.cache/scorer/`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.scorer.dataset import OutcomeFile, cached_head_inputs, data_dir, load_data_dir
from inference.scorer.embedder import Embedder, EmbedderConfig
from inference.scorer.evaluation import Evaluation, evaluate
from inference.scorer.features import multiple_choice
from inference.scorer.fit import DEFAULT_FREE_L2, DEFAULT_L2, HeadInputs, fit_head

# RouteLLM's best published routers for GPT-4 against Mixtral, with augmented training data.
ROUTELLM_TARGETS = {
    "MMLU": {"apgr": 0.603, "cpt50": 0.354, "cpt80": 0.716},
    "GSM8K": {"apgr": 0.622, "cpt50": 0.336, "cpt80": 0.633},
}


@dataclass(frozen=True)
class Pool:
    """All prompts of the data folder with their file index."""

    inputs: HeadInputs
    weak: np.ndarray
    strong: np.ndarray
    file_index: np.ndarray
    choices: np.ndarray  # the prompt lists answer options
    names: list[str]


def build_pool(files: list[OutcomeFile], embedder: Embedder, verbose: bool) -> Pool:
    parts = [cached_head_inputs(f, embedder, verbose) for f in files]
    rows = [(i, r) for i, f in enumerate(files) for r in f.outcomes.rows]
    return Pool(
        inputs=HeadInputs(
            np.vstack([p.embeddings for p in parts]), np.vstack([p.features for p in parts])
        ),
        weak=np.array([r.weak_correct for _, r in rows]),
        strong=np.array([r.strong_correct for _, r in rows]),
        file_index=np.array([i for i, _ in rows]),
        choices=np.array([multiple_choice(r.prompt) for _, r in rows]),
        names=[f.name for f in files],
    )


Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def head_predictor(
    pool: Pool,
    config: EmbedderConfig,
    l2: float,
    per_source: bool = False,
    free_l2: float | None = DEFAULT_FREE_L2,
) -> Predict:
    """Fit on the `train` indices, return scores for the `test` indices. `per_source` fits one
    intercept per training file (a variant in docs/router.md; the shipped head has one);
    `free_l2` None fits no free-answer head (every prompt scored by the main one)."""

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        groups = None
        if per_source:  # numbered 0..g-1, as the fit wants them
            _, groups = np.unique(pool.file_index[train], return_inverse=True)
        head = fit_head(
            pool.inputs.take(train),
            pool.weak[train],
            pool.strong[train],
            config,
            l2,
            groups=groups,
            choices=pool.choices[train],
            free_l2=free_l2,
        )
        held_out = pool.inputs.take(test)
        return head.predict(held_out.embeddings, held_out.features, pool.choices[test])

    return predict


def question_folds(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number for each of n questions: a seeded permutation cut into equal parts."""
    assignment = np.empty(n, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(n)
    for fold, chunk in enumerate(np.array_split(order, folds)):
        assignment[chunk] = fold
    return assignment


def crossvalidate(pool: Pool, predict: Predict, folds: int) -> dict[str, Evaluation]:
    results: dict[str, Evaluation] = {}
    everything = np.arange(len(pool.weak))
    mmlu = [i for i, name in enumerate(pool.names) if name.startswith("mmlu_")]
    others = [i for i, name in enumerate(pool.names) if not name.startswith("mmlu_")]

    if mmlu:
        held = np.isin(pool.file_index, mmlu)
        scores = np.zeros(len(pool.weak))
        for subject in mmlu:
            test = everything[pool.file_index == subject]
            scores[test] = predict(everything[pool.file_index != subject], test)
        results["MMLU"] = evaluate(scores[held], pool.weak[held], pool.strong[held])

    for index in others:
        name = pool.names[index].upper()
        members = everything[pool.file_index == index]
        fold_of = question_folds(len(members), folds)
        scores = np.zeros(len(members))
        for fold in range(folds):
            test = members[fold_of == fold]
            train = np.setdiff1d(everything, test)
            scores[fold_of == fold] = predict(train, test)
        results[f"{name} ({folds}-fold by question)"] = evaluate(
            scores, pool.weak[members], pool.strong[members]
        )
        if mmlu:
            train = everything[np.isin(pool.file_index, mmlu)]
            scores = predict(train, members)
            results[f"{name} (held out whole, MMLU-trained)"] = evaluate(
                scores, pool.weak[members], pool.strong[members]
            )
    return results


def nested_free_l2(
    pool: Pool,
    config: EmbedderConfig,
    l2: float,
    grid: list[float],
    folds: int,
    inner: int = 4,
) -> dict[str, tuple[Evaluation, list[float]]]:
    """Non-MMLU files, k folds by question, with the free-answer head's l2 chosen inside each
    fold: `inner` folds over the fold's training questions pick the value of `grid` with the best
    APGR, and a head with that value scores the held-out fold. The questions a figure is measured
    on play no part in choosing the l2. Returns (evaluation, chosen l2 per fold) per file."""
    results: dict[str, tuple[Evaluation, list[float]]] = {}
    everything = np.arange(len(pool.weak))
    for index, name in enumerate(pool.names):
        if name.startswith("mmlu_"):
            continue
        members = everything[pool.file_index == index]
        fold_of = question_folds(len(members), folds)
        scores = np.zeros(len(members))
        chosen: list[float] = []
        for fold in range(folds):
            test = members[fold_of == fold]
            learn = members[fold_of != fold]
            inner_of = question_folds(len(learn), inner, seed=1)
            best: tuple[float, float] | None = None
            for value in grid:
                predict = head_predictor(pool, config, l2, free_l2=value)
                inner_scores = np.zeros(len(learn))
                for part in range(inner):
                    held = learn[inner_of == part]
                    train = np.setdiff1d(everything, np.concatenate([held, test]))
                    inner_scores[inner_of == part] = predict(train, held)
                apgr = evaluate(inner_scores, pool.weak[learn], pool.strong[learn]).router.apgr
                if best is None or apgr > best[0]:
                    best = (apgr, value)
            assert best is not None
            chosen.append(best[1])
            predict = head_predictor(pool, config, l2, free_l2=best[1])
            scores[fold_of == fold] = predict(np.setdiff1d(everything, test), test)
        evaluation = evaluate(scores, pool.weak[members], pool.strong[members])
        results[f"{name.upper()} ({folds}-fold, nested l2)"] = (evaluation, chosen)
    return results


def _pct(value: float) -> str:
    return "   n/a" if np.isnan(value) else f"{value * 100:5.1f}%"


def report(
    results: dict[str, Evaluation],
    config: EmbedderConfig,
    l2: float,
    free_l2: float | None = DEFAULT_FREE_L2,
) -> str:
    free = "none" if free_l2 is None else f"l2={free_l2:g}"
    lines = [
        f"embedding: precision={config.precision} max_tokens={config.max_tokens} "
        f"head_share={config.head_share}; head: logistic, l2={l2:g}; free-answer head: {free}",
        "",
        f"{'held-out set':40s} {'prompts':>7s} {'APGR':>6s} {'CPT50':>7s} {'CPT80':>7s}"
        f"   {'random APGR':>11s} {'oracle APGR':>11s}",
    ]
    for name, ev in results.items():
        lines.append(
            f"{name:40s} {ev.prompts:7d} {ev.router.apgr:6.3f} {_pct(ev.router.cpt50):>7s} "
            f"{_pct(ev.router.cpt80):>7s}   {ev.random.apgr:11.3f} {ev.oracle.apgr:11.3f}"
        )
        target = ROUTELLM_TARGETS.get(name.split(" ")[0])
        if target:
            lines.append(
                f"{'  RouteLLM target':40s} {'':7s} {target['apgr']:6.3f} "
                f"{_pct(target['cpt50']):>7s} {_pct(target['cpt80']):>7s}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of outcome CSV files")
    parser.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    parser.add_argument("--max-tokens", type=int, default=EmbedderConfig.max_tokens)
    parser.add_argument("--head-share", type=float, default=EmbedderConfig.head_share)
    parser.add_argument("--l2", type=float, default=DEFAULT_L2)
    parser.add_argument(
        "--free-l2",
        type=float,
        default=DEFAULT_FREE_L2,
        help="the free-answer head's l2; 0 fits none (the main head scores every prompt)",
    )
    parser.add_argument(
        "--nested-free-l2",
        default="",
        metavar="L2,L2,...",
        help="also report non-MMLU files with the free-answer head's l2 chosen from these "
        "values inside each fold (slow: a head per value, inner fold and fold)",
    )
    parser.add_argument("--folds", type=int, default=5, help="folds over non-MMLU questions")
    parser.add_argument(
        "--per-source", action="store_true", help="one intercept per training file (a variant)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = EmbedderConfig(args.precision, args.max_tokens, args.head_share)
    files = load_data_dir(args.data or data_dir())
    pool = build_pool(files, Embedder(config), verbose=not args.quiet)
    free_l2 = args.free_l2 or None
    predict = head_predictor(pool, config, args.l2, args.per_source, free_l2)
    results = crossvalidate(pool, predict, args.folds)
    print(report(results, config, args.l2, free_l2))
    if args.nested_free_l2:
        grid = [float(v) for v in args.nested_free_l2.split(",")]
        for name, (ev, chosen) in nested_free_l2(pool, config, args.l2, grid, args.folds).items():
            print(
                f"{name:40s} {ev.prompts:7d} {ev.router.apgr:6.3f} {_pct(ev.router.cpt50):>7s} "
                f"{_pct(ev.router.cpt80):>7s}   chosen l2 per fold: "
                + ", ".join(f"{v:g}" for v in chosen)
            )


if __name__ == "__main__":
    main()
