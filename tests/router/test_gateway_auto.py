"""The auto policy in a real gateway: two in-process engines (cheap and strong), the official
openai client, the usage record's router fields and the decision headers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from billing.models import UsageRecord
from inference.gateway.router import AutoRouter
from inference.services.routes import route_create
from tests.billing.factories import price
from tests.gateway.conftest import RunningGateway, make_deployment
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.servers import ThreadServer

EASY = "What is 2 + 2?"
HARD = (
    "Let f be a continuous function on [0, 1] with f(0) = f(1). Prove that for every positive "
    "integer n there is an x in [0, 1 - 1/n] with f(x) = f(x + 1/n), and show the claim fails "
    "for every non-integer reciprocal step."
)


@pytest.fixture
def engines() -> Iterator[tuple[FakeEngine, FakeEngine, ThreadServer, ThreadServer]]:
    cheap, strong = FakeEngine("cheap"), FakeEngine("strong")
    servers = [ThreadServer(e, lifespan="off").start() for e in (cheap, strong)]
    yield cheap, strong, servers[0], servers[1]
    for server in servers:
        server.stop()


@pytest.fixture
def auto_setup(org, owner, engines):  # type: ignore[no-untyped-def]
    cheap, strong, s_cheap, s_strong = engines
    make_deployment(org, "cheap", [s_cheap.port])
    make_deployment(org, "strong", [s_strong.port])
    price(model="cheap", input_micros_per_million=100_000, output_micros_per_million=200_000)
    price(model="strong", input_micros_per_million=10_000_000, output_micros_per_million=30_000_000)

    def route(threshold: float, name: str = "smart") -> None:
        route_create(
            org=org,
            actor=owner,
            name=name,
            policy="auto",
            config={"targets": ["deployment:cheap", "deployment:strong"], "threshold": threshold},
        )

    return cheap, strong, route


def _scores() -> tuple[float, float]:
    from inference.scorer.scorer import Scorer

    scorer = Scorer.load(cache_size=0)
    return scorer.score(EASY), scorer.score(HARD)


def test_the_gateway_sends_each_prompt_to_the_cheapest_target_whose_score_clears_the_threshold(
    start_gateway: Callable[..., RunningGateway], inference_key: str, auto_setup
):  # type: ignore[no-untyped-def]
    cheap, strong, make_route = auto_setup
    easy, hard = _scores()
    assert easy != hard
    high, low = (EASY, HARD) if easy > hard else (HARD, EASY)
    make_route((easy + hard) / 2)
    gw = start_gateway()
    client = gw.client(inference_key)

    answers = {}
    for prompt in (high, low):
        raw = client.chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": prompt}], max_tokens=5
        )
        answers[prompt] = raw
    assert answers[high].headers["x-target"] == "deployment:cheap"
    assert answers[low].headers["x-target"] == "deployment:strong"
    assert answers[high].headers["x-route-choice"] == "deployment:cheap"
    assert float(answers[high].headers["x-route-score"]) == pytest.approx(max(easy, hard), abs=1e-4)
    assert float(answers[low].headers["x-route-score"]) == pytest.approx(min(easy, hard), abs=1e-4)
    assert len(cheap.requests) == 1 and len(strong.requests) == 1

    gw.wait_for_records(2)
    by_choice = {r.router_choice: r for r in UsageRecord.objects.filter(route="smart")}
    on_cheap, on_strong = by_choice["deployment:cheap"], by_choice["deployment:strong"]
    assert on_cheap.target == "deployment:cheap"
    assert on_cheap.router_score == pytest.approx(max(easy, hard), abs=1e-6)
    # The baseline prices the same tokens at the strong model's price.
    expected = (on_cheap.prompt_tokens * 10_000_000 + on_cheap.completion_tokens * 30_000_000) // (
        1_000_000
    )
    assert on_cheap.baseline_cost_micros == expected > on_cheap.cost_micros
    # Served by the strongest target: no separate baseline (it is the cost itself).
    assert on_strong.baseline_cost_micros is None
    assert on_strong.router_score == pytest.approx(min(easy, hard), abs=1e-6)

    # /v1/completions scores the prompt too.
    raw = client.completions.with_raw_response.create(model="smart", prompt=high, max_tokens=3)
    assert raw.headers["x-target"] == "deployment:cheap"


class _RecordingScorer:
    def __init__(self, value: float) -> None:
        self.value = value
        self.prompts: list[str] = []

    def score(self, prompt: str) -> float:
        self.prompts.append(prompt)
        return self.value


def test_a_failing_cheap_target_falls_back_to_the_stronger_one(
    start_gateway: Callable[..., RunningGateway], inference_key: str, auto_setup
):  # type: ignore[no-untyped-def]
    cheap, _strong, make_route = auto_setup
    make_route(0.5)
    scorer = _RecordingScorer(0.9)
    gw = start_gateway()
    gw.gateway.router = AutoRouter(load=lambda: scorer)
    cheap.script.append(503)
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(
        model="smart",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    assert raw.headers["x-target"] == "deployment:strong"
    assert raw.headers["x-route-choice"] == "deployment:cheap"
    assert "Be brief." in scorer.prompts[0] and "Hi" in scorer.prompts[0]
    gw.wait_for_records(1)
    record = UsageRecord.objects.get(route="smart")
    assert (record.router_choice, record.target) == ("deployment:cheap", "deployment:strong")


def test_a_scorer_that_fails_sends_to_the_strongest_target_and_says_why(
    start_gateway: Callable[..., RunningGateway], inference_key: str, auto_setup
):  # type: ignore[no-untyped-def]
    cheap, _strong, make_route = auto_setup
    make_route(0.0)  # any score would go cheap

    def broken() -> _RecordingScorer:
        raise RuntimeError("weights missing")

    gw = start_gateway()
    gw.gateway.router = AutoRouter(load=broken)
    raw = gw.client(inference_key).chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.headers["x-target"] == "deployment:strong"
    assert raw.headers["x-route-score"] == "none"
    assert cheap.requests == []
    gw.wait_for_records(1)
    record = UsageRecord.objects.get(route="smart")
    assert record.router_score is None
    assert record.router_choice == "deployment:strong (scorer failed: weights missing)"


class _GatedScorer:
    """Blocks in ``score`` until released: a scorer as slow as a test wants."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def score(self, prompt: str) -> float:
        self.entered.set()
        assert self.release.wait(timeout=30)
        return 0.9


def test_a_slow_scorer_does_not_hold_up_requests_to_other_routes(
    start_gateway: Callable[..., RunningGateway], inference_key: str, auto_setup
):  # type: ignore[no-untyped-def]
    cheap, _strong, make_route = auto_setup
    make_route(0.5)
    gated = _GatedScorer()
    gw = start_gateway()
    gw.gateway.router = AutoRouter(load=lambda: gated)
    client = gw.client(inference_key)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            client.chat.completions.create,
            model="smart",
            messages=[{"role": "user", "content": "Hi"}],
        )
        assert gated.entered.wait(timeout=30)  # the auto request is being scored
        # Meanwhile a request for another model is served in full, over the same event loop.
        other = client.chat.completions.create(
            model="strong", messages=[{"role": "user", "content": "Hello"}]
        )
        assert other.choices[0].message.content
        assert not slow.done()  # ordering: the scored request is still waiting on its score
        gated.release.set()
        assert slow.result(timeout=30).choices[0].message.content
    assert len(cheap.requests) == 1
