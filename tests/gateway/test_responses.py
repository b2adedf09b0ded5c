"""The Responses API (``POST /v1/responses``) through the gateway in front of fake engines, with
the official openai client: answers and streams passed through, metered from the engine's usage,
routed, refused when they ask for stored state, and the parsing behind it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from billing.models import UsageRecord
from console.models import ApiKey
from console.services.keys import api_key_create
from inference.gateway import bodies
from inference.gateway.errors import GatewayError
from inference.gateway.router import scoring_text
from inference.gateway.sse import ResponsesStreamFilter
from inference.services.routes import external_endpoint_create, route_create
from tests.gateway.conftest import TOOLS_ARGS, RunningGateway, make_deployment
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.servers import ThreadServer


@pytest.fixture
def served(gw, engine, org):
    fake, server = engine
    deployment = make_deployment(org, "tiny", [server.port], served="tiny-chat")
    gw.refresh()
    return fake, deployment


@pytest.fixture
def second_engine():
    fake = FakeEngine("second")
    server = ThreadServer(fake, lifespan="off").start()
    yield fake, server
    server.stop()


def post(gw: RunningGateway, key: str, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gw.url + "/v1/responses",
        content=content,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def test_a_response_passes_through_with_headers_and_is_metered_from_the_engines_usage(
    gw, served, inference_key
):
    fake, deployment = served
    raw = gw.client(inference_key).responses.with_raw_response.create(
        model="tiny-chat",
        instructions="be kind",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "say hello"}]}],
        max_output_tokens=3,
    )
    response = raw.parse()
    assert response.output_text == "hello from the"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 3)
    assert raw.headers["x-target"] == "deployment:tiny"
    assert raw.headers["x-deployment-id"] == str(deployment.id)
    # Forwarded to the engine's own /v1/responses, never asking it to store the response.
    assert fake.requests[-1]["store"] is False
    assert fake.requests[-1]["max_output_tokens"] == 3

    gw.wait_for_records(1)
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert (record.prompt_tokens, record.completion_tokens) == (4, 3)
    assert record.status_code == 200
    assert record.model == "tiny-chat"


def test_a_streamed_response_passes_every_event_through_and_meters_the_final_usage(
    gw, served, inference_key
):
    fake, _ = served
    events = list(
        gw.client(inference_key).responses.create(
            model="tiny-chat", input="one two three", stream=True, store=True
        )
    )
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.count("response.output_text.delta") == 8
    assert types[-1] == "response.completed"
    # The client gets the usage where the Responses API puts it: on the final event.
    assert events[-1].response.usage.output_tokens == 8
    assert fake.requests[-1]["store"] is False  # asked for by the client, refused for it
    assert "stream_options" not in fake.requests[-1]

    gw.wait_for_records(1)
    record = UsageRecord.objects.get()
    assert (record.prompt_tokens, record.completion_tokens) == (3, 8)
    assert record.ttft_ms is not None


def test_client_disconnect_mid_stream_aborts_upstream_and_meters_the_events_received(
    gw, engine, org, owner
):
    fake, server = engine
    fake.stream_tokens = 200
    fake.stream_delay_s = 0.05
    make_deployment(org, "tiny", [server.port])
    created = api_key_create(org=org, actor=owner, name="capped", scopes=["inference"])
    ApiKey.objects.filter(pk=created.key.pk).update(monthly_budget_micros=10**9)
    gw.refresh()
    stream = gw.client(created.secret).responses.create(
        model="tiny", input="one two three four", stream=True
    )
    deltas = 0
    for event in stream:
        deltas += event.type == "response.output_text.delta"
        if deltas == 3:
            break
    stream.close()
    assert fake.disconnected.wait(timeout=10)
    gw.wait_for_records(1)
    record = UsageRecord.objects.get()
    assert record.status_code == 499
    # No usage comes before the last event: the prompt estimate, one token per delta received.
    estimate = bodies.request_parse(
        bodies.RESPONSES, b'{"model": "tiny", "input": "one two three four"}'
    ).prompt_tokens_estimate
    assert record.prompt_tokens == estimate
    assert 3 <= record.completion_tokens < 200
    assert record.completion_tokens <= fake.generation_tokens_total
    # The key's budget counter settled from the reservation to what the ledger bills.
    assert record.cost_micros > 0
    spend = [v for k, (v, _) in gw.gateway.limiter._values.items() if k.startswith("gw:spend:key:")]
    assert spend == [record.cost_micros]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        ({"input": "hi"}, "model", "'model'"),
        ({"model": "tiny-chat"}, "input", "'input' must be a string or a list"),
        ({"model": "tiny-chat", "input": 5}, "input", "'input' must be a string or a list"),
        ({"model": "tiny-chat", "input": ["hi"]}, "input", "input[0] must be an object"),
        ({"model": "tiny-chat", "input": [{"role": "wizard", "content": "x"}]}, "input", "role"),
        ({"model": "tiny-chat", "input": [{"role": ["user"], "content": "x"}]}, "input", "role"),
        (
            {"model": "tiny-chat", "input": [{"role": "user", "content": 5}]},
            "input[0].content",
            "content",
        ),
        (
            {"model": "tiny-chat", "input": [{"role": "user", "content": [{"text": "x"}]}]},
            "input[0].content",
            "'type'",
        ),
        ({"model": "tiny-chat", "input": "x", "max_output_tokens": "9"}, "max_output_tokens", ""),
        ({"model": "tiny-chat", "input": "x", "max_output_tokens": 0}, "max_output_tokens", ""),
        ({"model": "tiny-chat", "input": "x", "stream": "yes"}, "stream", "true or false"),
        ({"model": "tiny-chat", "input": "x", "store": "no"}, "store", "true or false"),
        ({"model": "tiny-chat", "input": "x", "instructions": 3}, "instructions", "string"),
        ({"model": "tiny-chat", "input": "x", "temperature": True}, "temperature", "number"),
        ({"model": "tiny-chat", "input": "x", "tools": {}}, "tools", "list"),
        ({"model": "tiny-chat", "input": "x", "text": {"format": "json"}}, "text", "object"),
    ],
)
def test_invalid_bodies_get_400_naming_the_param_and_never_reach_the_engine(
    gw, served, inference_key, body, param, message
):
    response = post(gw, inference_key, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]
    assert served[0].requests == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"conversation": {"id": "conv_123"}}, "conversation"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ],
)
def test_requests_for_stored_state_are_refused_with_the_param_named(
    gw, served, inference_key, extra, param
):
    with pytest.raises(openai.BadRequestError, match="not stored") as caught:
        gw.client(inference_key).responses.create(**{"model": "tiny-chat", "input": "hi", **extra})
    assert caught.value.param == param
    assert served[0].requests == []


def test_background_false_and_store_false_are_served(gw, served, inference_key):
    response = gw.client(inference_key).responses.create(
        model="tiny-chat", input="hi", background=False, store=False
    )
    assert response.status == "completed"


def test_stored_responses_cannot_be_retrieved_cancelled_or_deleted(gw, served, inference_key):
    client = gw.client(inference_key)
    for call in (client.responses.retrieve, client.responses.delete, client.responses.cancel):
        with pytest.raises(openai.NotFoundError, match="not stored") as caught:
            call("resp_123")
        assert caught.value.code == "response_not_found"
    assert httpx.get(gw.url + "/v1/responses/resp_123").status_code == 401
    # Other calls under /v1/responses/ are not served (no such endpoint), not "not stored".
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.input_tokens.count(model="tiny-chat", input="hi")
    assert unknown.value.code == "unknown_url"


def test_unknown_model_404_and_model_not_allowed_403(gw, served, org, owner, inference_key):
    with pytest.raises(openai.NotFoundError) as caught:
        gw.client(inference_key).responses.create(model="nope", input="hi")
    assert caught.value.code == "model_not_found"
    other = api_key_create(
        org=org, actor=owner, name="o", scopes=["inference"], allowed_models=["other"]
    ).secret
    gw.refresh()
    with pytest.raises(openai.PermissionDeniedError) as denied:
        gw.client(other).responses.create(model="tiny-chat", input="hi")
    assert denied.value.code == "model_not_allowed"
    assert served[0].requests == []


def test_an_embedding_model_is_not_asked_for_a_response(gw, served, org, inference_key):
    make_deployment(org, "embedder", [1], runner="pooling")
    gw.refresh()
    with pytest.raises(openai.BadRequestError, match="embedding model") as caught:
        gw.client(inference_key).responses.create(model="embedder", input="hi")
    assert (caught.value.code, caught.value.param) == ("model_not_supported", "model")


def test_conditional_rules_read_max_output_tokens_tools_and_text_format(
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
        name="smart",
        policy="conditional",
        config={
            "rules": [
                {"when": {"max_tokens_min": 100}, "target": "deployment:big"},
                {"when": {"has_tools": True}, "target": "deployment:big"},
                {"when": {"has_response_format": True}, "target": "deployment:big"},
                {"when": {"prompt_tokens_min": 50}, "target": "deployment:big"},
            ],
            "default": "deployment:small",
        },
    )
    gw.refresh()
    client = gw.client(inference_key)

    def target(**kwargs: object) -> str:
        raw = client.responses.with_raw_response.create(model="smart", **{"input": "hi", **kwargs})
        assert raw.headers["x-route"] == "smart"
        return raw.headers["x-target"]

    assert target() == "deployment:small"
    assert target(max_output_tokens=20) == "deployment:small"
    assert target(max_output_tokens=200) == "deployment:big"
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    assert target(tools=tools) == "deployment:big"
    assert target(text={"format": {"type": "json_object"}}) == "deployment:big"
    # The instructions are part of the prompt.
    assert target(instructions="word " * 200) == "deployment:big"


def test_fallback_route_moves_on_and_external_endpoints_get_their_responses_path(
    start_gateway, settings, engine, second_engine, org, owner, inference_key
):
    settings.GATEWAY_EXTERNAL_ALLOW = ["127.0.0.1"]
    gw = start_gateway(external_allow=("127.0.0.1",))
    fake, server = engine
    partner, partner_server = second_engine
    fake.script.append(503)
    make_deployment(org, "tiny", [server.port])
    external_endpoint_create(
        org=org,
        actor=owner,
        name="partner",
        base_url=partner_server.url + "/v1",
        model="partner-large",
        api_key="sk-partner-secret-123",
    )
    route_create(
        org=org,
        actor=owner,
        name="sturdy",
        policy="fallback",
        config={"targets": ["deployment:tiny", "external:partner"]},
    )
    gw.refresh()
    raw = gw.client(inference_key).responses.with_raw_response.create(model="sturdy", input="hi")
    assert raw.headers["x-target"] == "external:partner"
    assert raw.parse().usage.output_tokens == 5
    assert partner.requests[-1]["model"] == "partner-large"
    assert partner.requests[-1]["store"] is False
    assert partner.headers[-1]["authorization"] == "Bearer sk-partner-secret-123"
    gw.wait_for_records(1)
    record = UsageRecord.objects.get()
    assert (record.target, record.completion_tokens) == ("external:partner", 5)


def test_budget_reservation_and_limits_use_max_output_tokens_not_max_tokens():
    parsed = bodies.request_parse(
        bodies.RESPONSES,
        b'{"model": "m", "input": "hello", "max_output_tokens": 7, "max_tokens": 9000}',
    )
    assert parsed.max_tokens == 7
    assert parsed.features.max_tokens == 7
    unbounded = bodies.request_parse(bodies.RESPONSES, b'{"model": "m", "input": "hello"}')
    assert unbounded.max_tokens is None  # the deployment's max_model_len bounds it instead


def test_the_prompt_is_the_instructions_and_the_input_items_text():
    items = [
        {"role": "user", "content": "What is two plus two?"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "4"}],
        },
        {"role": "user", "content": [{"type": "input_text", "text": "And three?"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ]
    body = {"model": "m", "instructions": "You are terse.", "input": items}
    parsed = bodies.request_parse(bodies.RESPONSES, json.dumps(body).encode())
    assert "You are terse." in parsed.features.prompt_text
    assert "And three?" in parsed.features.prompt_text
    assert "42" in parsed.features.prompt_text
    assert parsed.prompt_tokens_estimate > 4 * len(items)
    # The auto router reads the text, one message a line, without role names.
    assert scoring_text(parsed) == "You are terse.\nWhat is two plus two?\n4\nAnd three?"
    plain = bodies.request_parse(bodies.RESPONSES, b'{"model": "m", "input": "Hello there"}')
    assert scoring_text(plain) == "Hello there"


def test_stream_filter_forwards_events_as_they_complete_and_finds_the_final_usage():
    usage = {"input_tokens": 5, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 1}}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"usage": None}},
        {"type": "response.output_text.delta", "delta": 'a ".delta" "usage":{} x.delta'},
        {"type": "response.output_text.delta", "delta": "b"},
        {"type": "response.completed", "response": {"usage": usage}},
    ]
    wire = b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode()
        for e in events
    )
    stream = ResponsesStreamFilter()
    out = b""
    for i in range(0, len(wire), 7):  # arbitrary chunk boundaries
        forwarded = stream.feed(wire[i : i + 7])
        assert forwarded == b"" or forwarded.endswith(b"\n\n")
        out += forwarded
    out += stream.finish()
    assert out == wire  # unchanged
    assert stream.delta_events == 2
    assert stream.usage() == usage
    cut = ResponsesStreamFilter()
    cut.feed(wire[: wire.index(b"event: response.completed")])
    assert cut.usage() is None
    assert cut.completion_estimate() == 2


def test_parse_errors_are_gateway_errors_naming_the_param():
    with pytest.raises(GatewayError) as caught:
        bodies.request_parse(bodies.RESPONSES, b'{"model": "m", "input": "x", "background": 1}')
    assert caught.value.param == "background"
