"""Server-sent events passing through: forward each event as it arrives, note the engine's usage.

The gateway asks vLLM for ``stream_options.include_usage`` (a final chunk with the request's
usage and no choices) and ``continuous_usage_stats`` (running usage on every chunk), so that the
last usage seen is the engine's own count even when the client disconnects mid-stream. What the
client did not ask for is removed: the final usage chunk, and the running usage on each chunk.
Events without usage (the common case) pass through untouched, without JSON parsing.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A usage object (which may hold one level of nested objects, e.g. prompt_tokens_details).
_INLINE_USAGE = re.compile(rb',\s*"usage"\s*:\s*\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}')
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')


def _has_usage(data: bytes) -> bool:
    return _USAGE_MARKERS[0] in data or _USAGE_MARKERS[1] in data


class StreamFilter:
    def __init__(self, *, keep_final_usage: bool, keep_inline_usage: bool) -> None:
        self.keep_final_usage = keep_final_usage
        self.keep_inline_usage = keep_inline_usage
        self._pending = b""
        self._usage_event: bytes | None = None
        self.data_events = 0

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now: every complete event so far, filtered."""
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer
            return b""
        complete, self._pending = buffer[: end + 2], buffer[end + 2 :]
        self.data_events += complete.count(b"data:")
        if not _has_usage(complete):
            return complete
        kept = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if _has_usage(event):
                self._usage_event = event
                if _EMPTY_CHOICES[0] in event or _EMPTY_CHOICES[1] in event:
                    if not self.keep_final_usage:
                        continue
                elif not self.keep_inline_usage:
                    event = _INLINE_USAGE.sub(b"", event, count=1)
            kept.append(event)
        return b"\n\n".join(kept) + b"\n\n" if kept else b""

    def finish(self) -> bytes:
        """Whatever trailing bytes never ended with a blank line, passed through as they are."""
        rest, self._pending = self._pending, b""
        return rest

    def usage(self) -> dict[str, Any] | None:
        """The last usage the engine reported, or None."""
        if self._usage_event is None:
            return None
        for line in self._usage_event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    usage = json.loads(line[5:]).get("usage")
                except (ValueError, AttributeError):
                    return None
                return usage if isinstance(usage, dict) else None
        return None
