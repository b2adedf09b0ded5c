"""Fallbacks, retries, ejection, timeouts, cold starts and client disconnects, against fake
engines on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from billing.models import UsageRecord
from console.snapshot import snapshot_bump
from inference.models import Deployment, ExternalEndpoint, Replica
from inference.services.routes import (
    external_endpoint_create,
    external_endpoint_update,
    route_create,
)
from tests.gateway.conftest import TOOLS_ARGS, make_deployment
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.servers import ThreadServer

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


def dead_port() -> int:
    """A port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_then_big(org, owner, small_port: int, big_port: int) -> None:  # type: ignore[no-untyped-def]
    """Deployments "small" and "big" and a route "chat" that falls back from one to the other."""
    make_deployment(org, "small", [small_port])
    make_deployment(org, "big", [big_port])
    route_create(
        org=org,
        actor=owner,
        name="chat",
        policy="fallback",
        config={"targets": ["deployment:small", "deployment:big"]},
    )


@pytest.fixture
def second_engine():  # type: ignore[no-untyped-def]
    fake = FakeEngine("second", max_model_len=100_000)
    server = ThreadServer(fake, lifespan="off").start()
    yield fake, server
    server.stop()


def test_refused_connection_is_retried_on_another_replica_and_the_replica_ejected(
    start_gateway, engine, org, inference_key
):
    # Round robin, so that the dead replica is certainly chosen (affinity might never pick it).
    gw = start_gateway(balance="round_robin")
    fake, server = engine
    deployment = make_deployment(org, "tiny", [dead_port(), server.port])
    gw.refresh()
    client = gw.client(inference_key)
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model="tiny", **CHAT)
        assert raw.http_response.status_code == 200
    live = deployment.replicas.get(port=server.port)
    assert raw.headers["x-replica-id"] == str(live.id)
    assert len(fake.requests) == 6
    metrics = httpx.get(gw.url + "/metrics").text
    # The dead replica failed once, then sat out its cool-down.
    assert 'gateway_upstream_errors_total{target="deployment:tiny",kind="connect"} 1' in metrics


def test_only_replica_unreachable_gives_502(gw, org, inference_key):
    make_deployment(org, "tiny", [dead_port()])
    gw.refresh()
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(inference_key).chat.completions.create(model="tiny", **CHAT)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"


@pytest.mark.parametrize(
    "failure",
    [500, 503, 429, (400, "This model's maximum context length is 512 tokens. However, ...")],
)
def test_fallback_route_moves_on_after_failure(
    gw, engine, second_engine, org, owner, inference_key, failure
):
    first, first_server = engine
    second, second_server = second_engine
    small_then_big(org, owner, first_server.port, second_server.port)
    gw.refresh()
    first.script.append(failure)
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(model="chat", **CHAT)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-route"] == "chat"
    assert raw.headers["x-target"] == "deployment:big"
    assert len(first.requests) == 1
    assert second.requests[0]["model"] == "big"
    gw.wait_for_records(1)  # the event is recorded after the response ends
    record = UsageRecord.objects.get()
    assert (record.route, record.target, record.model) == ("chat", "deployment:big", "big")


def test_single_target_errors_map_to_502_and_client_errors_pass_through(
    gw, engine, org, inference_key
):
    fake, server = engine
    deployment = make_deployment(org, "tiny", [server.port])
    gw.refresh()
    client = gw.client(inference_key)
    fake.script.append(500)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tiny", **CHAT)
    assert caught.value.status_code == 502
    assert "scripted failure 500" in caught.value.message
    # Which deployment and replica failed, as a success says which served.
    headers = caught.value.response.headers
    assert headers["x-deployment-id"] == str(deployment.id)
    assert headers["x-replica-id"] == str(deployment.replicas.get().id)
    fake.script.append((400, "temperature must be at most 2"))
    with pytest.raises(openai.BadRequestError, match="temperature must be at most 2"):
        client.chat.completions.create(model="tiny", **CHAT)


def test_slow_upstream_times_out_with_504(start_gateway, engine, org, inference_key):
    gw = start_gateway(read_timeout_s=0.3)
    fake, server = engine
    fake.answer_delay_s = 3
    make_deployment(org, "tiny", [server.port])
    gw.refresh()
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(inference_key).chat.completions.create(model="tiny", **CHAT)
    assert caught.value.status_code == 504


def test_weighted_and_conditional_routes_choose_targets(
    gw, engine, second_engine, org, owner, inference_key
):
    _, first_server = engine
    _, second_server = second_engine
    make_deployment(org, "small", [first_server.port])
    # The big model serves tools: a tool-call parser, and the model may choose tools.
    make_deployment(org, "big", [second_server.port], engine_args=TOOLS_ARGS)
    route_create(
        org=org,
        actor=owner,
        name="canary",
        policy="weighted",
        config={
            "targets": [
                {"target": "deployment:small", "weight": 0},
                {"target": "deployment:big", "weight": 100},
            ]
        },
    )
    route_create(
        org=org,
        actor=owner,
        name="smart",
        policy="conditional",
        config={
            "rules": [
                {"when": {"tag": "batch"}, "target": "deployment:small"},
                {"when": {"has_tools": True}, "target": "deployment:big"},
            ],
            "default": "deployment:small",
        },
    )
    gw.refresh()
    client = gw.client(inference_key)

    def target(model: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
        raw = client.chat.completions.with_raw_response.create(model=model, **CHAT, **kwargs)
        return raw.headers["x-target"]

    assert target("canary") == "deployment:big"
    assert target("smart") == "deployment:small"
    assert target("smart", extra_headers={"x-route-tag": "batch"}) == "deployment:small"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert target("smart", tools=tools) == "deployment:big"


def test_external_endpoint_gets_its_model_name_and_key(
    start_gateway, settings, engine, org, owner, inference_key
):
    # The "external" endpoint is a local server: the operator's allow-list admits it.
    settings.GATEWAY_EXTERNAL_ALLOW = ["127.0.0.1"]
    gw = start_gateway(external_allow=("127.0.0.1",))
    fake, server = engine
    external_endpoint_create(
        org=org,
        actor=owner,
        name="partner",
        base_url=server.url + "/v1",
        model="partner-large",
        api_key="sk-partner-secret-123",
    )
    route_create(
        org=org,
        actor=owner,
        name="outside",
        policy="single",
        config={"target": "external:partner"},
    )
    gw.refresh()
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(
        model="outside", **CHAT
    )
    assert raw.headers["x-target"] == "external:partner"
    assert fake.requests[-1]["model"] == "partner-large"
    assert fake.headers[-1]["authorization"] == "Bearer sk-partner-secret-123"

    # Rotating the key (and changing the model) in place: the route follows without an edit.
    external_endpoint_update(
        endpoint=ExternalEndpoint.objects.get(name="partner"),
        actor=owner,
        model="partner-larger",
        api_key="sk-partner-rotated-456",
    )
    gw.refresh()
    gw.client(inference_key).chat.completions.create(model="outside", **CHAT)
    assert fake.requests[-1]["model"] == "partner-larger"
    assert fake.headers[-1]["authorization"] == "Bearer sk-partner-rotated-456"


def test_scaled_to_zero_uses_the_cold_start_fallback_and_signals_demand(
    gw, engine, org, owner, inference_key
):
    _, server = engine
    sleeping = make_deployment(org, "sleepy", [], min_replicas=0)
    make_deployment(org, "warm", [server.port])
    route_create(
        org=org,
        actor=owner,
        name="chat",
        policy="single",
        config={"target": "deployment:sleepy"},
        cold_start_fallback="deployment:warm",
    )
    gw.refresh()
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(model="chat", **CHAT)
    assert raw.headers["x-target"] == "deployment:warm"
    # The demand signal is written from a worker thread; poll the row, bounded.
    for _ in range(200):
        sleeping.refresh_from_db()
        if sleeping.demand_at is not None:
            break
        threading.Event().wait(0.02)
    assert sleeping.demand_at is not None


def test_request_waits_for_a_replica_to_become_ready(start_gateway, engine, org, inference_key):
    gw = start_gateway(cold_start_wait_s=20)
    fake, server = engine
    deployment = make_deployment(org, "sleepy", [], min_replicas=0)
    gw.refresh()
    result: dict[str, object] = {}

    def call() -> None:
        result["answer"] = gw.client(inference_key).chat.completions.create(model="sleepy", **CHAT)

    caller = threading.Thread(target=call)
    caller.start()
    # Wait until the gateway has asked for a replica, then "start" one.
    for _ in range(500):
        if Deployment.objects.filter(pk=deployment.pk, demand_at__isnull=False).exists():
            break
        threading.Event().wait(0.02)
    Replica.objects.create(deployment=deployment, host="127.0.0.1", port=server.port, state="ready")
    snapshot_bump()
    caller.join(timeout=30)
    assert "answer" in result
    assert len(fake.requests) == 1


def test_no_replica_in_time_gives_503_with_retry_after(start_gateway, org, inference_key):
    gw = start_gateway(cold_start_wait_s=0.2)
    make_deployment(org, "sleepy", [], min_replicas=0)
    gw.refresh()
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "sleepy", **CHAT},
        headers={"Authorization": f"Bearer {inference_key}"},
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "10"


def _fail(deployment: Deployment, reason: str) -> None:
    # What the orchestrator's summary does when it gives up on a deployment.
    Deployment.objects.filter(pk=deployment.pk).update(state="failed", state_reason=reason)
    snapshot_bump()


def test_a_failed_deployment_is_answered_at_once_with_the_reason(
    start_gateway, engine, org, owner, inference_key
):
    gw = start_gateway(cold_start_wait_s=60)
    _, server = engine
    broken = make_deployment(org, "broken", [])
    make_deployment(org, "warm", [server.port])
    route_create(
        org=org,
        actor=owner,
        name="sturdy",
        policy="fallback",
        config={"targets": ["deployment:broken", "deployment:warm"]},
    )
    _fail(broken, "A replica failed and will not be restarted: The process exited with code 1.")
    gw.refresh()
    started = time.monotonic()
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "broken", **CHAT},
        headers={"Authorization": f"Bearer {inference_key}"},
        timeout=30,
    )
    assert time.monotonic() - started < 10  # not the 60 s a starting model may take
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "deployment_failed"
    assert "'broken' failed" in error["message"]
    assert "The process exited with code 1." in error["message"]
    # A route moves on to its next target instead of waiting; no demand is signalled.
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(model="sturdy", **CHAT)
    assert raw.headers["x-target"] == "deployment:warm"
    broken.refresh_from_db()
    assert broken.demand_at is None


def test_a_request_waiting_for_a_replica_is_answered_when_the_deployment_fails(
    start_gateway, org, inference_key
):
    gw = start_gateway(cold_start_wait_s=60)
    deployment = make_deployment(org, "sleepy", [], min_replicas=0)
    gw.refresh()
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["answer"] = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "sleepy", **CHAT},
            headers={"Authorization": f"Bearer {inference_key}"},
            timeout=90,
        )

    caller = threading.Thread(target=call)
    caller.start()
    for _ in range(500):
        if Deployment.objects.filter(pk=deployment.pk, demand_at__isnull=False).exists():
            break
        threading.Event().wait(0.02)
    _fail(deployment, "Not ready within 900 s.")
    caller.join(timeout=30)
    assert not caller.is_alive()
    assert result["answer"].status_code == 503
    assert result["answer"].json()["error"]["code"] == "deployment_failed"


def test_client_disconnect_mid_stream_aborts_upstream_and_meters_what_was_generated(
    gw, engine, org, inference_key
):
    fake, server = engine
    fake.stream_tokens = 200
    fake.stream_delay_s = 0.05
    make_deployment(org, "tiny", [server.port])
    gw.refresh()
    stream = gw.client(inference_key).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    received = 0
    for _chunk in stream:
        received += 1
        if received == 3:
            break
    stream.close()
    assert fake.disconnected.wait(timeout=10)
    gw.wait_for_records(1)
    record = UsageRecord.objects.get()
    assert record.status_code == 499
    assert record.error_code == "client_disconnected"
    assert record.prompt_tokens == 3
    # What the engine reported on the last chunk the gateway received before the abort.
    assert 3 <= record.completion_tokens < 200
    assert record.completion_tokens <= fake.generation_tokens_total


def test_a_fallback_through_a_nested_chain_reaches_every_target(
    gw, engine, org, owner, inference_key
):
    """outer = [route:primary, backup], primary = [d1, d2]: with d1 and d2 down the backup
    serves. The attempts used to be counted over each route's own entries (two), so the
    backup was never tried."""
    fake, server = engine
    make_deployment(org, "d1", [dead_port()])
    make_deployment(org, "d2", [dead_port()])
    make_deployment(org, "backup", [server.port])
    route_create(
        org=org,
        actor=owner,
        name="primary",
        policy="fallback",
        config={"targets": ["deployment:d1", "deployment:d2"]},
    )
    route_create(
        org=org,
        actor=owner,
        name="outer",
        policy="fallback",
        config={"targets": ["route:primary", "deployment:backup"]},
    )
    gw.refresh()
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(model="outer", **CHAT)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-target"] == "deployment:backup"
    assert len(fake.requests) == 1


def test_a_chain_does_not_wait_on_a_sleeping_model_when_its_cold_start_fallback_is_up(
    start_gateway, engine, org, owner, inference_key
):
    gw = start_gateway(cold_start_wait_s=5)
    fake, server = engine
    make_deployment(org, "sleepy", [], min_replicas=0)
    make_deployment(org, "warm", [server.port])
    route_create(
        org=org,
        actor=owner,
        name="chat",
        policy="fallback",
        config={"targets": ["deployment:sleepy", "deployment:warm"]},
        cold_start_fallback="deployment:warm",
    )
    gw.refresh()
    started = time.monotonic()
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(model="chat", **CHAT)
    waited = time.monotonic() - started
    assert raw.headers["x-target"] == "deployment:warm"
    assert waited < 4, f"waited {waited:.1f} s on the sleeping model"
    assert len(fake.requests) == 1


def test_the_reservation_prices_the_cold_start_fallback_too(gw, engine, org, owner):
    """A sleeping cheap model with a costly cold-start fallback: the request must reserve at
    the costly price, or concurrent requests overspend the budget many times over."""
    from billing.models import Price
    from console.models import ApiKey
    from console.services.keys import api_key_create

    _, server = engine
    make_deployment(org, "sleepy", [], min_replicas=0)
    make_deployment(org, "pricey", [server.port])
    Price.objects.create(
        model="sleepy", input_micros_per_million=1_000_000, output_micros_per_million=1_000_000
    )
    Price.objects.create(
        model="pricey",
        input_micros_per_million=100_000_000,
        output_micros_per_million=100_000_000,
    )
    route_create(
        org=org,
        actor=owner,
        name="chat",
        policy="single",
        config={"target": "deployment:sleepy"},
        cold_start_fallback="deployment:pricey",
    )
    created = api_key_create(org=org, actor=owner, name="capped", scopes=["inference"])
    # Enough for the request at the sleeping model's price, not at the fallback's.
    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=200)
    gw.refresh()
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "chat", "max_tokens": 5, **CHAT},
        headers={"Authorization": f"Bearer {created.secret}"},
        timeout=30,
    )
    assert response.status_code == 402, response.text
    assert UsageRecord.objects.count() == 0


class _Breaker:
    """An engine that answers 200 and dies: before the body is whole ("whole"), before a
    stream's first event ("early"), or after some events of a stream ("midstream")."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if self.mode == "whole":
            head = [(b"content-type", b"application/json"), (b"content-length", b"500")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send(
                {"type": "http.response.body", "body": b'{"id": "x", "cho', "more_body": True}
            )
            raise RuntimeError("died")
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        if self.mode == "early":
            raise RuntimeError("died before its first event")
        for word in ("one", "two", "three"):
            chunk = {"id": "x", "object": "chat.completion.chunk", "model": "m", "created": 0}
            chunk["choices"] = [{"index": 0, "delta": {"content": word}, "finish_reason": None}]
            event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        raise RuntimeError("died mid-stream")


@pytest.mark.parametrize("mode", ["whole", "early"])
def test_an_answer_cut_before_it_reached_the_client_moves_on_to_the_next_target(
    gw, second_engine, org, owner, inference_key, mode
):
    breaker = ThreadServer(_Breaker(mode), lifespan="off").start()
    try:
        second, second_server = second_engine
        small_then_big(org, owner, breaker.port, second_server.port)
        gw.refresh()
        raw = gw.client(inference_key).chat.completions.with_raw_response.create(
            model="chat", stream=mode == "early", **CHAT
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["x-target"] == "deployment:big"
        if mode == "early":
            words = [c.choices[0].delta.content for c in raw.parse() if c.choices]
            assert len([w for w in words if w]) == second.stream_tokens
        assert len(second.requests) == 1
        gw.wait_for_records(1)
        assert UsageRecord.objects.get().target == "deployment:big"
    finally:
        breaker.stop()


def test_a_stream_cut_midway_ends_with_an_error_the_client_sees(gw, org, inference_key):
    breaker = ThreadServer(_Breaker("midstream"), lifespan="off").start()
    try:
        make_deployment(org, "small", [breaker.port])
        gw.refresh()
        stream = gw.client(inference_key).chat.completions.create(
            model="small", stream=True, **CHAT
        )
        got = []
        with pytest.raises(openai.APIError, match="failed mid-answer"):
            for chunk in stream:
                got.append(chunk.choices[0].delta.content)
        assert got == ["one", "two", "three"]
        gw.wait_for_records(1)
        record = UsageRecord.objects.get()
        assert (record.status_code, record.error_code) == (502, "upstream_error")
    finally:
        breaker.stop()


def test_a_request_that_never_reached_a_model_is_counted_with_the_refusals(
    start_gateway, org, owner, inference_key
):
    """A sleeping model that does not wake in time writes no usage record (no model served
    it); it is counted by key and reason with the refusals shown above the request log."""
    from inference.models import RefusalCount

    gw = start_gateway(cold_start_wait_s=0.2)
    make_deployment(org, "sleepy", [], min_replicas=0)
    gw.refresh()
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(inference_key).chat.completions.create(model="sleepy", **CHAT)
    assert caught.value.status_code == 503
    gw.gateway.refusals.flush(force=True)
    counted = RefusalCount.objects.get()
    assert (counted.status_code, counted.error_code, counted.count) == (503, "cold_start", 1)
    assert UsageRecord.objects.count() == 0
    from inference.selectors.refusals import refusal_summary

    (group,) = refusal_summary(org=org, start=None, end=None, key_id=None).groups
    assert "scaled to zero and no replica was ready in time" in group.help


def test_a_keyless_endpoint_gets_no_auth_header_and_an_uncounted_answer_is_estimated(
    start_gateway, settings, engine, org, owner, inference_key
):
    settings.GATEWAY_EXTERNAL_ALLOW = ["127.0.0.1"]
    gw = start_gateway(external_allow=("127.0.0.1",))
    fake, server = engine
    external_endpoint_create(
        org=org, actor=owner, name="open", base_url=server.url + "/v1", model="m", api_key=""
    )
    route_create(
        org=org, actor=owner, name="outside", policy="single", config={"target": "external:open"}
    )
    gw.refresh()
    client = gw.client(inference_key)
    client.chat.completions.create(model="outside", **CHAT)
    assert "authorization" not in fake.headers[-1]  # not "Bearer " with nothing after it
    # An answer of 400 characters whose usage leaves out the completion: estimated, not free.
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 400}}]}
    fake.fixed_body = json.dumps({**answer, "usage": {"prompt_tokens": 7}}).encode()
    client.chat.completions.create(model="outside", **CHAT)
    gw.wait_for_records(2)
    last = UsageRecord.objects.order_by("-served_at").first()
    assert last is not None and last.completion_tokens == 100
