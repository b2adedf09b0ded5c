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
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, connection

if TYPE_CHECKING:
    from inference.gateway.app import Gateway

CHECK_TIMEOUT_S = 2.0
CACHE_S = 1.0


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
        close_old_connections()


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
        database = await _bounded(asyncio.to_thread(_database), "the database")
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
