"""A lean pooled HTTP/1.1 client for upstreams: keep-alive connections, bytes streamed through.

The gateway's overhead budget is about a millisecond per request on two cores, and a general
purpose client (httpx) costs more than that by itself (docs/benchmarks.md has the figures). This
client does only what the gateway needs: POST/GET with a body, keep-alive pools per origin, TLS
for external endpoints, responses parsed by httptools (the parser uvicorn uses) and delivered as
they arrive, and ``abort()`` to drop the connection, which makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from inference.routing.egress import EgressPolicy, EgressRefused, host_addresses, host_ascii

READ_LIMIT = 256 * 1024  # bytes buffered from upstream before reading pauses
# (scheme, host, port, external): connections to tenant-given hosts are pooled apart, so that
# a request to an external endpoint never reuses a connection that skipped the address check.
Origin = tuple[str, str, int, bool]


class UpstreamError(Exception):
    """A transport failure. ``kind`` is connect, timeout, closed or refused (the egress policy
    forbids the address); ``received`` says whether any response byte had arrived (after which
    a retry would duplicate work)."""

    def __init__(self, kind: str, message: str, *, received: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.received = received


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.response: UpstreamResponse | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes nobody asked for: the connection is not reusable.
            self.close()
            return
        try:
            response.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - we never ask to upgrade
            self.close()
        except httptools.HttpParserError as error:
            response.fail(UpstreamError("closed", f"bad response: {error}", received=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response.on_connection_lost()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _WaitExpired(Exception):
    """The read timeout passed while a response waited for bytes."""


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_WaitExpired())


@functools.lru_cache(maxsize=1024)
def _split_url(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, request target, Host header) of a URL, parsed once per URL."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    netloc = parts.netloc
    if not host.isascii():
        # DNS, TLS and the Host header carry the name's IDNA form (an endpoint's URL is checked
        # to have one when it is saved).
        host = host_ascii(host)
        netloc = host if parts.port is None else f"{host}:{parts.port}"
    return scheme, host, port, target, netloc


class UpstreamResponse:
    """One response. Headers are available once ``start()`` returns; the body streams."""

    def __init__(self, conn: _Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpResponseParser(self)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._headers_done = False
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.received = False
        self.keep_alive = False
        # A body already read to decide on a retry, kept for delivery to the client.
        self.pending_body: bytes | None = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_LIMIT and not self._paused and self.conn.transport is not None:
            self.conn.transport.pause_reading()
            self._paused = True
        self._wake()

    def on_message_complete(self) -> None:
        # Read the flag now: the parser resets it once the message is over.
        self.keep_alive = self.parser.should_keep_alive()
        self._complete = True
        self._wake()

    # internal
    def _wake(self) -> None:
        self.received = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        if self._error is None and not self._complete:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_connection_lost(self) -> None:
        if not self._complete:
            self.fail(
                UpstreamError(
                    "closed", "the upstream closed the connection", received=self.received
                )
            )

    async def _wait(self) -> None:
        # A plain timer on the waiter rather than `asyncio.timeout`, whose task bookkeeping
        # (cancel, uncancel, reschedule) costs several microseconds on every wait.
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            await waiter
        except _WaitExpired:
            self.abort()
            raise UpstreamError(
                "timeout", f"no response within {self.timeout:g} s", received=self.received
            ) from None
        finally:
            timer.cancel()
            self._waiter = None

    async def start(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def wait_for_body(self) -> None:
        """Until the first body bytes have arrived (or the body ended), consuming nothing: a
        stream that fails before then has shown nothing to the client, so another target may
        still answer it."""
        while not self._chunks and not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive. The connection returns to the pool after the last one."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self.conn.transport is not None:
                    self._paused = False
                    self.conn.transport.resume_reading()
                yield data
                continue
            if self._complete:
                self._release()
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    def _release(self) -> None:
        conn = self.conn
        conn.response = None
        if self.keep_alive and not conn.closed:
            conn.pool.put(conn)
        else:
            conn.close()

    def abort(self) -> None:
        """Drop the connection: the upstream sees the client go and stops generating."""
        self.fail(UpstreamError("closed", "aborted", received=self.received))
        self.conn.response = None
        self.conn.abort()


class Pool:
    """Idle keep-alive connections per origin (scheme, host, port, external), most recently
    used first."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # What external (tenant-given) hosts may resolve to; checked for each new connection.
        self.egress = egress or EgressPolicy()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.max_idle_per_origin = 256

    def put(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < self.max_idle_per_origin:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port, external = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = [host]
                if external:
                    # Resolve once, check every address, and connect to a checked one: a second
                    # lookup by create_connection could answer differently (DNS rebinding).
                    checked = await loop.run_in_executor(
                        None, host_addresses, self.egress, host, port
                    )
                    addresses = checked if checked is not None else [host]
                for index, address in enumerate(addresses):
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(self, origin),
                            address,
                            port,
                            ssl=context,
                            server_hostname=host if context is not None else None,
                        )
                        break
                    except OSError:
                        if index == len(addresses) - 1:
                            raise
        except EgressRefused as refused:
            raise UpstreamError("refused", str(refused)) from None
        except TimeoutError:
            raise UpstreamError("connect", f"connecting to {host}:{port} timed out") from None
        except OSError as error:
            raise UpstreamError("connect", f"cannot connect to {host}:{port}: {error}") from None
        return conn

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        *,
        external: bool = False,
    ) -> UpstreamResponse:
        """Send a request and wait for the response headers.

        A reused connection that the upstream had closed while idle fails before any byte comes
        back; that case is retried once on a fresh connection. ``external`` (a tenant-given
        host) checks the addresses of a new connection against the egress policy first.
        """
        scheme, host, port, target, netloc = _split_url(url)
        origin = (scheme, host, port, external)
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {netloc}",
            f"Content-Length: {len(body)}",
        ]
        for name, value in headers or ():
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            response = self._send(conn, head, body)
            try:
                await response.start()
                return response
            except UpstreamError as error:
                if error.received or error.kind == "timeout":
                    raise
                # Stale keep-alive connection: try the next one, then a fresh one.
        conn = await self._connect(origin)
        response = self._send(conn, head, body)
        await response.start()
        return response

    def _send(self, conn: _Connection, head: bytes, body: bytes) -> UpstreamResponse:
        response = UpstreamResponse(conn, self.read_timeout)
        conn.response = response
        assert conn.transport is not None
        conn.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            conn.transport.write(body)
        return response

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
