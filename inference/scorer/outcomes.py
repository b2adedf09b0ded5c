"""Outcome files: which of two models answered each prompt well.

The format is the one of the routing data set: a header row `prompt,<weak model>,<strong model>`
followed by one row per prompt with `True`/`False` in the two model columns. Further columns (such
as the models' answers) are allowed and ignored. A tenant uploads such a file to fit or calibrate a
route's scorer, so every problem is reported with the row it is on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# A prompt may be a long document: any field that fits in an upload is read (the csv module's own
# limit is 128 KiB). The limit is the process's, so it is only ever raised.
FIELD_LIMIT = 16 * 1024 * 1024
if csv.field_size_limit() < FIELD_LIMIT:
    csv.field_size_limit(FIELD_LIMIT)

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class OutcomeFileError(ValueError):
    """A malformed outcome file.

    `row` counts records as a spreadsheet shows them (the header is row 1, the first prompt row
    2); `line` is the text line where that record ends, which differs once a quoted prompt spans
    several lines. Both are None when the problem is the file as a whole.
    """

    def __init__(self, message: str, row: int | None = None, line: int | None = None) -> None:
        self.row = row
        self.line = line
        self.reason = message
        where = ""
        if row is not None:
            where = f"row {row}" + (f" (line {line})" if line is not None and line != row else "")
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class Outcome:
    prompt: str
    weak_correct: bool
    strong_correct: bool

    @property
    def weak_good_enough(self) -> bool:
        """The weak model's answer is as good as the strong one's: it is right, or both are
        wrong (then the strong model would not have helped)."""
        return self.weak_correct or not self.strong_correct


@dataclass(frozen=True)
class OutcomeSet:
    weak_model: str
    strong_model: str
    rows: list[Outcome]

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.rows]


def _parse_bool(value: str, column: str, row: int, line: int) -> bool:
    normalised = value.strip().lower()
    if normalised in _TRUE:
        return True
    if normalised in _FALSE:
        return False
    raise OutcomeFileError(
        f"column {column!r} must be True or False, not {value[:40]!r}", row, line
    )


def parse_outcomes(lines: Iterable[str]) -> OutcomeSet:
    """Parse outcome CSV text (an iterable of lines, e.g. an open text file).

    Raises OutcomeFileError naming the row for: a missing or wrong header, a row with too few
    fields, an empty prompt, a value other than True/False, or a file with no data rows.
    """
    reader = csv.reader(lines)
    row = 1
    try:
        header = next(reader, None)
        if header is None:
            raise OutcomeFileError("the file is empty")
        header = [h.strip() for h in header]
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if len(header) < 3 or header[0] != "prompt":
            raise OutcomeFileError(
                "the header must be: prompt, then the weak model's column, then the strong "
                "model's column",
                1,
            )
        weak, strong = header[1], header[2]
        if not weak or not strong or weak == strong:
            raise OutcomeFileError("the two model columns need distinct, non-empty names", 1)
        rows: list[Outcome] = []
        for fields in reader:
            row += 1
            line = reader.line_num
            if not fields:
                continue  # a blank line
            if len(fields) < 3:
                # A quote left open runs to the end of the file as one field.
                hint = " (is a quote left open?)" if "\n" in fields[-1] else ""
                raise OutcomeFileError(
                    f"expected at least 3 fields (prompt, weak, strong), found {len(fields)}"
                    + hint,
                    row,
                    line,
                )
            prompt = fields[0]
            if not prompt.strip():
                raise OutcomeFileError("the prompt is empty", row, line)
            if "\x00" in prompt:
                raise OutcomeFileError("the prompt contains a NUL character (0x00)", row, line)
            rows.append(
                Outcome(
                    prompt=prompt,
                    weak_correct=_parse_bool(fields[1], weak, row, line),
                    strong_correct=_parse_bool(fields[2], strong, row, line),
                )
            )
    except csv.Error as exc:
        raise OutcomeFileError(f"not valid CSV: {exc}", row + 1, reader.line_num) from exc
    except UnicodeDecodeError as exc:
        raise OutcomeFileError("the file is not UTF-8 text") from exc
    if not rows:
        raise OutcomeFileError("the file has a header but no rows")
    return OutcomeSet(weak_model=weak, strong_model=strong, rows=rows)


def read_outcomes(path: Path | str) -> OutcomeSet:
    """Read an outcome file from disk (UTF-8, a BOM is accepted)."""
    return outcomes_from_bytes(Path(path).read_bytes())


def outcomes_from_bytes(data: bytes) -> OutcomeSet:
    """Parse an uploaded outcome file's bytes."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc) from exc
    return parse_outcomes(io.StringIO(text, newline=""))


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> OutcomeFileError:
    """The error for bytes that are not UTF-8, naming the row and line they are on (a file
    saved as Latin-1 or Windows-1252 by a spreadsheet differs only where accents are)."""
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    line = data.count(b"\n", 0, line_start) + 1
    message = f"byte 0x{data[exc.start]:02x} is not UTF-8 text (save the file as UTF-8)"
    try:
        before = data[:line_start].decode("utf-8-sig")
        records = sum(1 for _ in csv.reader(io.StringIO(before, newline="")))
    except (UnicodeDecodeError, csv.Error):
        return OutcomeFileError(message, None, None)
    return OutcomeFileError(message, records + 1, line)
