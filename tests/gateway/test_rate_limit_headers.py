"""Answers carry OpenAI's x-ratelimit-* headers: the tightest limit, what is left, the reset."""

from __future__ import annotations

import os
import time

import httpx
import openai
import pytest

from console.models import Organisation
from console.services.keys import api_key_create
from inference.gateway.limits import LocalLimiter, RedisLimiter
from tests.gateway.conftest import make_deployment

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "one two three"}]}
NAMES = [
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


@pytest.fixture(params=["local", "redis"])
def limiter(request, org):  # type: ignore[no-untyped-def]
    if request.param == "local":
        yield LocalLimiter()
        return
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set: the Redis limiter needs a Redis server")
    import redis

    plain = redis.Redis.from_url(url)
    # Counters of an earlier test's org or key with the same ids in this same minute.
    stale = list(plain.scan_iter("gw:[rt]pm:*"))
    if stale:
        plain.delete(*stale)
    yield RedisLimiter(url, timeout_s=10)  # admission semantics here, not a slow Redis
    plain.close()


@pytest.fixture
def gw_limited(start_gateway, engine, org, limiter):  # type: ignore[no-untyped-def]
    _, server = engine
    make_deployment(org, "tiny", [server.port])
    gw = start_gateway()
    gw.gateway.limiter = limiter
    return gw


def _fresh_minute() -> None:
    """Rate windows are fixed minutes: start well inside one, so that counts do not reset."""
    left = 60 - time.time() % 60
    if left < 10:
        time.sleep(left + 0.2)


def test_each_answer_says_what_is_left_and_a_429_says_when_to_retry(gw_limited, org, owner):
    secret = api_key_create(
        org=org, actor=owner, name="limited", scopes=["inference"], rpm_limit=3, tpm_limit=1000
    ).secret
    gw_limited.refresh()
    client = gw_limited.client(secret)
    _fresh_minute()

    first = client.chat.completions.with_raw_response.create(**CHAT).headers
    assert first["x-ratelimit-limit-requests"] == "3"
    assert first["x-ratelimit-remaining-requests"] == "2"
    assert first["x-ratelimit-limit-tokens"] == "1000"
    # The prompt's estimate is counted at admission.
    assert 900 < int(first["x-ratelimit-remaining-tokens"]) < 1000
    reset = first["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and 1 <= int(reset[:-1]) <= 60
    assert first["x-ratelimit-reset-tokens"] == reset

    second = client.chat.completions.with_raw_response.create(**CHAT).headers
    assert second["x-ratelimit-remaining-requests"] == "1"
    assert int(second["x-ratelimit-remaining-tokens"]) < int(first["x-ratelimit-remaining-tokens"])
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as stream:
        assert stream.headers["x-ratelimit-remaining-requests"] == "0"
        list(stream.iter_lines())

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT)
    refused = caught.value.response.headers
    assert refused["x-ratelimit-limit-requests"] == "3"
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert refused["x-ratelimit-reset-requests"] == refused["retry-after"] + "s"
    # The limit frees up when the minute window ends, not a minute after the first request.
    assert int(refused["retry-after"]) <= int(reset[:-1])
    assert "x-ratelimit-limit-tokens" not in refused  # only the limit that refused


def test_the_tightest_of_the_keys_and_the_orgs_limits_is_shown(gw_limited, org, owner):
    Organisation.objects.filter(pk=org.pk).update(rpm_limit=2)
    secret = api_key_create(
        org=org, actor=owner, name="roomy", scopes=["inference"], rpm_limit=50
    ).secret
    gw_limited.refresh()
    _fresh_minute()
    headers = gw_limited.client(secret).chat.completions.with_raw_response.create(**CHAT).headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == (
        "2",
        "1",
    )
    assert "x-ratelimit-limit-tokens" not in headers  # no token limit anywhere


def test_no_limit_no_headers_and_browsers_may_read_them(gw_limited, org, owner):
    free = api_key_create(org=org, actor=owner, name="free", scopes=["inference"]).secret
    limited = api_key_create(
        org=org, actor=owner, name="limited", scopes=["inference"], rpm_limit=10
    ).secret
    gw_limited.refresh()
    headers = gw_limited.client(free).chat.completions.with_raw_response.create(**CHAT).headers
    assert not [name for name in NAMES if name in headers]
    response = httpx.post(
        gw_limited.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {limited}", "Origin": "https://app.example.com"},
    )
    exposed = response.headers["access-control-expose-headers"]
    assert all(name in exposed for name in NAMES)
    assert response.headers["x-ratelimit-limit-requests"] == "10"
