"""CSV downloads streamed row by row, so an export never holds its rows in memory."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Sequence

from django.http import StreamingHttpResponse


class _Echo:
    """A file whose ``write`` returns what it was given: the csv module formats, we stream."""

    def write(self, value: str) -> str:
        return value


# A spreadsheet reads a cell that starts with one of these as a formula: a key named
# "=HYPERLINK(...)" by one member would run in whoever opens the export. Such text gets a
# leading apostrophe, which spreadsheets show as text; numbers (-5, -0.25) stay numbers.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def spreadsheet_safe(value: object) -> object:
    """``value`` as a CSV cell that a spreadsheet will not evaluate."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _lines(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([spreadsheet_safe(cell) for cell in row])


def csv_download(
    filename: str, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_lines(header, rows), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
