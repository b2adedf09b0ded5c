from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.renderers import BaseRenderer

from billing.exports import usage_csv_lines


class UsageCSVRenderer(BaseRenderer):
    """``?format=csv``: the usage rows as CSV (the same columns as the console's export)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        # Only the rows come here: the view answers errors as JSON (and streams its rows).
        return "".join(usage_csv_lines(data["_rows"], data["group_by"])).encode()
