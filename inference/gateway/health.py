"""Liveness and readiness of a web process, for load balancers and orchestrators.

``GET /healthz`` answers 200 while the process's event loop runs: nothing else is checked, so a
slow database never gets a healthy process restarted. ``GET /readyz`` answers 200 when this
process can serve inference: the gateway has started and is not shutting down, it holds a
snapshot of keys and routes, and Redis answers where it is configured (rate limits and budget
reservations need it). The database and the ledger writer are reported but do not make a process
unready: with the database away every gateway keeps serving from its snapshot and keeps usage on
disk until the database is back (docs/gateway.md, "Metering"), and taking every gateway out of
the load balancer at once would turn a database blip into an outage. Both answers are JSON and
carry no tenant's data. Checks are cached for a second, so probes cannot load the database.

The database check runs in a thread of its own, one check at a time, and closes its connection
when done: a database that accepts connections and never answers blocks that one thread (until
``DATABASE_CONNECT_TIMEOUT_S``), never the event loop's default executor, which the gateway's
DNS lookups and demand signals need.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import connection

if TYPE_CHECKING:
    from inference.gateway.app import Gateway

CHECK_TIMEOUT_S = 2.0
CACHE_S = 1.0
T = TypeVar("T")


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return "ok"
    except Exception as error:
        # The class only: a driver's message may name hosts and users.
        return f"error: {type(error).__name__}"
    finally:
        # Probes come every few seconds: a connection kept for the next one would sit idle.
        connection.close()


class DatabaseCheck:
    """Runs the database check in one thread of its own, one check at a time."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._running: Future[str] | None = None

    def run(self, call: Callable[[], T]) -> T:
        """``call()`` in the check's thread, waited for (tests look at that thread's state)."""
        return self._pool().submit(call).result()

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="readyz-database")
        return self._executor

    async def __call__(self) -> str:
        if self._running is not None and not self._running.done():
            # The last check is still waiting: queueing another behind it would tell nothing.
            return f"error: no answer from the database in {CHECK_TIMEOUT_S:g} s"
        self._running = self._pool().submit(_database)
        # Shielded: a timed-out wait must not try to cancel the check, which goes on running.
        return await _bounded(asyncio.shield(asyncio.wrap_future(self._running)), "the database")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


async def _bounded(check: Any, what: str) -> str:
    try:
        return str(await asyncio.wait_for(check, CHECK_TIMEOUT_S))
    except TimeoutError:
        return f"error: no answer from {what} in {CHECK_TIMEOUT_S:g} s"
    except Exception as error:
        return f"error: {type(error).__name__}"


class Health:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._cached: tuple[float, int, bytes] | None = None
        self.database = DatabaseCheck()

    @staticmethod
    def live() -> tuple[int, bytes]:
        return 200, b'{"status": "ok"}'

    async def ready(self) -> tuple[int, bytes]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_S:
            return self._cached[1], self._cached[2]
        status, body = await self._check()
        self._cached = (time.monotonic(), status, body)
        return status, body

    async def _check(self) -> tuple[int, bytes]:
        gateway = self.gateway
        problems: list[str] = []
        if not gateway.started:
            problems.append("the gateway has not started")
        if gateway.stopping:
            problems.append("shutting down")
        snapshot = gateway.snapshot
        if snapshot.built_at <= 0:
            problems.append("no snapshot of keys and routes yet")
        redis = "not configured (limits are per process)"
        ping = getattr(gateway.limiter, "ping", None)
        if ping is not None:
            redis = await _bounded(ping(), "Redis")
            if redis != "ok":
                problems.append("Redis: " + redis)
        database = await self.database()
        body: dict[str, Any] = {
            "status": "not ready" if problems else "ready",
            "problems": problems,
            "snapshot": {
                "version": snapshot.version,
                "age_s": round(time.monotonic() - snapshot.built_at, 1)
                if snapshot.built_at
                else None,
            },
            "redis": redis,
            "database": database,
            "ledger_writer": _writer_state(gateway),
        }
        return (503 if problems else 200), json.dumps(body).encode()


def _writer_state(gateway: Gateway) -> str:
    if gateway.meter is None:
        return "metering off"
    if gateway.writer is None:
        return "in process"
    return "running" if gateway.writer.pid is not None else "starts with the first batch"
