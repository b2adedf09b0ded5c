"""The reference score distribution: what a new auto route is calibrated on before it has traffic.

``python -m inference.routing.reference DATA_DIR`` scores a fixed sample of prompts from the
routing outcome files (every 25th row of each file, in file-name order) with the shipped scorer
and writes only the sorted scores, rounded to four places, to ``reference_scores.json`` next to
this module. No prompt is stored.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

REFERENCE_FILE = Path(__file__).resolve().parent / "reference_scores.json"
SAMPLE_EVERY = 25


@cache
def reference_scores() -> tuple[float, ...]:
    return tuple(json.loads(REFERENCE_FILE.read_text())["scores"])


def build(data_dir: Path) -> list[float]:
    from inference.scorer.outcomes import read_outcomes
    from inference.scorer.scorer import Scorer

    scorer = Scorer.load(cache_size=0)
    prompts: list[str] = []
    for path in sorted(data_dir.glob("*.csv")):
        prompts += read_outcomes(path).prompts[::SAMPLE_EVERY]
    return sorted(round(scorer.score(p), 4) for p in prompts)


def main(argv: list[str]) -> None:
    scores = build(Path(argv[0]))
    REFERENCE_FILE.write_text(
        json.dumps({"sample_every": SAMPLE_EVERY, "count": len(scores), "scores": scores}) + "\n"
    )
    print(f"wrote {len(scores)} reference scores to {REFERENCE_FILE}")


if __name__ == "__main__":
    main(sys.argv[1:])
