"""Cheap prompt features that sit beside the embedding.

The embedding sees at most the first and last tokens of a prompt; these features see all of it,
cheaply (regular expressions run in C: about 5 ms for a megabyte), so the head learns how length
and notation move the odds.
"""

from __future__ import annotations

import math
import re

import numpy as np

FEATURE_NAMES = (
    "log_prompt_tokens",
    "digit_share",
    "math_symbol_share",
    "log_lines",
)

_DIGITS = re.compile(r"[0-9]")
# ASCII operators plus sum, integral, root, comparison, plus-minus, times and divide signs.
_MATH_SYMBOLS = re.compile(
    "["
    + re.escape("+-*/=^<>%$()[]{}|\\\u2211\u222b\u221a\u2264\u2265\u2260\u00b1\u00d7\u00f7")
    + "]"
)


# Two or more lines that start like "A. ", "b) " or "(C) ": the prompt offers its answers.
_OPTION_LINE = re.compile(r"^\s*\(?[A-Ja-j][.)]\s", re.MULTILINE)


def multiple_choice(prompt: str) -> bool:
    """Whether a prompt lists answer options (an MMLU question does, a GSM8K one does not).
    Only the first 20,000 characters are looked at."""
    return len(_OPTION_LINE.findall(prompt, 0, 20_000)) >= 2


def prompt_features(prompt: str, prompt_tokens: int) -> np.ndarray:
    """The features of FEATURE_NAMES, in that order, as float64."""
    chars = max(len(prompt), 1)
    digits = len(_DIGITS.findall(prompt))
    symbols = len(_MATH_SYMBOLS.findall(prompt))
    lines = prompt.count("\n") + 1
    return np.array(
        [
            math.log1p(prompt_tokens),
            digits / chars,
            symbols / chars,
            math.log(lines),
        ],
        dtype=np.float64,
    )
