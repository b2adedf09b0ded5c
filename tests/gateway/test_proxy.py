"""The official openai client against the gateway in front of a fake engine: answers, streams,
headers and metering."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from billing.models import UsageRecord
from inference.gateway.sse import ResponsesStreamFilter, StreamFilter
from inference.models import Deployment
from inference.services.routes import external_endpoint_create, route_create
from tests.gateway.conftest import make_deployment


@pytest.fixture
def served(gw, engine, org, inference_key):  # type: ignore[no-untyped-def]
    fake, server = engine
    deployment = make_deployment(org, "tiny", [server.port], served="tiny-chat")
    gw.refresh()
    return fake, deployment


def test_chat_completion_passes_through_with_headers_and_is_metered(gw, served, inference_key):
    fake, deployment = served
    client = gw.client(inference_key)
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=[{"role": "user", "content": "say hello to me"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello from the fake engine"
    assert completion.usage.prompt_tokens == 4
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req-")
    assert raw.headers["x-target"] == "deployment:tiny"
    assert raw.headers["x-deployment-id"] == str(deployment.id)
    replica = deployment.replicas.get()
    assert raw.headers["x-replica-id"] == str(replica.id)
    # The engine got the body as the client sent it.
    assert fake.requests[-1]["messages"][0]["content"] == "say hello to me"

    gw.wait_for_records(1)  # the event is recorded after the response ends
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.prompt_tokens, record.completion_tokens) == (4, 5)
    assert record.deployment_id == deployment.id
    assert record.replica_id == replica.id
    assert record.model == "tiny-chat"
    assert record.status_code == 200


def test_stream_is_forwarded_and_usage_chunk_dropped_unless_asked(gw, served, inference_key):
    fake, _ = served
    client = gw.client(inference_key)
    chunks = list(
        client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("tok0 tok1")
    # The gateway asked the engine for usage on every chunk and at the end...
    options = fake.requests[-1]["stream_options"]
    assert options == {"include_usage": True, "continuous_usage_stats": True}
    # ...and the client, who asked for neither, sees no usage at all.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)

    gw.wait_for_records(1)  # the event is recorded after the response ends
    record = UsageRecord.objects.get()
    assert (record.prompt_tokens, record.completion_tokens) == (3, 8)
    assert record.ttft_ms is not None


def test_stream_with_include_usage_keeps_the_final_usage_chunk(gw, served, inference_key):
    client = gw.client(inference_key)
    chunks = list(
        client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize(
    ("code", "status", "error_code"),
    [
        (500, 500, "upstream_error"),
        (400, 400, "upstream_rejected"),
        ("boom", 500, "upstream_error"),
    ],
)
def test_an_error_the_engine_sends_mid_stream_is_recorded_as_that_error(
    gw, served, inference_key, code, status, error_code
):
    """vLLM ends a stream whose generation failed with an error event: the client raises on it,
    and the request log says the request failed (not 200), with the tokens generated before."""
    fake, _ = served
    fake.stream_tokens = 3
    fake.stream_error = {
        "error": {"message": "generation failed", "type": "InternalServerError", "code": code}
    }
    stream = gw.client(inference_key).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError, match="generation failed"):
        got.extend(stream)
    assert [c.choices[0].delta.content for c in got] == ["tok0 ", "tok1 ", "tok2 "]
    gw.wait_for_records(1)
    record = UsageRecord.objects.get()
    assert (record.status_code, record.error_code) == (status, error_code)
    assert (record.prompt_tokens, record.completion_tokens) == (3, 3)


def test_stream_filter_notes_the_first_error_event_only_where_it_is_an_event():
    quiet = StreamFilter(keep_final_usage=False, keep_inline_usage=False)
    # An error's words inside an answer are escaped JSON, not an error event.
    text = {"choices": [{"index": 0, "delta": {"content": '{"error": {"code": 400}}'}}]}
    assert quiet.feed(b"data: " + json.dumps(text).encode() + b"\n\n")
    assert quiet.error_status is None
    failing = StreamFilter(keep_final_usage=False, keep_inline_usage=False)
    failing.feed(b'data:{"error":{"message":"m","code":503}}\n\n')
    failing.feed(b'data: {"error": {"message": "m", "code": 400}}\n\n')
    assert failing.error_status == 503
    responses = ResponsesStreamFilter()
    responses.feed(b'event: response.created\ndata: {"type": "response.created"}\n\n')
    assert responses.error_status is None
    responses.feed(b'event: response.failed\ndata: {"type": "response.failed"}\n\n')
    assert responses.error_status == 500


def test_a_stream_with_crlf_line_ends_is_forwarded_as_it_comes_and_metered(
    start_gateway, settings, engine, org, owner, inference_key
):
    """A server built on sse-starlette (an external endpoint, say) ends its lines with CRLF:
    its events still reach the client one by one, without the usage chunk the client did not
    ask for, and the request is metered on the server's usage."""
    settings.GATEWAY_EXTERNAL_ALLOW = ["127.0.0.1"]
    gw = start_gateway(external_allow=("127.0.0.1",))
    fake, server = engine
    fake.line_end = b"\r\n"
    fake.stream_delay_s = 0.2
    external_endpoint_create(
        org=org, actor=owner, name="crlf", base_url=server.url + "/v1", model="m", api_key=""
    )
    route_create(
        org=org, actor=owner, name="outside", policy="single", config={"target": "external:crlf"}
    )
    gw.refresh()
    stream = gw.client(inference_key).chat.completions.create(
        model="outside", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    first = next(iter(stream))
    assert first.choices[0].delta.content == "tok0 "
    # The first event arrived while the engine was still generating (0.2 s a token).
    assert fake.generation_tokens_total < fake.stream_tokens
    rest = list(stream)
    assert len(rest) == fake.stream_tokens - 1
    assert all(c.choices and c.usage is None for c in rest)
    gw.wait_for_records(1)
    record = UsageRecord.objects.get()
    assert (record.prompt_tokens, record.completion_tokens) == (3, fake.stream_tokens)


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r", b"\n"])
def test_stream_filter_reads_any_line_end_cut_anywhere(line_end):
    events = [
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":2}}',
        b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}',
        b"data: [DONE]",
    ]
    wire = b"".join(event + line_end * 2 for event in events)
    for cut in range(1, len(wire)):
        stream = StreamFilter(keep_final_usage=True, keep_inline_usage=False)
        out = stream.feed(wire[:cut]) + stream.feed(wire[cut:]) + stream.finish()
        assert out == (
            b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
            + b"".join(event + b"\n\n" for event in events[1:])
        )
        assert stream.usage() == {"prompt_tokens": 2, "completion_tokens": 1}


def test_completions_and_embeddings(gw, served, org, engine, inference_key):
    _, server = engine
    make_deployment(org, "embedder", [server.port], runner="pooling")
    gw.refresh()
    client = gw.client(inference_key)
    text = client.completions.create(model="tiny-chat", prompt="once upon", max_tokens=2)
    assert text.choices[0].text == "hello from"
    vectors = client.embeddings.create(model="embedder", input=["one", "two words"])
    assert len(vectors.data) == 2
    assert vectors.usage.prompt_tokens == 3
    gw.wait_for_records(2)  # events are recorded after each response ends
    assert UsageRecord.objects.count() == 2


def test_log_probabilities_are_asked_for_as_each_api_defines_them(gw, served, inference_key):
    fake, _ = served
    client = gw.client(inference_key)
    client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=3,
    )
    client.completions.create(model="tiny-chat", prompt="once", max_tokens=2, logprobs=3)
    assert [(b["logprobs"], b.get("top_logprobs")) for b in fake.requests] == [
        (True, 3),
        (3, None),
    ]
    with pytest.raises(openai.BadRequestError, match="'logprobs' must be a whole number"):
        client.completions.create(model="tiny-chat", prompt="once", logprobs=True)
    assert len(fake.requests) == 2


def test_models_lists_what_the_key_may_use(gw, served, org, owner):
    from console.services.keys import api_key_create

    limited = api_key_create(
        org=org, actor=owner, name="l", scopes=["inference"], allowed_models=["nothing"]
    ).secret
    any_model = api_key_create(org=org, actor=owner, name="a", scopes=["inference"]).secret
    gw.refresh()
    assert [m.id for m in gw.client(any_model).models.list()] == ["tiny-chat"]
    assert list(gw.client(limited).models.list()) == []


def test_a_model_can_be_retrieved_by_name_as_the_list_shows_it(gw, served, org, owner):
    from console.services.keys import api_key_create
    from inference.services.routes import route_create
    from tests.factories import OrgFactory

    make_deployment(org, "llama", [], served="meta-llama/Llama-3.2-1B")
    make_deployment(OrgFactory(slug="other"), "theirs", [], served="their-model")
    route = route_create(
        org=org, actor=owner, name="chat", policy="single", config={"target": "deployment:tiny"}
    )
    limited = api_key_create(
        org=org, actor=owner, name="l", scopes=["inference"], allowed_models=["tiny-chat"]
    ).secret
    any_model = api_key_create(org=org, actor=owner, name="a", scopes=["inference"]).secret
    gw.refresh()
    client = gw.client(any_model)
    listed = {m.id: m for m in client.models.list()}
    assert sorted(listed) == ["chat", "meta-llama/Llama-3.2-1B", "tiny-chat"]
    # The client percent-encodes the slash; the name still resolves whole.
    model = client.models.retrieve("meta-llama/Llama-3.2-1B")
    assert model == listed["meta-llama/Llama-3.2-1B"]
    assert (model.object, model.owned_by) == ("model", org.slug)
    llama = Deployment.objects.get(name="llama")
    assert model.created == int(llama.created_at.timestamp())
    assert client.models.retrieve("tiny-chat").id == "tiny-chat"
    assert client.models.retrieve("chat").created == int(route.created_at.timestamp())

    # Another org's model, a model the key may not use and a missing one are all not found.
    for key, name in [
        (any_model, "their-model"),
        (limited, "meta-llama/Llama-3.2-1B"),
        (any_model, "nope"),
    ]:
        with pytest.raises(openai.NotFoundError) as caught:
            gw.client(key).models.retrieve(name)
        assert caught.value.code == "model_not_found"
        assert name in caught.value.message
    assert gw.client(limited).models.retrieve("tiny-chat").id == "tiny-chat"
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-wrong").models.retrieve("tiny-chat")
    assert httpx.delete(gw.url + "/v1/models/tiny-chat").status_code == 405


def test_models_lists_only_what_a_request_can_be_served_by(gw, served, org, engine, owner):
    from console.services.keys import api_key_create

    _, server = engine
    make_deployment(org, "sleepy", [], min_replicas=0)  # scaled to zero: a request wakes it
    make_deployment(org, "paused", [server.port], paused=True)
    make_deployment(org, "broken", [], state="failed", state_reason="Not ready within 900 s.")
    # Failed, yet a replica still serves: requests to it are answered.
    make_deployment(org, "limping", [server.port], state="failed", state_reason="Out of memory.")
    secret = api_key_create(org=org, actor=owner, name="a", scopes=["inference"]).secret
    gw.refresh()
    client = gw.client(secret)
    assert [m.id for m in client.models.list()] == ["limping", "sleepy", "tiny-chat"]
    message = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="limping", messages=message).choices
    assert client.models.retrieve("sleepy").id == "sleepy"

    # Retrieving one that is not listed answers as a request for it would, saying why.
    for name, code, reason in [
        ("broken", "deployment_failed", "Not ready within 900 s."),
        ("paused", "no_capacity", "paused"),
    ]:
        with pytest.raises(openai.InternalServerError) as retrieved:
            client.models.retrieve(name)
        with pytest.raises(openai.InternalServerError) as requested:
            client.chat.completions.create(model=name, messages=message)
        for caught in (retrieved, requested):
            assert caught.value.status_code == 503
            assert caught.value.code == code
            assert reason in caught.value.message


def test_metrics_count_requests_by_route_and_status(gw, served, inference_key):
    gw.client(inference_key).chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "x"}]
    )
    text = httpx.get(gw.url + "/metrics").text
    assert 'gateway_requests_total{route="tiny-chat",status="200"} 1' in text
    assert "gateway_request_duration_seconds_bucket" in text
    assert 'gateway_tokens_total{route="tiny-chat",kind="completion"} 5' in text


def test_metrics_need_the_token_when_one_is_set(start_gateway):
    gw = start_gateway(metrics_token="scrape-me")
    assert httpx.get(gw.url + "/metrics").status_code == 401
    for wrong in ("Bearer scrape-m", "Bearer scrape-me-too", "bearer scrape-me"):
        assert httpx.get(gw.url + "/metrics", headers={"Authorization": wrong}).status_code == 401
    response = httpx.get(gw.url + "/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert response.status_code == 200
    assert "gateway_requests_total" in response.text


@pytest.fixture
def odd_upstream(gw, org):  # type: ignore[no-untyped-def]
    """A deployment named "odd" whose server answers every request with the given chunks (one
    JSON answer, or a stream's events) and content type: an upstream counting nonsense."""
    from tests.gateway.servers import ThreadServer

    servers = []

    def start(chunks: list[bytes], content_type: bytes) -> None:
        async def odd_engine(scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-type", content_type)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        server = ThreadServer(odd_engine, lifespan="off").start()
        servers.append(server)
        make_deployment(org, "odd", [server.port])
        gw.refresh()

    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -500, "completion_tokens": 7},
        {"prompt_tokens": 12, "completion_tokens": -7},
        {"prompt_tokens": True, "completion_tokens": 7},
        {"prompt_tokens": 10**15, "completion_tokens": 7},
        {"prompt_tokens": "12", "completion_tokens": 7},
    ],
)
def test_usage_an_upstream_cannot_have_counted_is_not_believed(
    gw, odd_upstream, inference_key, usage
):
    """An upstream (an external endpoint is the tenant's own server) that reports impossible
    counts: the answer is passed on, and the request is metered on the gateway's estimate
    instead of being lost, or priced negative."""
    message = {"role": "assistant", "content": "hi"}
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "odd",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }
    odd_upstream([json.dumps(answer).encode()], b"application/json")
    reply = gw.client(inference_key).chat.completions.with_raw_response.create(
        model="odd", messages=[{"role": "user", "content": "Say hi"}], max_tokens=16
    )
    assert reply.parse().choices[0].message.content == "hi"
    gw.wait_for_records(1)
    record = UsageRecord.objects.get(request_id=reply.headers["x-request-id"])
    assert 0 < record.prompt_tokens < 1000  # the gateway's estimate of a short prompt
    assert 0 <= record.completion_tokens <= 16
    assert record.cost_micros >= 0


def test_a_stream_whose_usage_cannot_be_believed_is_metered_per_event(
    gw, odd_upstream, inference_key
):
    def event(data: dict) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "odd"}
    words = [
        event({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]})
        for w in ("one ", "two ", "three")
    ]
    bogus = event({**base, "choices": [], "usage": {"prompt_tokens": -9, "completion_tokens": 3}})
    odd_upstream([*words, bogus, b"data: [DONE]\n\n"], b"text/event-stream")
    stream = gw.client(inference_key).chat.completions.create(
        model="odd", messages=[{"role": "user", "content": "Count"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "one two three"
    gw.wait_for_records(1)
    record = UsageRecord.objects.get()
    assert record.prompt_tokens > 0 and record.completion_tokens == 3
    assert record.cost_micros >= 0
