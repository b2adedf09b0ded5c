"""Budgets: concurrent requests reserve their maximum cost before they are forwarded, so that
together they cannot overspend a cap by more than one request's reservation."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db.models import Sum

from billing.models import UsageRecord
from billing.money import format_dollars
from billing.pricing import cost_micros
from console.models import ApiKey
from console.services.keys import api_key_create
from inference.gateway.bodies import CHAT, COMPLETION, request_parse
from inference.gateway.limits import LocalLimiter, RedisLimiter
from tests.gateway.conftest import make_deployment

CAP_MICROS = 200
CONCURRENT = 50


@pytest.fixture(params=["local", "redis"])
def limiter(request):  # type: ignore[no-untyped-def]
    if request.param == "local":
        return LocalLimiter()
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set: the Redis limiter needs a Redis server")
    # A generous timeout: these tests are about what concurrent requests admit, not about a
    # Redis that stops answering (test_limiter_outage.py), and a loaded machine can take more
    # than the default half second to answer fifty requests' steps.
    return RedisLimiter(url, timeout_s=10)


def test_fifty_concurrent_requests_cannot_overspend_by_more_than_one_reservation(
    start_gateway, engine, org, owner, limiter
):
    fake, server = engine
    fake.answer_delay_s = 0.3  # every request is in flight at once
    make_deployment(org, "tiny", [server.port])
    created = api_key_create(org=org, actor=owner, name="capped", scopes=["inference"])
    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=CAP_MICROS)
    gw = start_gateway()
    gw.gateway.limiter = limiter
    gw.refresh()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "one two"}], "max_tokens": 5}
    headers = {"Authorization": f"Bearer {created.secret}"}

    def call(_: int) -> int:
        return httpx.post(
            gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
        ).status_code

    with ThreadPoolExecutor(CONCURRENT) as pool:
        statuses = list(pool.map(call, range(CONCURRENT)))

    served = statuses.count(200)
    assert statuses.count(402) == CONCURRENT - served
    assert 0 < served < CONCURRENT
    gw.wait_for_records(served)
    spent = UsageRecord.objects.filter(api_key=created.key).aggregate(s=Sum("cost_micros"))["s"]
    # The reservation: the prompt's byte bound plus max_tokens, at the fallback price.
    snapshot = gw.gateway.snapshot
    target = snapshot.catalogue(org.id).served["tiny"]
    bound = request_parse(CHAT, json.dumps(body).encode()).prompt_tokens_bound
    reservation = cost_micros(snapshot.price(org.id, target), bound, 5)
    assert spent <= CAP_MICROS + reservation
    # Nobody was refused while whole reservations still fitted under the cap.
    assert served >= CAP_MICROS // reservation


def test_a_fault_after_admission_releases_the_reservation(
    start_gateway, engine, org, owner, monkeypatch
):
    """A bug inside the exchange (here: building the upstream body raises) answers 500 with
    the request id and settles its budget reservation: the next request still fits the budget,
    which one unsettled reservation would have filled until the month ended."""
    from inference.gateway import exchange as exchange_module

    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    created = api_key_create(org=org, actor=owner, name="capped", scopes=["inference"])
    gw = start_gateway()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "one two"}], "max_tokens": 5}
    gw.refresh()
    snapshot = gw.gateway.snapshot
    snapshot_target = snapshot.catalogue(org.id).served["tiny"]
    bound = request_parse(CHAT, json.dumps(body).encode()).prompt_tokens_bound
    reservation = cost_micros(snapshot.price(org.id, snapshot_target), bound, 5)
    # Room for one reservation, not two.
    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=reservation + 1)
    gw.refresh()
    headers = {"Authorization": f"Bearer {created.secret}"}
    real = exchange_module._upstream_body

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr(exchange_module, "_upstream_body", broken)
    failed = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "internal_error"
    assert failed.headers["x-request-id"] in failed.json()["error"]["message"]
    monkeypatch.setattr(exchange_module, "_upstream_body", real)
    served = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert served.status_code == 200, served.text
    assert fake.requests and len(fake.requests) == 1


def test_a_request_bigger_than_what_is_left_says_what_it_could_cost(
    start_gateway, engine, org, owner
):
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    created = api_key_create(org=org, actor=owner, name="capped", scopes=["inference"])
    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=CAP_MICROS)
    gw = start_gateway()
    gw.refresh()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}
    refused = httpx.post(
        gw.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {created.secret}"},
        timeout=30,
    )
    assert refused.status_code == 402
    message = refused.json()["error"]["message"]
    assert "This request could cost up to $" in message
    assert "a lower max_tokens may fit what is left" in message
    assert fake.requests == []


MAX_MODEL_LEN = 100


@pytest.mark.parametrize(
    ("path", "body", "completion"),
    [
        # The engine reads max_completion_tokens, not the deprecated max_tokens beside it.
        ("/v1/chat/completions", {"max_tokens": 5, "max_completion_tokens": 50}, 50),
        # Without max_tokens each of the n answers may fill the model's context.
        ("/v1/chat/completions", {"n": 3}, 3 * MAX_MODEL_LEN),
        # Each prompt of a list gets its own n answers.
        ("/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 20, "n": 2}, 120),
        # The completions API has no max_completion_tokens: the engine ignores it, and an
        # answer without max_tokens gets that API's 16 tokens...
        ("/v1/completions", {"prompt": "a", "max_completion_tokens": 5}, 16),
        ("/v1/completions", {"prompt": ["a", "b"], "n": 2}, 4 * 16),
        # ...unless max_tokens is null: then the rest of the context.
        ("/v1/completions", {"prompt": "a", "max_tokens": None}, MAX_MODEL_LEN),
    ],
)
def test_the_reservation_covers_every_answer_the_engine_may_generate(
    start_gateway, engine, org, owner, path, body, completion
):
    fake, server = engine
    make_deployment(org, "tiny", [server.port], engine_args={"max_model_len": MAX_MODEL_LEN})
    created = api_key_create(org=org, actor=owner, name="capped", scopes=["inference"])
    gw = start_gateway()
    gw.refresh()
    if path == "/v1/chat/completions":
        body = {"messages": [{"role": "user", "content": "one two"}], **body}
    body = {"model": "tiny", **body}
    kind = CHAT if path == "/v1/chat/completions" else COMPLETION
    bound = request_parse(kind, json.dumps(body).encode()).prompt_tokens_bound
    snapshot = gw.gateway.snapshot
    price = snapshot.price(org.id, snapshot.catalogue(org.id).served["tiny"])
    reservation = cost_micros(price, bound, completion)
    headers = {"Authorization": f"Bearer {created.secret}"}

    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=reservation - 1)
    gw.refresh()
    refused = httpx.post(gw.url + path, json=body, headers=headers, timeout=30)
    assert refused.status_code == 402, refused.text
    assert f"could cost up to {format_dollars(reservation)} " in refused.json()["error"]["message"]
    assert fake.requests == []

    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=reservation)
    gw.refresh()
    served = httpx.post(gw.url + path, json=body, headers=headers, timeout=30)
    assert served.status_code == 200, served.text


def test_routing_rules_see_the_max_tokens_the_engine_applies():
    chat = request_parse(
        CHAT,
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,'
        b' "max_completion_tokens": 50}',
    )
    assert chat.features.max_tokens == 50
    text = request_parse(COMPLETION, b'{"model": "m", "prompt": "x", "max_completion_tokens": 5}')
    assert text.features.max_tokens == 16  # the completions API's default
    unbounded = request_parse(COMPLETION, b'{"model": "m", "prompt": "x", "max_tokens": null}')
    assert unbounded.features.max_tokens is None


def test_the_reservation_counts_the_tools_a_chat_template_writes_into_the_prompt(
    start_gateway, engine, org, owner
):
    """Tool definitions reach the engine inside the prompt (as indented JSON, with the
    template's instructions around them): a request that offers them may cost far more than
    its messages' text, and must reserve that."""
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    created = api_key_create(org=org, actor=owner, name="capped", scopes=["inference"])
    gw = start_gateway()
    gw.refresh()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Weather. " * 10,
                "parameters": schema,
            },
        }
        for i in range(10)
    ]
    with_tools = {**body, "tools": tools, "tool_choice": "none"}
    parsed = request_parse(CHAT, json.dumps(with_tools).encode())
    plain = request_parse(CHAT, json.dumps(body).encode())
    written = len(json.dumps(tools, indent=4).encode())
    assert parsed.prompt_tokens_bound >= plain.prompt_tokens_bound + written
    assert parsed.prompt_tokens_estimate >= plain.prompt_tokens_estimate + written // 4 // 2
    snapshot = gw.gateway.snapshot
    price = snapshot.price(org.id, snapshot.catalogue(org.id).served["tiny"])
    # Room for the plain request twice over, not for its tools.
    budget = 2 * cost_micros(price, plain.prompt_tokens_bound, 5)
    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=budget)
    gw.refresh()
    headers = {"Authorization": f"Bearer {created.secret}"}
    url = gw.url + "/v1/chat/completions"
    assert httpx.post(url, json=body, headers=headers, timeout=30).status_code == 200
    refused = httpx.post(url, json=with_tools, headers=headers, timeout=30)
    assert refused.status_code == 402, refused.text
    assert len(fake.requests) == 1
