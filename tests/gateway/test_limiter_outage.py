"""When Redis cannot count: requests under limits or budgets get a quick 503 that changes nothing
(or, where the operator chose so, go through uncounted); requests without any limit never touch
Redis and are served as usual."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest
from django.core.exceptions import ImproperlyConfigured

from billing.models import BillingAccount, Plan, UsageRecord
from console.models import ApiKey
from console.services.keys import api_key_create
from inference.gateway.accounting import _settle
from inference.gateway.config import GatewayConfig
from inference.gateway.limits import Admission, Counter, RedisLimiter
from tests.gateway.conftest import make_deployment

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "one two three"}]}
# Nothing listens on port 1: every connection is refused at once.
REFUSING = "redis://127.0.0.1:1/0"


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A port that completes TCP handshakes (the kernel's backlog) but never answers a byte:
    a Redis that hangs rather than refuses."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        listener.close()


def _limiter_errors(gw, step: str) -> str:  # type: ignore[no-untyped-def]
    text = httpx.get(gw.url + "/metrics").text
    line = f'gateway_limiter_errors_total{{step="{step}"}}'
    values = [row.split()[-1] for row in text.splitlines() if row.startswith(line)]
    return values[0] if values else "0"


@pytest.mark.parametrize("store", ["refusing", "silent"])
def test_limited_requests_get_a_503_that_changes_nothing_and_unlimited_ones_are_served(
    start_gateway, engine, org, owner, store, silent_redis
):
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    # Pay as you go without a budget: no organisation cap (the Free plan's credit is one).
    BillingAccount.objects.create(org=org, plan=Plan.objects.get(code="payg"))
    limited = api_key_create(
        org=org, actor=owner, name="limited", scopes=["inference"], rpm_limit=100
    ).secret
    budgeted = api_key_create(org=org, actor=owner, name="budgeted", scopes=["inference"])
    ApiKey.objects.filter(pk=budgeted.key.pk).update(monthly_budget_micros=5_000_000)
    free = api_key_create(org=org, actor=owner, name="free", scopes=["inference"]).secret
    gw = start_gateway()
    url = REFUSING if store == "refusing" else silent_redis
    gw.gateway.limiter = RedisLimiter(url, timeout_s=0.2)
    gw.refresh()

    for secret in (limited, budgeted.secret):
        # The client's own timeout is far above the limiter's: the gateway must answer first.
        with pytest.raises(openai.InternalServerError) as caught:
            gw.client(secret, timeout=15).chat.completions.create(**CHAT)
        response = caught.value.response
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limits_unavailable"
        assert "nothing was counted or charged" in response.json()["error"]["message"]
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-request-id"]
    assert fake.requests == []  # nothing was forwarded
    assert _limiter_errors(gw, "admit") == "2"

    answer = gw.client(free, timeout=15).chat.completions.create(**CHAT)
    assert answer.choices[0].message.content
    assert len(fake.requests) == 1
    # Recorded after the answer is sent: wait for it rather than race it.
    gw.wait_for_records(1)
    # One usage record, the served request's; the refused ones are counted as refusals only.
    assert list(UsageRecord.objects.filter(org=org).values_list("status_code", flat=True)) == [200]


def test_fail_open_serves_limited_requests_uncounted(start_gateway, engine, org, owner):
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    limited = api_key_create(
        org=org, actor=owner, name="limited", scopes=["inference"], rpm_limit=1
    ).secret
    gw = start_gateway(limits_fail_open=True)
    gw.gateway.limiter = RedisLimiter(REFUSING, timeout_s=0.2)
    gw.refresh()

    client = gw.client(limited)
    # A limit of one request a minute, and three answered: nothing could count them.
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(**CHAT)
        assert raw.status_code == 200
        # No counts were admitted, so no x-ratelimit headers claim any.
        assert "x-ratelimit-remaining-requests" not in raw.headers
    assert len(fake.requests) == 3
    assert _limiter_errors(gw, "admit") == "3"
    # Nothing was admitted, so nothing is settled either.
    assert _limiter_errors(gw, "settle") == "0"
    gw.wait_for_records(3)
    assert UsageRecord.objects.filter(org=org, status_code=200).count() == 3


def test_a_settlement_redis_cannot_take_is_counted_not_raised(start_gateway):
    gw = start_gateway()
    gw.gateway.limiter = RedisLimiter(REFUSING, timeout_s=0.2)
    adm = Admission(
        rates=[Counter("gw:tpm:key:1:0", 1000, 10, 61, "the key's tokens per minute")],
        token_keys=["gw:tpm:key:1:0"],
    )
    # The error is swallowed (the request was already answered) but shows in /metrics.
    asyncio.run(_settle(gw.gateway, adm, 25, 0))
    assert _limiter_errors(gw, "settle") == "1"


def test_the_redis_timeout_and_fail_open_settings(monkeypatch):
    monkeypatch.setenv("GATEWAY_REDIS_TIMEOUT_MS", "250")
    monkeypatch.setenv("GATEWAY_LIMITS_FAIL_OPEN", "1")
    config = GatewayConfig.from_env()
    assert (config.redis_timeout_s, config.limits_fail_open) == (0.25, True)
    monkeypatch.delenv("GATEWAY_LIMITS_FAIL_OPEN")
    assert GatewayConfig.from_env().limits_fail_open is False
    # 0 would make the client non-blocking, not unbounded: refused with the setting's name.
    monkeypatch.setenv("GATEWAY_REDIS_TIMEOUT_MS", "0")
    with pytest.raises(ImproperlyConfigured, match="GATEWAY_REDIS_TIMEOUT_MS must be at least 1"):
        GatewayConfig.from_env()
