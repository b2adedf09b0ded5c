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
from billing.pricing import cost_micros
from console.models import ApiKey
from console.services.keys import api_key_create
from inference.gateway.bodies import CHAT, request_parse
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
    return RedisLimiter(url)


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
