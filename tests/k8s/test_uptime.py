"""Dedicated replicas' uptime on Kubernetes reaches the ledger as on the local backend (no
cluster needed: the cluster's answers come from a stand-in backend)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import time_machine
from django.db.models import Sum

from billing.models import PriceUnit, UptimeRecord
from console.models import Organisation, User
from inference.conf import OrchestratorConfig
from inference.models import Deployment
from inference.orchestrator.kubernetes.backend import Observation, PodView
from inference.orchestrator.kubernetes.config import KubernetesConfig
from inference.orchestrator.kubernetes.loop import KubernetesOrchestrator
from inference.services.deployments import deployment_create, deployment_delete
from inference.services.uptime import replicas_uptime_report
from tests.billing.factories import price

T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@dataclass
class StandInBackend:
    """Answers as a cluster whose pods are ``pods`` would; changes nothing."""

    pods: list[PodView] = field(default_factory=list)
    name = "kubernetes"

    def observe(self, facts: Any) -> Observation:
        ready = [(pod.name, pod.ip, 8000) for pod in self.pods if pod.ready]
        return Observation(deployment={}, service={}, pods=list(self.pods), endpoints=ready)

    def ensure(self, facts: Any, *, replicas: int, observed: Observation) -> list[str]:
        return []

    def delete(self, facts: Any) -> bool:
        self.pods = []
        return True

    def close(self) -> None:
        pass


def _pod(name: str, started_at: datetime) -> PodView:
    return PodView(
        name=name,
        phase="Running",
        ip="10.0.0.7",
        ready=True,
        deleting=False,
        scheduled=True,
        restarts=0,
        problem="",
        started_at=started_at.isoformat(),
        ready_at=started_at.isoformat(),
        spec_version=None,
    )


def _set_up(
    org: Organisation, owner: User, tmp_path: Path, *, gpus: int = 1
) -> tuple[StandInBackend, KubernetesOrchestrator, Deployment]:
    """An orchestrator over a stand-in cluster, and a deployment billed 1,000 µ$ a GPU-second."""
    backend = StandInBackend()
    orchestrator = KubernetesOrchestrator(
        config=OrchestratorConfig(run_dir=tmp_path),
        kube=KubernetesConfig(namespace="inference"),
        backend=backend,  # type: ignore[arg-type]
        probe_metrics=False,
    )
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        deployment = deployment_create(
            org=org,
            actor=owner,
            name="chat",
            source="huggingface",
            model="acme/tiny-chat",
            gpus_per_replica=gpus,
        )
        price(
            org=org,
            deployment_id=deployment.pk,
            unit=PriceUnit.GPU_SECOND,
            micros_per_unit_hour=3_600_000,  # 1,000 µ$ per GPU-second
            effective_from=T0 - timedelta(hours=1),
        )
    return backend, orchestrator, deployment


def _billed() -> tuple[int, int]:
    totals = UptimeRecord.objects.aggregate(s=Sum("seconds"), c=Sum("cost_micros"))
    return totals["s"] or 0, totals["c"] or 0


def test_a_pods_uptime_is_billed_per_gpu_second_while_it_runs_and_up_to_its_deletion(
    org: Organisation, owner: User, tmp_path: Path
) -> None:
    backend, orchestrator, deployment = _set_up(org, owner, tmp_path, gpus=2)
    backend.pods = [_pod("llm-chat-1", T0)]
    with time_machine.travel(T0 + timedelta(minutes=10), tick=False):
        orchestrator.reconcile_once()
    assert _billed() == (600, 600 * 2 * 1000)
    assert UptimeRecord.objects.get().gpus == 2

    with time_machine.travel(T0 + timedelta(minutes=25), tick=False):
        deployment_delete(deployment=deployment, actor=owner)
        orchestrator.reconcile_once()
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert _billed() == (1500, 1500 * 2 * 1000)


def test_a_failed_pod_is_billed_up_to_when_it_failed_not_while_its_object_stays(
    org: Organisation, owner: User, tmp_path: Path
) -> None:
    """An evicted pod keeps its object (phase Failed) until it is cleaned up, holding no GPU."""
    backend, orchestrator, _ = _set_up(org, owner, tmp_path)
    running = _pod("llm-chat-1", T0)
    backend.pods = [running]
    with time_machine.travel(T0 + timedelta(minutes=10), tick=False):
        orchestrator.reconcile_once()
    assert _billed()[0] == 600
    backend.pods = [replace(running, phase="Failed", ready=False, problem="Evicted")]
    with time_machine.travel(T0 + timedelta(minutes=12), tick=False):
        orchestrator.reconcile_once()
    with time_machine.travel(T0 + timedelta(minutes=40), tick=False):
        orchestrator.reconcile_once()
        replicas_uptime_report()
    assert _billed()[0] == 720
    backend.pods = []  # cleaned up at last: still billed up to the failure only
    with time_machine.travel(T0 + timedelta(minutes=50), tick=False):
        orchestrator.reconcile_once()
        replicas_uptime_report()
    assert _billed()[0] == 720
