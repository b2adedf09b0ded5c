"""A minimal OpenAI-compatible engine served on 127.0.0.1, for the gateway's fast tests and the
added-latency benchmark.

It answers like vLLM does (the same response shapes, ``stream_options`` with ``include_usage``
and ``continuous_usage_stats``, a 400 naming the maximum context length, and the Responses API's
objects and events with the usage on ``response.completed``) and can be told to
fail: ``script`` holds the statuses of the next answers, ``stream_delay_s`` slows streaming so
that a test can disconnect mid-stream. One token per whitespace-separated word.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Any

FIXED_ANSWER = "hello from the fake engine"


def _item_text(item: dict[str, Any]) -> str:
    content = item.get("content") or ""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content)
    return str(content)


class FakeEngine:
    def __init__(self, name: str = "fake", *, max_model_len: int = 512) -> None:
        self.name = name
        self.max_model_len = max_model_len
        self.script: deque[int | tuple[int, str]] = deque()
        self.stream_tokens = 8
        self.stream_delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.disconnected = threading.Event()
        self.fixed_body: bytes | None = None
        self.answer_delay_s = 0.0
        # How a streamed line ends: "\n" as vLLM writes it, "\r\n" as sse-starlette does.
        self.line_end = b"\n"
        # An error to send after the tokens, in place of the rest of a stream, as vLLM does
        # when generation fails mid-answer ({"error": {...}}, then [DONE]).
        self.stream_error: dict[str, Any] | None = None

    # One word, one token: simple, and enough to check that counts travel unchanged.
    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        if "messages" in body:
            text = " ".join(str(m.get("content") or "") for m in body["messages"])
        else:
            value = body.get("prompt", body.get("input", ""))
            if isinstance(value, list) and value and isinstance(value[0], dict):
                # Responses API input items: the messages' text, plain or in content parts.
                text = " ".join(_item_text(item) for item in value)
            else:
                text = value if isinstance(value, str) else " ".join(map(str, value))
            text = f"{body.get('instructions') or ''} {text}"
        return max(1, len(text.split()))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # served with lifespan="off"
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.fixed_body is not None:
            await self._json(send, 200, self.fixed_body)
            return
        path = scope["path"]
        if path == "/health":
            await self._json(send, 200, b"{}")
            return
        body = json.loads(raw or b"{}")
        self.requests.append(body)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        if self.script:
            item = self.script.popleft()
            status, text = item if isinstance(item, tuple) else (item, f"scripted failure {item}")
            message = {"error": {"message": text, "code": status}}
            await self._json(send, status, json.dumps(message).encode())
            return
        prompt = self._prompt_tokens(body)
        if path == "/v1/embeddings":
            self.prompt_tokens_total += prompt
            await self._json(send, 200, self._embedding(body, prompt))
            return
        # As vLLM reads them: a chat request's max_completion_tokens wins over max_tokens, and
        # the completions API has no max_completion_tokens.
        max_tokens = body.get("max_tokens") or body.get("max_output_tokens")
        if path == "/v1/chat/completions" and body.get("max_completion_tokens") is not None:
            max_tokens = body["max_completion_tokens"]
        if prompt + (max_tokens or 0) > self.max_model_len:
            message = (
                f"This model's maximum context length is {self.max_model_len} tokens. However,"
                f" you requested {prompt + (max_tokens or 0)} tokens."
            )
            error = {"error": {"message": message, "type": "BadRequestError", "code": 400}}
            await self._json(send, 400, json.dumps(error).encode())
            return
        if body.get("stream"):
            if path == "/v1/responses":
                await self._stream_response(body, prompt, max_tokens, receive, send)
            else:
                await self._stream(body, prompt, max_tokens, receive, send)
            return
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        words = FIXED_ANSWER.split()[: max_tokens or None]
        self.prompt_tokens_total += prompt
        self.generation_tokens_total += len(words)
        await self._json(send, 200, self._completion(body, path, " ".join(words), prompt))

    def _completion(self, body: dict[str, Any], path: str, text: str, prompt: int) -> bytes:
        if path == "/v1/responses":
            return json.dumps(self._response(body, text, prompt, len(text.split()))).encode()
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt + len(text.split()),
        }
        if path == "/v1/chat/completions":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
            kind = "text_completion"
        answer = {
            "id": "cmpl-fake",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model", self.name),
            "choices": [choice],
            "usage": usage,
        }
        return json.dumps(answer).encode()

    def _embedding(self, body: dict[str, Any], prompt: int) -> bytes:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
            for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        answer = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        return json.dumps(answer).encode()

    async def _stream(
        self, body: dict[str, Any], prompt: int, max_tokens: int | None, receive: Any, send: Any
    ) -> None:
        options = body.get("stream_options") or {}
        include = options.get("include_usage") is True
        continuous = options.get("continuous_usage_stats") is True
        limit = max_tokens or self.stream_tokens
        end = self.line_end * 2
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        self.prompt_tokens_total += prompt
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": body["model"]}
        generated = 0
        try:
            for i in range(min(limit, self.stream_tokens)):
                if gone.is_set():
                    self.disconnected.set()
                    return
                generated += 1
                self.generation_tokens_total += 1
                chunk: dict[str, Any] = {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}],
                }
                if continuous:
                    chunk["usage"] = {
                        "prompt_tokens": prompt,
                        "completion_tokens": generated,
                        "total_tokens": prompt + generated,
                    }
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + json.dumps(chunk).encode() + end,
                        "more_body": True,
                    }
                )
                if self.stream_delay_s:
                    try:
                        await asyncio.wait_for(gone.wait(), self.stream_delay_s)
                    except TimeoutError:
                        pass
            if self.stream_error is not None:
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + json.dumps(self.stream_error).encode() + end,
                        "more_body": True,
                    }
                )
            elif include:
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": generated,
                    "total_tokens": prompt + generated,
                }
                final = {**base, "choices": [], "usage": usage}
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + json.dumps(final).encode() + end,
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]" + end})
        finally:
            watcher.cancel()

    def _response(
        self, body: dict[str, Any], text: str, prompt: int, output: int | None
    ) -> dict[str, Any]:
        """A Responses API response object; ``output`` None: still in progress (no usage)."""
        usage = None
        if output is not None:
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + output,
            }
        content = [{"type": "output_text", "text": text, "annotations": []}]
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": int(time.time()),
            "model": body.get("model", self.name),
            "status": "in_progress" if output is None else "completed",
            "output": [
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": content,
                }
            ],
            "usage": usage,
        }

    async def _stream_response(
        self, body: dict[str, Any], prompt: int, max_tokens: int | None, receive: Any, send: Any
    ) -> None:
        """Responses API events, as vLLM writes them: ``event:`` and ``data:`` lines."""
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def event(data: dict[str, Any]) -> None:
            line = f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"
            await send({"type": "http.response.body", "body": line.encode(), "more_body": True})

        watcher = asyncio.ensure_future(watch())
        self.prompt_tokens_total += prompt
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        try:
            started = self._response(body, "", prompt, None)
            await event({"type": "response.created", "response": started})
            await event({"type": "response.in_progress", "response": started})
            words = []
            for i in range(min(max_tokens or self.stream_tokens, self.stream_tokens)):
                if gone.is_set():
                    self.disconnected.set()
                    return
                self.generation_tokens_total += 1
                words.append(f"tok{i}")
                await event(
                    {
                        "type": "response.output_text.delta",
                        "item_id": "msg_fake",
                        "delta": f"tok{i} ",
                    }
                )
                if self.stream_delay_s:
                    try:
                        await asyncio.wait_for(gone.wait(), self.stream_delay_s)
                    except TimeoutError:
                        pass
            done = self._response(body, " ".join(words), prompt, len(words))
            await event({"type": "response.completed", "response": done})
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()

    @staticmethod
    async def _json(send: Any, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
