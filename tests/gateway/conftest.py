"""Fixtures for gateway tests: a fake engine and a real gateway, both served by uvicorn on
127.0.0.1 in background threads, over a database the gateway's threads can read."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import openai
import pytest
from django.apps import apps as django_apps

from console.models import Organisation, User
from console.services.keys import api_key_create
from inference.gateway.app import Gateway
from inference.gateway.config import GatewayConfig
from inference.gateway.limits import LocalLimiter
from inference.models import Deployment, Replica
from tests.gateway.fake_engine import FakeEngine
from tests.gateway.servers import ThreadServer

TEST_CONFIG = GatewayConfig(
    snapshot_poll_s=0.05,
    snapshot_ttl_s=30,
    meter_flush_s=0.05,
    # In-process writes: SQLite's test database lives in this process's memory (the writer
    # process has its own tests, on PostgreSQL).
    meter_process=False,
    cold_start_wait_s=2,
    eject_s=30,
    access_log=False,
    # Tests that publish in-flight counts turn it on with their own RUN_DIR.
    inflight_publish_s=0,
)


@pytest.fixture
def engine() -> Iterator[tuple[FakeEngine, ThreadServer]]:
    fake = FakeEngine()
    server = ThreadServer(fake, lifespan="off").start()
    yield fake, server
    server.stop()


# Engine arguments of a deployment that serves requests offering tools.
TOOLS_ARGS = {"tool_call_parser": "hermes", "enable_auto_tool_choice": True}


def make_deployment(
    org: Organisation,
    name: str,
    ports: list[int],
    *,
    served: str | None = None,
    runner: str = "generate",
    **extra: Any,
) -> Deployment:
    deployment = Deployment.objects.create(
        org=org,
        name=name,
        served_model_name=served or name,
        source="local",
        model="/models/" + name,
        runner=runner,
        **extra,
    )
    for port in ports:
        Replica.objects.create(deployment=deployment, host="127.0.0.1", port=port, state="ready")
    return deployment


@pytest.fixture
def inference_key(org: Organisation, owner: User) -> str:
    return api_key_create(org=org, actor=owner, name="app", scopes=["inference"]).secret


class RunningGateway:
    def __init__(self, gateway: Gateway, server: ThreadServer) -> None:
        self.gateway = gateway
        self.server = server
        self.url = server.url

    def refresh(self) -> None:
        """Rebuild the snapshot now and wait until the gateway serves it."""

        async def rebuild() -> None:
            await asyncio.to_thread(self.gateway.poller.refresh, force=True)

        self.server.call(rebuild())

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kwargs)

    def flush(self) -> int:
        assert self.gateway.meter is not None
        return self.gateway.meter.flush()

    def wait_for_records(self, count: int) -> None:
        """Wait until ``count`` usage events were recorded, then write them."""
        assert self.gateway.meter is not None
        assert self.gateway.meter.wait_recorded(count, timeout=30)
        self.flush()


def migration_rows() -> None:
    """Put back the rows data migrations create (billing's plans and fallback price), which a
    transactional test's flush removes. Idempotent."""
    billing_defaults = importlib.import_module(
        "billing.migrations.0002_default_plans_and_fallback_price"
    )
    billing_defaults.create(django_apps, None)


@pytest.fixture
def committed_db(transactional_db: None) -> None:
    """A database whose writes commit for real, so that other threads and processes see them."""
    migration_rows()


@pytest.fixture
def start_gateway(transactional_db: None) -> Iterator[Callable[..., RunningGateway]]:
    """Gateways read the database from their own threads, so their tests commit for real."""
    migration_rows()
    running: list[RunningGateway] = []

    def start(**overrides: Any) -> RunningGateway:
        gateway = Gateway(replace(TEST_CONFIG, **overrides), limiter=LocalLimiter())
        server = ThreadServer(gateway).start()
        item = RunningGateway(gateway, server)
        running.append(item)
        return item

    yield start
    for item in running:
        item.server.stop()


@pytest.fixture
def gw(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway()
