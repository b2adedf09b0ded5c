from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.renderers import BaseRenderer

from billing.exports import usage_csv


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
        if isinstance(data, dict) and "_rows" in data:
            return usage_csv(data["_rows"], data["group_by"]).encode()
        message = data.get("error", {}).get("message", "") if isinstance(data, dict) else ""
        return f"error\n{message}\n".encode()
