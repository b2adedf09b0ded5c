"""The usage numbers as flat rows: the console's table, its CSV export and the REST API agree."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.http import StreamingHttpResponse

from billing.money import micros_to_decimal
from billing.selectors import UsageRow
from console.exports import spreadsheet_safe

NUMBER_COLUMNS = [
    "requests",
    "failed_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "resource_seconds",
    "cost_micros",
    "cost_usd",
    "baseline_cost_micros",
    "latency_p50_ms",
    "latency_p95_ms",
]


def dimension_columns(dims: Sequence[str]) -> list[str]:
    columns = []
    for dim in dims:
        columns.extend(["key_id", "key_name"] if dim == "key" else [dim])
    return columns


def usage_row_dict(row: UsageRow, dims: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dim in dims:
        if dim == "day":
            out["day"] = row.day.isoformat() if row.day else None
        elif dim == "key":
            out["key_id"] = str(row.key_id) if row.key_id else None
            out["key_name"] = row.key_name or ""
        else:
            out[dim] = getattr(row, dim)
    out.update(
        requests=row.requests,
        failed_requests=row.errors,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        total_tokens=row.total_tokens,
        resource_seconds=row.resource_seconds,
        cost_micros=row.cost_micros,
        # Exact: micro-dollars as a decimal string with six places, never a float.
        cost_usd=f"{micros_to_decimal(row.cost_micros):.6f}",
        baseline_cost_micros=row.baseline_cost_micros,
        latency_p50_ms=row.latency_p50_ms,
        latency_p95_ms=row.latency_p95_ms,
    )
    return out


class _Echo:
    """A file whose ``write`` returns what it was given: the csv module formats, we stream."""

    def write(self, value: str) -> str:
        return value


def usage_csv_lines(rows: Iterable[UsageRow], dims: Sequence[str]) -> Iterator[str]:
    """The rows as CSV, a line at a time, the header first."""
    writer = csv.DictWriter(
        _Echo(), fieldnames=dimension_columns(dims) + NUMBER_COLUMNS, lineterminator="\n"
    )
    yield writer.writeheader()
    for row in rows:
        cells = usage_row_dict(row, dims)
        yield writer.writerow({name: spreadsheet_safe(value) for name, value in cells.items()})


def usage_csv_response(rows: Iterable[UsageRow], dims: Sequence[str]) -> StreamingHttpResponse:
    """The rows as a CSV download, streamed: the rows may be read as they are sent."""
    return StreamingHttpResponse(usage_csv_lines(rows, dims), content_type="text/csv")
