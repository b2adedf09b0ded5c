"""The fast local upstream for the added-latency benchmark: answers every request with one fixed
chat completion, as quickly as uvicorn can (no JSON parsing, no work). A body that asks for
``"stream": true`` gets a stream of 64 one-token events a millisecond apart instead, each with
running usage as vLLM sends it when asked, then a final usage event and ``[DONE]``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "fast",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A fixed answer for benchmarks."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


STREAM_HEADERS = [(b"content-type", b"text/event-stream")]
STREAM_EVENTS = 64


def _event(index: int) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fast",
        "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}],
        "usage": {"prompt_tokens": 12, "completion_tokens": index + 1, "total_tokens": 13 + index},
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


EVENTS = [_event(i) for i in range(STREAM_EVENTS)]
FINAL = (
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "fast",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76},
        }
    ).encode()
    + b"\n\ndata: [DONE]\n\n"
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if b'"stream": true' not in body and b'"stream":true' not in body:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
        return
    await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
    for event in EVENTS:
        await asyncio.sleep(0.001)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": FINAL})
