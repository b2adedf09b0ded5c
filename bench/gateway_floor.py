"""The floor for benchmark 1: the least any proxy on the gateway's own stack can do.

A server on uvloop with httptools (the event loop and parser the gateway runs on) that reads a
request, sends it on over the gateway's pooled upstream client (inference/gateway/upstream.py)
and writes the answer back in one send. No ASGI, no key, no limits, no routing, no metering:
what it adds over calling the upstream directly is what a Python process in the path costs on
this machine before any gateway work, so the gateway's added latency can be read against it.

    .venv/bin/python bench/gateway_floor.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.gateway.upstream import Pool

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


class Floor(asyncio.Protocol):
    def __init__(self, pool: Pool, url: str) -> None:
        self.pool = pool
        self.url = url
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        self.body = []
        asyncio.get_running_loop().create_task(self.forward(body))

    async def forward(self, body: bytes) -> None:
        response = await self.pool.request(
            "POST", self.url, body, [("Content-Type", "application/json")]
        )
        answer = await response.read()
        assert self.transport is not None
        self.transport.write(HEAD % len(answer) + answer)


async def serve(port: int, upstream_port: int) -> None:
    pool = Pool()
    url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Floor(pool, url), "127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
