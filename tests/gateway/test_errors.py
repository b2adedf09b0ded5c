"""Refusals in OpenAI's error format, with the right status, raised by the official client, and
never reaching the engine."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import httpx
import openai
import pytest
from django.utils import timezone

from console.services.closing import org_close
from console.services.keys import api_key_create, api_key_revoke, api_key_update
from inference.gateway.app import Gateway
from inference.gateway.config import GatewayConfig
from inference.gateway.limits import LocalLimiter
from inference.services.routes import route_create
from tests.gateway.conftest import TEST_CONFIG, TOOLS_ARGS, make_deployment

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def served(gw, engine, org, inference_key):  # type: ignore[no-untyped-def]
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    gw.refresh()
    return fake


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"].startswith("req-")
    return body["error"]


def test_bad_missing_and_revoked_keys_get_401(gw, served, org, owner):
    with pytest.raises(openai.AuthenticationError) as caught:
        gw.client("sk-not-a-real-key").chat.completions.create(**CHAT)
    assert caught.value.code == "invalid_api_key"
    response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
    assert response.status_code == 401
    assert error_of(response)["code"] == "missing_api_key"

    created = api_key_create(org=org, actor=owner, name="k", scopes=["inference"])
    api_key_revoke(key=created.key, actor=owner)
    gw.refresh()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        gw.client(created.secret).chat.completions.create(**CHAT)
    assert served.requests == []


def test_a_closed_orgs_keys_are_refused(gw, served, org, owner, inference_key):
    assert gw.client(inference_key).chat.completions.create(**CHAT).choices
    org_close(org=org, actor=owner, confirm=org.slug)
    gw.refresh()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        gw.client(inference_key).chat.completions.create(**CHAT)
    with pytest.raises(openai.AuthenticationError):
        gw.client(inference_key).models.list()
    assert len(served.requests) == 1


def test_a_key_limited_to_other_networks_is_refused_before_the_engine(gw, served, org, owner):
    created = api_key_create(
        org=org, actor=owner, name="office", scopes=["inference"], allowed_ips=["10.0.0.0/8"]
    )
    gw.refresh()
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(created.secret).chat.completions.create(**CHAT)
    assert caught.value.code == "ip_not_allowed"
    assert "may not be used from 127.0.0.1" in caught.value.message
    assert served.requests == []
    api_key_update(key=created.key, actor=owner, allowed_ips=["10.0.0.0/8", "127.0.0.0/8"])
    gw.refresh()
    assert gw.client(created.secret).chat.completions.create(**CHAT).choices
    assert len(served.requests) == 1


def test_a_key_created_a_moment_ago_works_on_its_first_request(start_gateway, engine, org, owner):
    # A poll interval far longer than the test: only the unknown key's own look at the control
    # plane can bring the new key in.
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    gw = start_gateway(snapshot_poll_s=60)
    gw.refresh()
    created = api_key_create(org=org, actor=owner, name="new", scopes=["inference"])
    reply = gw.client(created.secret).chat.completions.create(**CHAT)
    assert reply.choices[0].message.content
    assert [m.id for m in gw.client(created.secret).models.list()] == ["tiny"]
    # A key that does not exist is still refused after that look, and never reaches the engine.
    with pytest.raises(openai.AuthenticationError) as caught:
        gw.client("sk-never-created").chat.completions.create(**CHAT)
    assert caught.value.code == "invalid_api_key"
    assert len(fake.requests) == 1


def test_unknown_keys_together_cost_few_control_plane_checks():
    from inference.gateway.snapshot import MIN_CHECK_GAP_S, SnapshotPoller

    class Counting(SnapshotPoller):
        checks = 0

        def refresh(self, *, force: bool = False) -> bool:
            Counting.checks += 1
            return False

    poller = Counting(lambda snapshot: None, poll_s=60, ttl_s=60)
    poller.start()
    answered = threading.Semaphore(0)
    started = time.monotonic()
    try:
        for _ in range(200):
            poller.check_soon(answered.release)
            time.sleep(0.001)
        for _ in range(200):
            assert answered.acquire(timeout=5)
    finally:
        poller.stop()
    elapsed = time.monotonic() - started
    # Every caller was answered, by checks at most one per MIN_CHECK_GAP_S (plus the first).
    assert 1 <= Counting.checks <= elapsed / MIN_CHECK_GAP_S + 2


def test_expired_key_gets_401(gw, served, org, owner):
    created = api_key_create(org=org, actor=owner, name="k", scopes=["inference"])
    type(created.key).objects.filter(pk=created.key.pk).update(expires_at=timezone.now())
    gw.refresh()
    with pytest.raises(openai.AuthenticationError, match="expired"):
        gw.client(created.secret).chat.completions.create(**CHAT)


def test_scope_and_model_restrictions_get_403(gw, served, org, owner):
    manage_only = api_key_create(org=org, actor=owner, name="m", scopes=["manage"]).secret
    other_model = api_key_create(
        org=org, actor=owner, name="o", scopes=["inference"], allowed_models=["other"]
    ).secret
    gw.refresh()
    with pytest.raises(openai.PermissionDeniedError, match="inference"):
        gw.client(manage_only).chat.completions.create(**CHAT)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(other_model).chat.completions.create(**CHAT)
    assert caught.value.code == "model_not_allowed"
    assert served.requests == []


def test_unknown_model_gets_404_and_other_orgs_models_are_unknown(gw, served, inference_key):
    from tests.factories import OrgFactory

    make_deployment(OrgFactory(), "theirs", [1])
    gw.refresh()
    for model in ("nope", "theirs"):
        with pytest.raises(openai.NotFoundError) as caught:
            gw.client(inference_key).chat.completions.create(**{**CHAT, "model": model})
        assert caught.value.code == "model_not_found"


def test_a_model_asked_for_the_other_kind_of_work_gets_400(gw, served, org, inference_key):
    make_deployment(org, "embedder", [1], runner="pooling")
    gw.refresh()
    client = gw.client(inference_key)
    with pytest.raises(openai.BadRequestError, match="embedding model") as caught:
        client.chat.completions.create(**{**CHAT, "model": "embedder"})
    assert (caught.value.code, caught.value.param) == ("model_not_supported", "model")
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.completions.create(model="embedder", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="does not answer /v1/embeddings"):
        client.embeddings.create(model="tiny", input="hi")
    assert served.requests == []


def test_tools_left_to_a_model_that_cannot_choose_them_get_400_or_the_next_target(
    gw, served, engine, org, owner, inference_key
):
    _, server = engine
    make_deployment(org, "tooled", [server.port], engine_args=TOOLS_ARGS)
    route_create(
        org=org,
        actor=owner,
        name="agent",
        policy="fallback",
        config={"targets": ["deployment:tiny", "deployment:tooled"]},
    )
    gw.refresh()
    client = gw.client(inference_key)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for choice in ({}, {"tool_choice": "auto"}):
        with pytest.raises(openai.BadRequestError, match="'tiny' does not let the model") as caught:
            client.chat.completions.create(**CHAT, tools=tools, **choice)
        assert (caught.value.code, caught.value.param) == ("tools_not_enabled", "tool_choice")
    with pytest.raises(openai.BadRequestError, match="tool_call_parser"):
        client.responses.create(model="tiny", input="hi", tools=[{"type": "function", "name": "f"}])
    assert served.requests == []
    # What needs no choice by the model goes through; a route moves on to a target that can.
    client.chat.completions.create(**CHAT, tools=tools, tool_choice="none")
    named = {"type": "function", "function": {"name": "f"}}
    client.chat.completions.create(**CHAT, tools=tools, tool_choice=named)
    raw = client.chat.completions.with_raw_response.create(
        **{**CHAT, "model": "agent"}, tools=tools
    )
    assert raw.headers["x-target"] == "deployment:tooled"
    assert [r["model"] for r in served.requests] == ["tiny", "tiny", "tooled"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        # Nested past Python's recursion limit: the decoder's RecursionError was a 500.
        (b"[" * 100_000, "nested too deeply"),
        (b'{"model": "tiny", "messages": ' + b"[" * 100_000, "nested too deeply"),
        (b"[1, 2]", "JSON object"),
        # Half a UTF-16 pair, as JSON.stringify writes a string cut through an emoji: a 500
        # (the body could not be encoded again for the engine).
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud83d"}]}',
            "half of a UTF-16 surrogate pair (\\ud83d)",
        ),
        (
            b'{"model": "tiny", "stream": true, "user": "\\udc00",'
            b' "messages": [{"role": "user", "content": "hi"}]}',
            "half of a UTF-16 surrogate pair (\\udc00)",
        ),
        (b'{"messages": []}', "'model'"),
        (b'{"model": "tiny", "messages": "hi"}', "'messages' must be a non-empty list"),
        (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}', "role"),
        # Found by fuzzing: a role that is a list or an object was a 500.
        (b'{"model": "tiny", "messages": [{"role": [], "content": "x"}]}', "role must be one"),
        (b'{"model": "tiny", "messages": [{"role": {}, "content": "x"}]}', "role must be one"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', "content"),
        (b'{"model": "tiny", "messages": [{"role": "user"}], "max_tokens": "9"}', "max_tokens"),
        (b'{"model": "tiny", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "tiny", "messages": [{"role": "user"}], "temperature": true}', "temperature"),
        (b'{"model": "tiny", "messages": [{"role": "user"}], "logprobs": 2}', "true or false"),
        (b'{"model": "tiny", "messages": [{"role": "user"}], "top_logprobs": "2"}', "whole number"),
    ],
)
def test_invalid_bodies_get_400_saying_what_is_wrong(gw, served, inference_key, body, message):
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {inference_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert message in error_of(response)["message"]
    assert served.requests == []


def test_whole_surrogate_pairs_and_other_escapes_go_through(gw, served, inference_key):
    """Clients that escape every non-ASCII character (Python's json by default) send an emoji
    as a pair of escapes: that is whole, and reaches the engine as the emoji."""
    body = (
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud83d\\ude00 \\u00e9"}]}'
    )
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {inference_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    sent = served.requests[-1]
    assert sent["messages"][0]["content"] == "hi \U0001f600 \u00e9"


def test_bodies_over_the_limit_get_413(start_gateway, engine, org, inference_key):
    gw = start_gateway(max_body_bytes=1000)
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    gw.refresh()
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json=big,
        headers={"Authorization": f"Bearer {inference_key}"},
    )
    assert response.status_code == 413
    assert fake.requests == []


def test_suspended_org_gets_402_with_the_reason(gw, served, org, inference_key):
    type(org).objects.filter(pk=org.pk).update(
        suspended_at=timezone.now(), suspended_reason="payment failed"
    )
    gw.refresh()
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(inference_key).chat.completions.create(**CHAT)
    assert caught.value.status_code == 402
    assert "payment failed" in caught.value.message


def test_rpm_limit_gets_429_with_retry_after(gw, served, org, owner):
    secret = api_key_create(
        org=org, actor=owner, name="slow", scopes=["inference"], rpm_limit=2
    ).secret
    gw.refresh()
    client = gw.client(secret)
    client.chat.completions.create(**CHAT)
    client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT)
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 61
    assert len(served.requests) == 2


def test_unknown_path_and_wrong_method(gw, served, inference_key):
    response = httpx.get(gw.url + "/v1/chat/completions")
    assert response.status_code == 405
    assert httpx.post(gw.url + "/v1/nothing").status_code == 404


def test_browsers_may_call_the_api_from_any_origin(gw, served, inference_key):
    preflight = httpx.options(
        gw.url + "/v1/chat/completions",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-stainless-lang" in preflight.headers["access-control-allow-headers"]
    assert served.requests == []  # a preflight never reaches an engine

    auth = {"Authorization": f"Bearer {inference_key}", "Origin": "https://app.example.com"}
    answered = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=auth)
    assert answered.status_code == 200
    assert answered.headers["access-control-allow-origin"] == "*"
    assert "x-request-id" in answered.headers["access-control-expose-headers"]
    refused = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"Origin": "x"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "*"  # the page can read why
    listed = httpx.get(gw.url + "/v1/models", headers=auth)
    assert listed.headers["access-control-allow-origin"] == "*"


def test_cors_can_be_turned_off(start_gateway):
    gw = start_gateway(cors=False)
    response = httpx.options(gw.url + "/v1/chat/completions", headers={"Origin": "x"})
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers


def test_a_failure_inside_the_gateway_is_a_500_in_openais_shape_with_the_request_id(
    gw, served, inference_key, monkeypatch, caplog
):
    # No request can reach a bug on purpose; one is planted where every request passes.
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a planted bug")

    monkeypatch.setattr(gw.gateway, "plan_for", broken)
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client(inference_key).chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}]
        )
    error = caught.value
    request_id = error.response.headers["x-request-id"]
    assert error.code == "internal_error"
    assert error.body["type"] == "server_error"
    assert request_id in error.message
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)
    assert served.requests == []


HSTS = "max-age=31536000; includeSubDomains; preload"


def _secure_gateway(**overrides: object) -> Gateway:
    config = replace(TEST_CONFIG, https_only=True, hsts=HSTS, **overrides)  # type: ignore[arg-type]
    return Gateway(config, limiter=LocalLimiter(), poll=False)


def _call(gateway: Gateway, base_url: str, path: str, **headers: str) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway, client=("203.0.113.9", 1234))
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            if path.startswith("/v1/chat"):
                return await client.post(path, json=CHAT, headers=headers)
            return await client.get(path, headers=headers)

    return asyncio.run(call())


def test_with_https_required_plain_http_is_refused_before_the_key_is_looked_at():
    gateway = _secure_gateway()
    response = _call(
        gateway, "http://gw.example.com", "/v1/chat/completions", authorization="Bearer sk-x"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "https_required"
    assert "https" in response.json()["error"]["message"]
    assert "location" not in response.headers  # a redirected POST would lose its body


def test_with_https_required_https_is_served_with_hsts():
    response = _call(
        _secure_gateway(),
        "https://gw.example.com",
        "/v1/chat/completions",
        authorization="Bearer sk-x",
    )
    assert response.status_code == 401  # an unknown key: past the https check
    assert response.headers["strict-transport-security"] == HSTS


def test_a_trusted_proxys_forwarded_proto_counts_as_https_and_an_untrusted_one_does_not():
    trusting = _secure_gateway(trust_forwarded_proto=True)
    forwarded = {"x-forwarded-proto": "https", "authorization": "Bearer sk-x"}
    assert _call(trusting, "http://gw", "/v1/chat/completions", **forwarded).status_code == 401
    assert (
        _call(_secure_gateway(), "http://gw", "/v1/chat/completions", **forwarded).status_code
        == 403
    )


def test_probes_and_metrics_answer_over_plain_http_with_https_required():
    gateway = _secure_gateway()
    assert _call(gateway, "http://gw", "/healthz").status_code == 200
    response = _call(gateway, "http://gw", "/metrics")
    assert response.json()["error"]["code"] == "metrics_auth"  # not https_required
    assert "strict-transport-security" not in response.headers


def test_the_gateway_follows_djangos_ssl_redirect_and_hsts_settings(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    config = GatewayConfig.from_env()
    assert (config.https_only, config.hsts, config.trust_forwarded_proto) == (True, HSTS, True)
    settings.SECURE_SSL_REDIRECT, settings.SECURE_HSTS_SECONDS = False, 0
    settings.SECURE_PROXY_SSL_HEADER = None
    config = GatewayConfig.from_env()
    assert (config.https_only, config.hsts, config.trust_forwarded_proto) == (False, "", False)
