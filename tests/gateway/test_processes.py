"""Gateways as separate server processes (uvicorn running console.asgi, as in production) over
one database and one Redis: revocation reaches every process, limits are shared, and SIGTERM
loses no usage record.

The processes open the test database themselves, so these tests need PostgreSQL (SQLite's test
database lives in this process's memory); the shared-limit test also needs Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.db import connection

from billing.models import UsageRecord
from console.services.keys import api_key_create, api_key_revoke
from tests.gateway.conftest import make_deployment

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def spawn_gateway(
    committed_db: None, tmp_path: Path
) -> Iterator[Callable[..., tuple[str, subprocess.Popen]]]:
    if connection.vendor != "postgresql":
        pytest.skip("gateway processes must open the test database: set DATABASE_URL to PostgreSQL")
    settings = connection.settings_dict
    database_url = (
        f"postgres://{settings['USER']}:{settings['PASSWORD']}@{settings['HOST'] or '127.0.0.1'}"
        f":{settings['PORT'] or 5432}/{settings['NAME']}"
    )
    started: list[subprocess.Popen] = []

    def spawn(**env: str) -> tuple[str, subprocess.Popen]:
        port = _free_port()
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DJANGO_DEBUG": "1",
            "GATEWAY_ACCESS_LOG": "0",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        environment.pop("REDIS_URL", None) if "REDIS_URL" not in env else None
        log = (tmp_path / f"gateway-{port}.log").open("w")
        process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "console.asgi:application",
                "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            ],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / f"gateway-{port}.log").read_text()
            try:
                if httpx.get(url + "/metrics", timeout=1).status_code == 200:
                    return url, process
            except httpx.TransportError:
                threading.Event().wait(0.1)
        raise AssertionError(f"gateway on {port} did not start")

    yield spawn
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_revoked_key_is_refused_within_two_seconds_on_every_gateway_process(
    spawn_gateway, engine, org, owner
):
    _, server = engine
    make_deployment(org, "tiny", [server.port])
    created = api_key_create(org=org, actor=owner, name="soon revoked", scopes=["inference"])
    gateways = [spawn_gateway()[0], spawn_gateway()[0]]
    for url in gateways:
        assert _chat(url, created.secret).status_code == 200

    api_key_revoke(key=created.key, actor=owner)
    revoked_at = time.monotonic()
    refused_after = {}
    for url in gateways:
        while time.monotonic() - revoked_at < 5:
            if _chat(url, created.secret).status_code == 401:
                refused_after[url] = time.monotonic() - revoked_at
                break
    print(f"revoked key refused after {sorted(refused_after.values())} s")
    assert len(refused_after) == 2
    assert max(refused_after.values()) < 2.0


def test_two_gateway_processes_share_one_rpm_limit_through_redis(spawn_gateway, engine, org, owner):
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("REDIS_URL is not set: shared limits need a Redis server")
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    secret = api_key_create(
        org=org, actor=owner, name="limited", scopes=["inference"], rpm_limit=10
    ).secret
    gateways = [spawn_gateway(REDIS_URL=redis_url)[0] for _ in range(2)]
    # Stay inside one minute window, so that the limit applies to all 30 requests.
    if time.time() % 60 > 45:
        threading.Event().wait(61 - time.time() % 60)
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: _chat(gateways[i % 2], secret).status_code, range(30)))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20
    assert len(fake.requests) == 10


def test_sigterm_during_load_loses_no_usage_record(spawn_gateway, engine, org, inference_key):
    fake, server = engine
    fake.answer_delay_s = 0.05
    make_deployment(org, "tiny", [server.port])
    url, process = spawn_gateway()
    served: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        url + "/v1/chat/completions",
                        json=CHAT,
                        headers={"Authorization": f"Bearer {inference_key}"},
                    )
                except httpx.TransportError:
                    return  # the server has closed its doors
                if response.status_code == 200:
                    served.append(response.headers["x-request-id"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(served) < 40:
        threading.Event().wait(0.05)
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    written = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert len(served) >= 40
    assert written == set(served)


def test_revoked_key_is_refused_within_two_seconds_by_gateways_in_this_process(
    start_gateway, engine, org, owner
):
    """The same measurement where no PostgreSQL is configured: two gateways polling at the
    default interval, each with its own snapshot, in threads of this process."""
    _, server = engine
    make_deployment(org, "tiny", [server.port])
    created = api_key_create(org=org, actor=owner, name="soon revoked", scopes=["inference"])
    gateways = [start_gateway(snapshot_poll_s=0.5) for _ in range(2)]
    for gw in gateways:
        gw.refresh()
        assert _chat(gw.url, created.secret).status_code == 200
    api_key_revoke(key=created.key, actor=owner)
    revoked_at = time.monotonic()
    refused_after = []
    for gw in gateways:
        while time.monotonic() - revoked_at < 5:
            if _chat(gw.url, created.secret).status_code == 401:
                refused_after.append(time.monotonic() - revoked_at)
                break
    assert len(refused_after) == 2
    assert max(refused_after) < 2.0


def test_route_changes_reach_a_running_gateway_within_two_seconds(
    start_gateway, engine, org, owner, inference_key
):
    from inference.services.routes import route_create, route_update

    _, server = engine
    make_deployment(org, "tiny", [server.port])
    make_deployment(org, "other", [server.port])
    gw = start_gateway(snapshot_poll_s=0.5)
    gw.refresh()
    assert _chat_model(gw.url, inference_key, "chat").status_code == 404
    route = route_create(
        org=org, actor=owner, name="chat", policy="single", config={"target": "deployment:tiny"}
    )
    changed_at = time.monotonic()
    while _chat_model(gw.url, inference_key, "chat").status_code != 200:
        assert time.monotonic() - changed_at < 2.0, "the new route did not arrive in 2 s"
    route_update(route=route, actor=owner, config={"target": "deployment:other"})
    changed_at = time.monotonic()
    while _chat_model(gw.url, inference_key, "chat").headers["x-target"] != "deployment:other":
        assert time.monotonic() - changed_at < 2.0, "the route change did not arrive in 2 s"


def _chat_model(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={**CHAT, "model": model},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_gateway_process_answers_health_and_readiness_probes(spawn_gateway):
    redis_url = os.environ.get("REDIS_URL")
    url, _ = spawn_gateway(**({"REDIS_URL": redis_url} if redis_url else {}))
    live = httpx.get(url + "/healthz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["problems"] == []
    assert body["database"] == "ok"
    assert body["redis"] == ("ok" if redis_url else "not configured (limits are per process)")
    assert body["snapshot"]["version"] >= 0 and body["snapshot"]["age_s"] < 60
    # Probes are answered by the gateway, before Django: no host check, no session.
    assert httpx.get(url + "/readyz", headers={"Host": "10.0.0.7"}).status_code == 200
