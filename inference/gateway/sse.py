"""Server-sent events passing through: forward each event as it arrives, note the engine's usage.

The gateway asks vLLM for ``stream_options.include_usage`` (a final chunk with the request's
usage and no choices) and ``continuous_usage_stats`` (running usage on every chunk), so that the
last usage seen is the engine's own count even when the client disconnects mid-stream. What the
client did not ask for is removed: the final usage chunk, and the running usage on each chunk.
Events without usage (the common case) pass through untouched, without JSON parsing.

Responses API streams (``/v1/responses``) are passed through unchanged: the API puts the usage on
the final event's response (``response.completed``), which the client expects, and engines offer
no running usage for it. ``ResponsesStreamFilter`` notes that final usage and counts the delta
events, for a stream cut short before its end.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A usage object (which may hold one level of nested objects, e.g. prompt_tokens_details).
_INLINE_USAGE = re.compile(rb',\s*"usage"\s*:\s*\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}')
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')
# The events that end a Responses API stream; each carries the response with its usage.
_RESPONSE_DONE = (b"response.completed", b"response.incomplete", b"response.failed")
_RESPONSE_DONE_TYPES = {name.decode() for name in _RESPONSE_DONE}
# A delta event's type ("response.output_text.delta", "response.function_call_arguments.delta",
# ...): a string's own text cannot hold it, as its quotes would be escaped.
_DELTA_TYPE = re.compile(rb'"type":\s?"response\.[a-z_.]+\.delta"')
# The events that say a Responses API stream failed: an error, or the response failed.
_RESPONSE_ERROR = re.compile(rb'"type":\s?"(?:error|response\.failed)"')


# An error the engine sends in place of the rest of a stream (vLLM: ``{"error": {"message", "type",
# "param", "code"}}`` as a data event). A string's own text cannot hold it: its quotes are escaped.
_ERROR_EVENT = (b'data: {"error"', b'data:{"error"')


def _error_status(events: bytes) -> int:
    """The status an error event reports (its ``code`` where that is an HTTP error status), or
    500."""
    for line in events.split(b"\n"):
        if line.startswith(_ERROR_EVENT):
            try:
                code = json.loads(line[5:])["error"].get("code")
            except (ValueError, KeyError, TypeError, AttributeError):
                return 500
            if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
                return code
            return 500
    return 500


def _has_usage(data: bytes) -> bool:
    return _USAGE_MARKERS[0] in data or _USAGE_MARKERS[1] in data


class _Events:
    """Cuts a byte stream into complete events (ending with a blank line), keeping the rest.

    Lines may end with LF, CRLF or CR (the SSE format allows all three; servers built on
    sse-starlette, say, send CRLF): they are forwarded ending with LF. A raw CR never occurs
    inside an event's JSON, so the common LF-only stream pays one scan for it and nothing else.
    """

    def __init__(self) -> None:
        self._pending = b""

    def _complete(self, data: bytes) -> bytes:
        """Every event completed by ``data``, b"" while none is."""
        buffer = self._pending + data if self._pending else data
        cut_cr = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                # Perhaps the first half of a CRLF whose LF comes with the next bytes.
                buffer, cut_cr = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer + cut_cr
            return b""
        complete, self._pending = buffer[: end + 2], buffer[end + 2 :] + cut_cr
        return complete

    def finish(self) -> bytes:
        """Whatever trailing bytes never ended with a blank line, their line ends as LF."""
        rest, self._pending = self._pending, b""
        return rest.replace(b"\r", b"\n") if rest.endswith(b"\r") else rest


class StreamFilter(_Events):
    def __init__(self, *, keep_final_usage: bool, keep_inline_usage: bool) -> None:
        super().__init__()
        self.keep_final_usage = keep_final_usage
        self.keep_inline_usage = keep_inline_usage
        self._usage_event: bytes | None = None
        self.data_events = 0
        # The status of the first error event the engine sent mid-stream, or None: the client
        # got a 200 and then the error (the openai client raises on it), so that is what is
        # recorded.
        self.error_status: int | None = None

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now: every complete event so far, filtered."""
        complete = self._complete(data)
        if not complete:
            return b""
        self.data_events += complete.count(b"data:")
        if self.error_status is None and (
            _ERROR_EVENT[0] in complete or _ERROR_EVENT[1] in complete
        ):
            self.error_status = _error_status(complete)
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

    def completion_estimate(self) -> int:
        """Completion tokens when no usage arrived: one per content event (less the role and
        the closing events)."""
        return max(0, self.data_events - 2)

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


class ResponsesStreamFilter(_Events):
    """A Responses API stream: every complete event is forwarded as it is."""

    def __init__(self) -> None:
        super().__init__()
        self._final_event: bytes | None = None
        self.delta_events = 0
        self.error_status: int | None = None  # 500 once an error or failed event came

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now: every complete event so far."""
        complete = self._complete(data)
        if not complete:
            return b""
        self.delta_events += len(_DELTA_TYPE.findall(complete))
        if self.error_status is None and _RESPONSE_ERROR.search(complete):
            self.error_status = 500
        if _has_usage(complete):
            for event in complete.split(b"\n\n"):
                if _has_usage(event) and any(name in event for name in _RESPONSE_DONE):
                    self._final_event = event
        return complete

    def completion_estimate(self) -> int:
        """Output tokens when the final event never came: one per delta event."""
        return self.delta_events

    def usage(self) -> dict[str, Any] | None:
        """The final event's ``response.usage`` (Responses API names), or None."""
        if self._final_event is None:
            return None
        for line in self._final_event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    event = json.loads(line[5:])
                    if event.get("type") not in _RESPONSE_DONE_TYPES:
                        return None
                    usage = event["response"]["usage"]
                except (ValueError, AttributeError, KeyError, TypeError):
                    return None
                return usage if isinstance(usage, dict) else None
        return None
