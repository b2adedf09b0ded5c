"""Per-organisation RPM and TPM limits: the org's own (set by platform staff), else the
platform default, enforced by the same limiter as every other limit (in-process and Redis)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import httpx
import pytest

from console.models import Organisation
from console.services.keys import api_key_create
from console.snapshot import snapshot_bump
from inference.gateway.admission import admission_build
from inference.gateway.bodies import CHAT, request_parse
from inference.gateway.limits import RedisLimiter
from inference.gateway.snapshot import KeyEntry, OrgEntry, empty_snapshot
from tests.factories import MembershipFactory, OrgFactory
from tests.gateway.conftest import TEST_CONFIG, make_deployment

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def chat(url: str, secret: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def inside_one_window() -> None:
    """Rate windows are calendar minutes: start early enough in one that a test stays in it."""
    if time.time() % 60 > 50:
        threading.Event().wait(61 - time.time() % 60)


def _clear_counters(url: str, org_ids: list[int]) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for org_id in org_ids:
        for kind in ("rpm", "tpm", "spend"):
            for key in client.scan_iter(f"gw:{kind}:org:{org_id}:*"):
                client.delete(key)
    client.close()


@pytest.fixture(params=["local", "redis"])
def use_limiter(request) -> Iterator[Callable[..., None]]:  # type: ignore[no-untyped-def]
    """Gives a running gateway the limiter under test: its own in-process one, or Redis."""
    url = os.environ.get("REDIS_URL", "")
    if request.param == "redis" and not url:
        pytest.skip("REDIS_URL is not set: the Redis limiter needs a Redis server")
    org_ids: list[int] = []

    def use(gw, *orgs: Organisation) -> None:  # type: ignore[no-untyped-def]
        if request.param == "redis":
            org_ids.extend(org.pk for org in orgs)
            # Org ids restart in every test database: an earlier run's counters would count.
            _clear_counters(url, org_ids)
            gw.gateway.limiter = RedisLimiter(url, timeout_s=10)  # not a slow Redis here

    yield use
    if org_ids:
        _clear_counters(url, org_ids)


def test_org_limit_of_n_admits_n_requests_then_429_with_retry_after(
    start_gateway, engine, org, owner, use_limiter
):
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    Organisation.objects.filter(pk=org.pk).update(rpm_limit=3)
    # Two keys of the org share its limit; neither has one of its own.
    secrets = [
        api_key_create(org=org, actor=owner, name=f"k{i}", scopes=["inference"]).secret
        for i in range(2)
    ]
    gw = start_gateway(org_rpm_limit=100)  # the org's own limit wins over the default
    use_limiter(gw, org)
    gw.refresh()
    inside_one_window()
    statuses = [chat(gw.url, secrets[i % 2]).status_code for i in range(3)]
    assert statuses == [200, 200, 200]
    refused = chat(gw.url, secrets[1])
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "this org's limit of 3 requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 61
    assert len(fake.requests) == 3


def test_org_without_a_limit_of_its_own_uses_the_global_setting(
    start_gateway, engine, org, owner, use_limiter
):
    _, server = engine
    make_deployment(org, "tiny", [server.port])
    secret = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).secret
    # Another org whose limit is 0: no limit, whatever the default.
    free = OrgFactory(name="Free", slug="free", rpm_limit=0)
    free_owner = MembershipFactory(org=free, role="owner").user
    make_deployment(free, "tiny", [server.port])
    free_secret = api_key_create(org=free, actor=free_owner, name="k", scopes=["inference"]).secret
    gw = start_gateway(org_rpm_limit=2)
    use_limiter(gw, org, free)
    gw.refresh()
    inside_one_window()
    assert [chat(gw.url, secret).status_code for _ in range(3)] == [200, 200, 429]
    assert "this org's limit of 2 requests per minute" in chat(gw.url, secret).text
    assert [chat(gw.url, free_secret).status_code for _ in range(4)] == [200] * 4


def test_changed_org_limit_reaches_a_running_gateway(start_gateway, engine, org, owner):
    _, server = engine
    make_deployment(org, "tiny", [server.port])
    secret = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).secret
    gw = start_gateway()
    gw.refresh()
    inside_one_window()
    assert chat(gw.url, secret).status_code == 200
    Organisation.objects.filter(pk=org.pk).update(rpm_limit=1)
    snapshot_bump()
    changed_at = time.monotonic()
    while chat(gw.url, secret).status_code != 429:
        assert time.monotonic() - changed_at < 2.0, "the new limit did not arrive in 2 s"


def _entries(org_rpm: int | None, org_tpm: int | None) -> tuple[KeyEntry, OrgEntry]:
    key = KeyEntry(
        id=uuid.uuid4(),
        org_id=7,
        prefix="sk-test",
        scopes=frozenset({"inference"}),
        allowed_models=frozenset(),
        rpm_limit=None,
        tpm_limit=None,
        budget_micros=None,
        expires_at=None,
        revoked=False,
    )
    org = OrgEntry(7, "acme", None, None, "", 0, rpm_limit=org_rpm, tpm_limit=org_tpm)
    return key, org


@pytest.mark.parametrize(
    ("own", "default", "expected"),
    [
        ((None, None), (0, 0), (None, None)),
        ((None, None), (50, 5000), (50, 5000)),
        ((20, 2000), (50, 5000), (20, 2000)),
        ((0, 0), (50, 5000), (None, None)),
        ((20, None), (0, 5000), (20, 5000)),
    ],
)
def test_admission_takes_the_orgs_own_rpm_and_tpm_else_the_default(own, default, expected):
    key, org = _entries(*own)
    config = replace(TEST_CONFIG, org_rpm_limit=default[0], org_tpm_limit=default[1])
    parsed = request_parse(CHAT, json.dumps(BODY).encode())
    adm = admission_build(empty_snapshot(), config, key, org, parsed, 0)
    # Counter keys read gw:<rpm|tpm>:org:<id>:<window>.
    limits = {c.key.split(":")[1]: c.limit for c in adm.rates if c.key.split(":")[2] == "org"}
    assert (limits.get("rpm"), limits.get("tpm")) == expected
    assert any(":org:" in k for k in adm.token_keys) == (expected[1] is not None)


def test_budget_counters_are_named_by_the_utc_month_of_the_request() -> None:
    from datetime import UTC, datetime

    from inference.gateway import admission

    org = OrgEntry(
        id=7, slug="o", suspended_reason=None, budget_micros=1_000, budget_message="",
        month_spend_micros=0, rpm_limit=0, tpm_limit=0,
    )  # fmt: skip
    key = KeyEntry(
        id=uuid.uuid4(), org_id=7, prefix="sk-x", scopes=frozenset({"inference"}),
        allowed_models=frozenset(), rpm_limit=None, tpm_limit=None, budget_micros=None,
        expires_at=None, revoked=False,
    )  # fmt: skip
    parsed = request_parse(CHAT, json.dumps(BODY).encode())
    last_minute = datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC).timestamp()
    months = []
    for now in (last_minute, last_minute + 29, last_minute + 31, last_minute - 86_400 * 40):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(admission.time, "time", lambda now=now: now)
            adm = admission_build(empty_snapshot(), TEST_CONFIG, key, org, parsed, 10)
        months.append(adm.budgets[0].key.rsplit(":", 1)[1])
    assert months == ["202611", "202611", "202612", "202610"]
