"""`manage.py router_eval --data FILE.csv [--data FILE2.csv ...]`: evaluate the shipped scorer.

The files are scored, never trained on. For each file, and for all of them pooled when there are
several, it prints the quality against strong-call share curve at the deciles of the scores,
APGR, CPT(50%) and CPT(80%), next to a random router (10 seeds) and the oracle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Evaluate the router's scorer on outcome CSV files (prompt, weak, strong columns)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data",
            action="extend",
            nargs="+",
            required=True,
            type=Path,
            help="outcome CSV files (--data A.csv B.csv, or --data repeated)",
        )
        parser.add_argument(
            "--weights", type=Path, default=None, help="a head weights file (default: shipped)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Imported here so that Django start-up never pays for onnxruntime.
        from inference.scorer.evaluation import evaluate, format_evaluation
        from inference.scorer.outcomes import OutcomeFileError, read_outcomes
        from inference.scorer.scorer import Scorer

        paths: list[Path] = options["data"]
        sets = []
        for path in paths:
            try:
                sets.append((path, read_outcomes(path)))
            except OutcomeFileError as exc:
                raise CommandError(f"{path}: {exc}") from exc
            except OSError as exc:
                raise CommandError(f"{path}: {exc.strerror or exc}") from exc

        try:
            scorer = Scorer.load(options["weights"], cache_size=0)
        except OSError as exc:
            raise CommandError(f"{options['weights']}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # not a head weights file (JSON or its fields)
            raise CommandError(f"{options['weights']}: not a head weights file: {exc}") from exc
        pooled_scores: list[float] = []
        pooled_weak: list[bool] = []
        pooled_strong: list[bool] = []
        for path, outcomes in sets:
            scores = scorer.score_batch(outcomes.prompts)
            weak = [r.weak_correct for r in outcomes.rows]
            strong = [r.strong_correct for r in outcomes.rows]
            pooled_scores += scores
            pooled_weak += weak
            pooled_strong += strong
            self.stdout.write(format_evaluation(path.name, evaluate(scores, weak, strong)))
            self.stdout.write("")
        if len(sets) > 1:
            self.stdout.write(
                format_evaluation(
                    f"all {len(sets)} files pooled",
                    evaluate(np.array(pooled_scores), pooled_weak, pooled_strong),
                )
            )
