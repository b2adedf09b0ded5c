"""The router's scorer: P(the cheaper model answers a prompt as well as the stronger one).

Pure Python (numpy, onnxruntime, tokenizers); nothing here imports Django. See docs/router.md.
"""

from inference.scorer.fit import fit_from_outcomes
from inference.scorer.outcomes import (
    Outcome,
    OutcomeFileError,
    OutcomeSet,
    outcomes_from_bytes,
    read_outcomes,
)
from inference.scorer.policy import calibrate_threshold, choose_target, decide, strong_share
from inference.scorer.scorer import Scorer, default_scorer

__all__ = [
    "Outcome",
    "OutcomeFileError",
    "OutcomeSet",
    "Scorer",
    "calibrate_threshold",
    "choose_target",
    "decide",
    "default_scorer",
    "fit_from_outcomes",
    "outcomes_from_bytes",
    "read_outcomes",
    "strong_share",
]
