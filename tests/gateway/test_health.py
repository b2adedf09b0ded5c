"""/healthz and /readyz: what a load balancer or orchestrator is told about a gateway."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connections

from inference.gateway import health
from inference.gateway.app import Gateway
from inference.gateway.limits import LocalLimiter, RedisLimiter
from tests.gateway.conftest import TEST_CONFIG


def test_a_running_gateway_is_live_and_ready(gw):
    live = httpx.get(gw.url + "/healthz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert live.headers["cache-control"] == "no-store"
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["database"] == "ok"
    assert body["redis"].startswith("not configured")
    assert body["ledger_writer"] == "in process"
    assert 0 <= body["snapshot"]["age_s"] < 60
    assert httpx.post(gw.url + "/readyz").status_code == 405


def _ready(gateway: Gateway) -> tuple[int, dict]:
    status, body = asyncio.run(gateway.health.ready())
    return status, json.loads(body)


@pytest.mark.django_db
def test_a_gateway_that_has_not_started_or_is_stopping_is_not_ready():
    gateway = Gateway(TEST_CONFIG, limiter=LocalLimiter(), poll=False)
    status, body = _ready(gateway)
    assert status == 503
    assert body["problems"] == [
        "the gateway has not started",
        "no snapshot of keys and routes yet",
    ]
    # Live all the same: nothing is wrong with the process itself.
    assert gateway.health.live()[0] == 200

    gateway.poller.refresh(force=True)
    gateway.started = True
    gateway.health._cached = None
    assert _ready(gateway)[0] == 200
    gateway.stopping = True
    gateway.health._cached = None
    status, body = _ready(gateway)
    assert (status, body["problems"]) == (503, ["shutting down"])


@pytest.mark.django_db
def test_redis_that_does_not_answer_makes_a_gateway_unready():
    # Nothing listens on port 1: rate limits and budget reservations could not be admitted.
    gateway = Gateway(TEST_CONFIG, limiter=RedisLimiter("redis://127.0.0.1:1/0"), poll=False)
    gateway.poller.refresh(force=True)
    gateway.started = True
    status, body = _ready(gateway)
    assert status == 503
    assert body["redis"].startswith("error: ")
    assert body["problems"] == ["Redis: " + body["redis"]]


@pytest.mark.django_db
def test_a_database_that_fails_is_reported_but_the_gateway_stays_ready(monkeypatch):
    # Gateways serve from their snapshot and spill usage to disk while the database is away;
    # taking them all out of the load balancer would turn a database blip into an outage.
    gateway = Gateway(TEST_CONFIG, limiter=LocalLimiter(), poll=False)
    gateway.poller.refresh(force=True)
    gateway.started = True

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        from django.db import OperationalError

        raise OperationalError("connection refused by db.internal:5432 for user app")

    # On the class: the check runs in a worker thread, with that thread's connection.
    monkeypatch.setattr(type(connections["default"]), "cursor", broken)
    status, body = _ready(gateway)
    assert status == 200
    assert body["database"] == "error: OperationalError"  # no host or user in the answer


def _started_gateway() -> Gateway:
    gateway = Gateway(TEST_CONFIG, limiter=LocalLimiter(), poll=False)
    gateway.poller.refresh(force=True)
    gateway.started = True
    return gateway


@pytest.mark.django_db
def test_a_hung_database_holds_one_thread_of_the_checks_own_and_none_of_the_loops(monkeypatch):
    # A database that accepts connections and never answers: each probe gives up after the
    # check's timeout, but the thread stays blocked. Probes must not pile such threads up, least
    # of all in the loop's default executor, which the gateway's DNS lookups and demand
    # signals need.
    gateway = _started_gateway()
    release = threading.Event()
    entered: list[str] = []

    def hung() -> str:
        entered.append(threading.current_thread().name)
        release.wait(30)
        return "ok"

    monkeypatch.setattr(health, "_database", hung)
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.05)

    async def probes() -> tuple[list[tuple[int, str]], str]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        answers = []
        try:
            for _ in range(5):
                gateway.health._cached = None
                status, body = await gateway.health.ready()
                answers.append((status, json.loads(body)["database"]))
            free = await asyncio.wait_for(loop.run_in_executor(None, str, "free"), 2)
        finally:
            release.set()
        return answers, free

    answers, free = asyncio.run(probes())
    assert free == "free"
    assert len(entered) == 1
    assert all(status == 200 for status, _ in answers)
    assert all(database.startswith("error: no answer from the database") for _, database in answers)


@pytest.mark.django_db
def test_the_database_check_keeps_no_connection_open(monkeypatch):
    # With persistent connections (DATABASE_CONN_MAX_AGE), a check that left its connection
    # open would hold one idle connection per web process for nothing.
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 60)
    gateway = _started_gateway()
    status, body = _ready(gateway)
    assert (status, body["database"]) == (200, "ok")
    still_open = gateway.health.database.run(lambda: connections["default"].connection is not None)
    assert still_open is False
