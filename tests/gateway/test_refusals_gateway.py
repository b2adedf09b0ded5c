"""Requests the real gateway refuses before they reach a model are counted per key and reason,
and the counts reach the database from the gateway's own thread."""

from __future__ import annotations

import json
import logging
import time

import httpx
import openai
import pytest

from console.jsonlog import JsonFormatter
from console.permissions import Role
from console.services.keys import api_key_create, api_key_revoke
from inference.models import RefusalCount
from tests.factories import MembershipFactory, OrgFactory
from tests.gateway.conftest import make_deployment


@pytest.fixture
def served(gw, engine, org):  # type: ignore[no-untyped-def]
    fake, server = engine
    make_deployment(org, "tiny", [server.port], served="tiny-chat")
    gw.refresh()
    return fake


def ask(client: openai.OpenAI, model: str = "tiny-chat") -> str | None:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return completion.choices[0].message.content


def counts(org) -> dict[tuple[str, int, str], int]:  # type: ignore[no-untyped-def]
    found: dict[tuple[str, int, str], int] = {}
    for name, status, code, count in RefusalCount.objects.filter(org=org).values_list(
        "api_key__name", "status_code", "error_code", "count"
    ):
        found[(name, status, code)] = found.get((name, status, code), 0) + count
    return found


def test_refusals_are_counted_by_key_and_reason_and_never_reach_the_engine(gw, served, org, owner):
    limited = api_key_create(
        org=org, actor=owner, name="limited", scopes=["inference"], rpm_limit=1
    )
    revoked = api_key_create(org=org, actor=owner, name="old", scopes=["inference"])
    other = OrgFactory(name="Other", slug="other")
    theirs = api_key_create(
        org=other,
        actor=MembershipFactory(org=other, role=Role.OWNER).user,
        name="theirs",
        scopes=["inference"],
    )
    api_key_revoke(key=revoked.key, actor=owner)
    gw.refresh()

    client = gw.client(limited.secret)
    assert ask(client)
    reached = len(served.requests)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            ask(client)
    with pytest.raises(openai.NotFoundError):
        ask(client, "no-such-model")
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(gw.client(revoked.secret))
    assert caught.value.code == "revoked_api_key"
    with pytest.raises(openai.NotFoundError):
        ask(gw.client(theirs.secret))  # the other org has no such model
    with pytest.raises(openai.AuthenticationError):
        ask(gw.client("sk-not-a-key-of-anyone"))  # no org to count it for
    assert len(served.requests) == reached
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_refused_total{status="429",code="rate_limit_exceeded"} 3' in metrics
    assert 'gateway_refused_total{status="404",code="model_not_found"} 2' in metrics
    assert 'gateway_refused_total{status="401",code="invalid_api_key"} 1' in metrics

    assert gw.gateway.refusals.flush(force=True) == 6
    assert counts(org) == {
        ("limited", 429, "rate_limit_exceeded"): 3,
        ("limited", 404, "model_not_found"): 1,
        ("old", 401, "revoked_api_key"): 1,
    }
    assert counts(other) == {("theirs", 404, "model_not_found"): 1}
    # Served requests are usage records, not refusals.
    assert gw.gateway.refusals.flush(force=True) == 0


def test_the_poller_thread_writes_the_counts_without_being_asked(gw, served, org, owner):
    created = api_key_create(org=org, actor=owner, name="app", scopes=["inference"])
    gw.refresh()
    gw.gateway.refusals.flush_s = 0.0  # every poll (every 50 ms in these tests)
    client = gw.client(created.secret)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-chat", messages="not a list")  # type: ignore[arg-type]
    code = caught.value.code
    deadline = time.monotonic() + 10
    while not counts(org) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts(org) == {("app", 400, code): 1}


def test_shutting_down_writes_what_was_counted(gw, served, org, owner):
    created = api_key_create(org=org, actor=owner, name="app", scopes=["inference"])
    gw.refresh()
    with pytest.raises(openai.NotFoundError):
        ask(gw.client(created.secret), "missing")
    assert gw.gateway.refusals.pending() == 1
    gw.server.stop()  # SIGTERM does the same: the ASGI lifespan's shutdown
    assert counts(org) == {("app", 404, "model_not_found"): 1}


def test_refused_requests_get_an_access_log_line_without_the_key_or_the_prompt(
    start_gateway, engine, org, owner, caplog
):
    _, server = engine
    make_deployment(org, "tiny", [server.port], served="tiny-chat")
    created = api_key_create(org=org, actor=owner, name="k", scopes=["inference"], rpm_limit=1)
    gw = start_gateway(access_log=True)
    gw.refresh()
    caplog.set_level(logging.INFO, logger="inference.gateway.access")
    secret_prompt = [{"role": "user", "content": "TOP-SECRET-PROMPT"}]

    def refused(key: str, model: str) -> str:
        with pytest.raises(openai.APIStatusError) as caught:
            gw.client(key).chat.completions.create(model=model, messages=secret_prompt)
        return caught.value.response.headers["x-request-id"]

    unknown_model = refused(created.secret, "nope")
    unknown_key = refused("sk-made-up-key-0123456789abcdef", "tiny-chat")
    assert ask(gw.client(created.secret))
    rate_limited = refused(created.secret, "tiny-chat")

    lines = {
        record.request_id: json.loads(JsonFormatter().format(record))
        for record in caplog.records
        if record.name == "inference.gateway.access"
    }
    assert {unknown_model, unknown_key, rate_limited} <= set(lines)
    assert lines[unknown_model]["status"] == 404
    assert lines[unknown_model]["code"] == "model_not_found"
    assert (lines[unknown_model]["org"], lines[unknown_model]["model"]) == ("acme", "nope")
    assert lines[unknown_model]["key"] == created.key.prefix
    assert (lines[unknown_key]["status"], lines[unknown_key]["code"]) == (401, "invalid_api_key")
    assert lines[rate_limited]["code"] == "rate_limit_exceeded"
    assert all(line["latency_ms"] >= 0 for line in lines.values())
    text = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "TOP-SECRET-PROMPT" not in text
    assert created.secret not in text and "sk-made-up-key" not in text


def test_a_fault_inside_the_gateway_gets_exactly_one_access_log_line(
    start_gateway, engine, org, inference_key, monkeypatch, caplog
):
    """Once admitted, a request is logged with its usage; a fault after that (here: building the
    upstream body raises) is not logged again as a refusal. One before it gets the refusal line."""
    from inference.gateway import exchange as exchange_module

    _, server = engine
    make_deployment(org, "tiny", [server.port], served="tiny-chat")
    gw = start_gateway(access_log=True)
    gw.refresh()
    caplog.set_level(logging.INFO, logger="inference.gateway.access")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a planted bug")

    def fails() -> str:
        with pytest.raises(openai.InternalServerError) as caught:
            ask(gw.client(inference_key))
        assert caught.value.code == "internal_error"
        return caught.value.response.headers["x-request-id"]

    monkeypatch.setattr(exchange_module, "_upstream_body", broken)
    admitted = fails()
    monkeypatch.undo()
    monkeypatch.setattr(gw.gateway, "plan_for", broken)
    before_admission = fails()

    lines = [
        json.loads(JsonFormatter().format(record))
        for record in caplog.records
        if record.name == "inference.gateway.access"
    ]
    assert [line["request_id"] for line in lines] == [admitted, before_admission]
    assert lines[0]["status"] == lines[1]["status"] == 500
    assert "attempts" in lines[0] and "code" not in lines[0]  # the usage line
    assert lines[1]["code"] == "internal_error"  # the refusal line
    # Counted once as well: as a request that reached a target, then as a refusal.
    assert gw.gateway.metrics.requests.values == {("tiny-chat", "500"): 1}
    assert gw.gateway.metrics.refused.values == {("500", "internal_error"): 1}
