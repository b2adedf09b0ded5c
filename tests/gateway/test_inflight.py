"""Gateways publish the requests they hold per deployment; the autoscaler reads the sum over
every live gateway process (a Redis hash per deployment with a field per process, or a file per
process in RUN_DIR without Redis)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from inference.gateway.inflight import (
    GATEWAY_INFLIGHT_KEY,
    STALE_S,
    FileInflightStore,
    InflightPublisher,
    RedisInflightStore,
    gateway_inflight_read,
)
from inference.orchestrator.scaling import deployment_desired_replicas
from tests.gateway.conftest import make_deployment

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(params=["file", "redis"])
def store_settings(request, settings, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """Where the gateways publish and the autoscaler reads: RUN_DIR files, or Redis."""
    settings.RUN_DIR = tmp_path
    if request.param == "redis":
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("REDIS_URL is not set: the Redis store needs a Redis server")
        settings.REDIS_URL = url
        return url
    settings.REDIS_URL = ""
    return ""


def wait_for(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.02)
    return False


def test_two_gateways_publish_and_the_autoscaler_reads_their_sum(
    start_gateway, store_settings, engine, org, inference_key
):
    fake, server = engine
    fake.answer_delay_s = 4.0  # requests stay in flight while the test looks
    deployment = make_deployment(
        org, "tiny", [server.port], max_replicas=4, target_concurrency=2, desired_replicas=1
    )
    gateways = [start_gateway(inflight_publish_s=0.05, redis_url=store_settings) for _ in range(2)]
    for gw in gateways:
        gw.refresh()
    publishers = [gw.gateway.inflight_publisher for gw in gateways]
    assert all(publishers) and publishers[0].token != publishers[1].token  # type: ignore[union-attr]
    assert gateway_inflight_read(deployment.pk) is None

    def chat(url: str) -> int:
        response = httpx.post(
            url + "/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {inference_key}"},
            timeout=30,
        )
        return response.status_code

    with ThreadPoolExecutor(5) as pool:
        # Two requests held by one gateway, three by the other.
        urls = [gateways[0].url] * 2 + [gateways[1].url] * 3
        futures = [pool.submit(chat, url) for url in urls]
        assert wait_for(lambda: gateway_inflight_read(deployment.pk) == 5, timeout=3.5)
        assert [gw.gateway.inflight.get(str(deployment.pk)) for gw in gateways] == [2, 3]
        said: list[str] = []
        desired = deployment_desired_replicas(
            deployment=deployment, load=[0], demand_ttl_s=300, say=lambda d, s: said.append(s)
        )
        assert desired == 3 and "load 5" in said[0]
        assert [f.result() for f in futures] == [200] * 5
    # Back to nothing in flight: each process withdraws its entry.
    assert wait_for(lambda: gateway_inflight_read(deployment.pk) is None, timeout=2)


def test_publisher_writes_only_when_the_counts_change(tmp_path: Path):
    counts: dict[str, int] = {}
    store = FileInflightStore(tmp_path)
    publisher = InflightPublisher(lambda: dict(counts), store, interval_s=1)
    assert publisher.publish_once() is False  # nothing in flight, nothing written
    for _ in range(100):  # a hundred requests come and go between two looks: one write
        counts["d1"] = counts.get("d1", 0) + 1
    assert publisher.publish_once() is True
    assert publisher.publish_once() is False
    assert store.read("d1") == 100
    counts.clear()
    assert publisher.publish_once() is True
    assert store.read("d1") is None
    assert not list(tmp_path.glob("*.json"))
    assert publisher.writes == 2


def test_a_dead_processes_entry_stops_counting(tmp_path: Path):
    live, dead = FileInflightStore(tmp_path), FileInflightStore(tmp_path)
    live.publish("live", {"d1": 2})
    dead.publish("dead", {"d1": 7})
    assert live.read("d1") == 9
    stale = time.time() - STALE_S - 1
    os.utime(tmp_path / "dead.json", (stale, stale))
    assert live.read("d1") == 2


def test_redis_entries_are_summed_and_stale_ones_dropped():
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set: the Redis store needs a Redis server")
    import redis

    store = RedisInflightStore(url)
    deployment = "test-" + os.urandom(4).hex()
    key = GATEWAY_INFLIGHT_KEY.format(deployment_id=deployment)
    try:
        store.publish("a", {deployment: 2})
        store.publish("b", {deployment: 3})
        assert store.read(deployment) == 5
        client = redis.Redis.from_url(url)
        client.hset(key, "gone", "9:1000")  # written long ago by a process that died
        assert store.read(deployment) == 5
        assert set(client.hkeys(key)) == {b"a", b"b"}
        assert 0 < client.ttl(key) <= 60
        store.publish("a", {deployment: 0})
        store.publish("b", {deployment: 0})
        assert store.read(deployment) is None
        client.close()
    finally:
        store.close()
