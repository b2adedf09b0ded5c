"""Train the shipped scorer head: `python -m inference.scorer.train [--data DIR] [--out FILE]`.

Reads every outcome file in the routing data folder, embeds the prompts exactly as the scorer
does at serving time, fits the head and writes `inference/scorer/weights/router_head.json`.
Deterministic: the same data gives a byte-identical file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from inference.scorer.dataset import cached_head_inputs, data_dir, load_data_dir
from inference.scorer.embedder import Embedder, EmbedderConfig
from inference.scorer.features import multiple_choice
from inference.scorer.fit import DEFAULT_FREE_L2, DEFAULT_L2, HeadInputs, fit_head
from inference.scorer.head import HeadWeights
from inference.scorer.scorer import SHIPPED_WEIGHTS


def train(
    directory: Path,
    config: EmbedderConfig,
    l2: float,
    verbose: bool,
    free_l2: float = DEFAULT_FREE_L2,
) -> HeadWeights:
    files = load_data_dir(directory)
    embedder = Embedder(config)
    parts = [cached_head_inputs(f, embedder, verbose) for f in files]
    inputs = HeadInputs(
        np.vstack([p.embeddings for p in parts]), np.vstack([p.features for p in parts])
    )
    rows = [r for f in files for r in f.outcomes.rows]
    weak = np.array([r.weak_correct for r in rows])
    strong = np.array([r.strong_correct for r in rows])
    choices = np.array([multiple_choice(r.prompt) for r in rows])
    info: dict[str, object] = {
        "label": "weak_correct or not strong_correct",
        "free_answer_event": "weak_correct and not strong_correct",
        "free_answer_head": "fitted on the prompts without answer options alone",
        "rows": len(rows),
        "files": {f.name: f.sha256 for f in files},
    }
    return fit_head(
        inputs, weak, strong, config, l2=l2, info=info, choices=choices, free_l2=free_l2
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of outcome CSV files")
    parser.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--l2", type=float, default=DEFAULT_L2)
    parser.add_argument("--free-l2", type=float, default=DEFAULT_FREE_L2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    head = train(args.data or data_dir(), EmbedderConfig(), args.l2, not args.quiet, args.free_l2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head.save(args.out)
    if not args.quiet:
        print(f"wrote {args.out} ({head.info['rows']} prompts)")


if __name__ == "__main__":
    main()
