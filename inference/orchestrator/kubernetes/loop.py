"""The reconcile loop for the Kubernetes backend.

Each pass, for every deployment: decide the replica count (the same autoscaling decision as the
local backend), read the cluster, create or repair the Deployment and Service and scale through
the scale subresource, then copy what the cluster says into Replica rows: one row per pod, with
``ready`` only for pods among the Service's ready endpoints, so gateways route to ready pods only.

Nothing is remembered between passes that the cluster does not hold, so a restarted orchestrator
adopts the objects it finds instead of creating them again. Stopping the orchestrator leaves the
pods serving: Kubernetes keeps them running and restarts them without us.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import close_old_connections
from django.db.models import Max
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from console.snapshot import snapshot_bump, snapshot_version
from inference.conf import OrchestratorConfig
from inference.models import Deployment, DeploymentState, Replica, ReplicaState
from inference.orchestrator.kubernetes.backend import (
    ClusterError,
    KubernetesBackend,
    Observation,
    PodView,
)
from inference.orchestrator.kubernetes.config import KubernetesConfig
from inference.orchestrator.kubernetes.manifests import (
    DeploymentFacts,
    SpecRefused,
    engine_argv,
)
from inference.orchestrator.probe import EngineMetrics, EngineProbe
from inference.orchestrator.scaling import deployment_desired_replicas
from inference.orchestrator.states import deployment_summary
from inference.orchestrator.summary import summary_write
from inference.services.uptime import REPORT_EVERY_S, replica_uptime_report, replicas_uptime_report

logger = logging.getLogger(__name__)
S = ReplicaState
BACKEND = "kubernetes"


def deployment_facts(deployment: Deployment) -> DeploymentFacts:
    return DeploymentFacts(
        id=str(deployment.pk),
        name=deployment.name,
        org_id=str(deployment.org.public_id),
        org_slug=deployment.org.slug,
        source=deployment.source,
        model=deployment.model,
        revision=deployment.revision,
        served_model_name=deployment.served_model_name,
        runner=deployment.runner,
        engine_args=dict(deployment.engine_args or {}),
        gpus_per_replica=deployment.gpus_per_replica,
        spec_version=deployment.spec_version,
    )


def pod_state(pod: PodView) -> tuple[str, str]:
    """A pod's replica state and start-up progress."""
    if pod.deleting:
        return S.DRAINING, "stopping"
    if pod.ready:
        return S.READY, "ready"
    if pod.phase in ("Failed", "Succeeded"):
        return S.FAILED, pod.phase.lower()
    if not pod.scheduled:
        return S.PENDING, "scheduling"
    if pod.phase == "Pending":
        return S.STARTING, "pulling image"
    return S.STARTING, "loading"


def _when(raw: str | None) -> datetime | None:
    return parse_datetime(raw) if raw else None


class KubernetesOrchestrator:
    """Same surface as the local orchestrator: ``run``, ``stop``, ``reconcile_once``."""

    def __init__(
        self,
        *,
        config: OrchestratorConfig,
        kube: KubernetesConfig,
        backend: KubernetesBackend | None = None,
        probe: EngineProbe | None = None,
        probe_metrics: bool = True,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.kube = kube
        self.backend = backend or KubernetesBackend(kube)
        # Load for autoscaling comes from each ready pod's /metrics, which needs the
        # orchestrator to reach pod IPs (it does when it runs inside the cluster).
        self.probe = probe or EngineProbe(timeout_s=1.0)
        self.probe_metrics = probe_metrics
        # What the orchestrator has to say (state changes, start and stop): logged unless the
        # caller collects the lines itself.
        self._report = report or logger.info
        self._stop = threading.Event()
        self._uptime_reported_at: float | None = None

    # The loop

    def stop(self) -> None:
        self._stop.set()

    def _change_token(self) -> tuple[object, ...]:
        latest = Deployment.objects.aggregate(u=Max("updated_at"), d=Max("demand_at"))
        return (snapshot_version(), latest["u"], latest["d"])

    def run(self) -> None:
        """Reconcile every ``interval_s``, and at once when a deployment changes."""
        last_token: tuple[object, ...] | None = None
        next_pass = 0.0
        self._report(
            f"orchestrator managing Kubernetes Deployments in namespace {self.kube.namespace} "
            f"(image {self.kube.image})"
        )
        try:
            while not self._stop.is_set():
                try:
                    token = self._change_token()
                    if token != last_token or time.monotonic() >= next_pass:
                        self.reconcile_once()
                        last_token = self._change_token()
                        next_pass = time.monotonic() + self.config.interval_s
                except Exception:
                    logger.exception("reconcile pass failed")
                    close_old_connections()
                self._stop.wait(0.5)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Let go of the API connection; the pods keep serving under Kubernetes' care."""
        self.probe.close()
        self.backend.close()
        self._report("orchestrator stopped; Kubernetes keeps the replicas running")

    def reconcile_once(self) -> None:
        for deployment in Deployment.objects.select_related("org").order_by("created_at"):
            try:
                self.reconcile_deployment(deployment)
            except ClusterError as error:
                if error.transient:
                    # The pods keep serving without us: keep the state, say what is wrong.
                    self._note(deployment, f"{error} Retrying.")
                else:
                    self._summarise(deployment, [], failure=str(error))
            except SpecRefused as error:
                self._summarise(deployment, [], failure=str(error))
            except Exception as error:
                logger.exception("reconciling deployment %s failed", deployment.pk)
                self._summarise(deployment, [], failure=f"The orchestrator hit an error: {error}")
        last = self._uptime_reported_at
        if last is None or time.monotonic() - last >= REPORT_EVERY_S:
            self._uptime_reported_at = time.monotonic()
            self._report_uptime()

    def _report_uptime(self, deployment: Deployment | None = None) -> None:
        """Pods' uptime to the ledger: every pod's, or one deployment's before its rows go.
        Billing must never stop the orchestrator: a failed report is retried next time."""
        try:
            if deployment is None:
                replicas_uptime_report()
            else:
                for replica in Replica.objects.filter(deployment=deployment, backend=BACKEND):
                    replica_uptime_report(replica=replica)
        except Exception:
            logger.exception("reporting replica uptime to the ledger failed")

    # One deployment

    def reconcile_deployment(
        self, deployment: Deployment, *, observed: Observation | None = None
    ) -> None:
        """One deployment's pass; ``observed`` lets a caller supply the cluster reading."""
        facts = deployment_facts(deployment)
        if deployment.deleted_at is not None:
            self._delete(deployment, facts)
            return
        # Refused here, before any request: the same allow-list as the local backend.
        engine_argv(facts, self.kube)
        observation = observed or self.backend.observe(facts)
        metrics = self._read_metrics(observation)
        desired = self._desired(deployment, metrics)
        actions = self.backend.ensure(facts, replicas=desired, observed=observation)
        for action in actions:
            self._say(deployment, action)
        if actions or observed is not None:
            observation = self.backend.observe(facts)
        if observation.endpoints and deployment.demand_at is not None:
            # The waiting request can be served now; demand after this is measured as load.
            Deployment.objects.filter(pk=deployment.pk, demand_at__lte=timezone.now()).update(
                demand_at=None
            )
        rows = self._sync_replicas(deployment, observation, metrics)
        failure = (
            f"Kubernetes gave up on the rollout: {observation.failed}" if observation.failed else ""
        )
        self._summarise(deployment, rows, failure=failure, warnings=observation.warnings)

    def _delete(self, deployment: Deployment, facts: DeploymentFacts) -> None:
        if not self.backend.delete(facts):
            self._summarise(deployment, list(self._live_rows(deployment)))
            return
        self._sync_replicas(deployment, Observation(None, None))
        # Its replica rows go with it: their uptime up to now is billed first.
        self._report_uptime(deployment)
        logger.info("deployment %s deleted", deployment.pk)
        self._say(deployment, "deleted; its Deployment, Service and pods are gone")
        deployment.delete()
        snapshot_bump(keys=False)

    def _read_metrics(self, observation: Observation) -> dict[str, EngineMetrics]:
        """Each ready pod's /metrics, by pod name (needs the pod network: in-cluster only)."""
        found: dict[str, EngineMetrics] = {}
        if self.probe_metrics:
            for pod, ip, port in observation.endpoints:
                metrics = self.probe.metrics(f"http://{ip}:{port}")
                if metrics is not None:
                    found[pod] = metrics
        return found

    def _desired(self, deployment: Deployment, metrics: dict[str, EngineMetrics]) -> int:
        return deployment_desired_replicas(
            deployment=deployment,
            load=[reading.load for reading in metrics.values()],
            demand_ttl_s=self.config.demand_ttl_s,
            say=self._say,
        )

    def _live_rows(self, deployment: Deployment) -> list[Replica]:
        return list(
            Replica.objects.filter(deployment=deployment, backend=BACKEND).exclude(state=S.STOPPED)
        )

    def _sync_replicas(
        self,
        deployment: Deployment,
        observation: Observation,
        metrics: dict[str, EngineMetrics] | None = None,
    ) -> list[Replica]:
        """One Replica row per pod; bump the gateways' snapshot when the ready set changes."""
        rows = {row.handle: row for row in self._live_rows(deployment)}
        before = {(r.handle, r.host, r.port) for r in rows.values() if r.state == S.READY}
        ports = {pod: port for pod, _, port in observation.endpoints}
        now = timezone.now()
        kept: list[Replica] = []
        for pod in observation.pods:
            state, progress = pod_state(pod)
            values = {
                "state": state,
                "progress": progress,
                "host": pod.ip,
                "port": ports.get(pod.name, self.kube.engine_port),
                "restart_count": pod.restarts,
                "last_error": pod.problem[:4000],
                "spec_version": pod.spec_version or deployment.spec_version,
                "started_at": _when(pod.started_at),
                "ready_at": _when(pod.ready_at) if state == S.READY else None,
            }
            row = rows.pop(pod.name, None)
            if state == S.FAILED:
                # A failed (say, evicted) pod holds no GPU, though its object may stay for long:
                # its uptime ends when it was first seen failed.
                values["stopped_at"] = row.stopped_at if row and row.stopped_at else now
            reading = (metrics or {}).get(pod.name)
            if reading is not None:
                values["metrics"] = {
                    "running": reading.running,
                    "waiting": reading.waiting,
                    "kv_cache_usage": round(reading.kv_cache_usage, 4),
                    "prompt_tokens_total": int(reading.prompt_tokens_total),
                    "generation_tokens_total": int(reading.generation_tokens_total),
                }
            if row is None:
                row = Replica.objects.create(
                    deployment=deployment, backend=BACKEND, handle=pod.name, **values
                )
                self._say(deployment, f"pod {pod.name} {state}")
            elif any(getattr(row, key) != value for key, value in values.items()):
                if row.state != state:
                    self._say(deployment, f"pod {pod.name} {row.state} -> {state}")
                for key, value in values.items():
                    setattr(row, key, value)
                row.save(update_fields=list(values))
            kept.append(row)
        for row in rows.values():  # pods that are gone (a failed one ended when it failed)
            row.state, row.stopped_at, row.progress = S.STOPPED, row.stopped_at or now, ""
            row.save(update_fields=["state", "stopped_at", "progress"])
        after = {(r.handle, r.host, r.port) for r in kept if r.state == S.READY}
        if before != after:
            snapshot_bump(keys=False)
        if deployment.deleted_at is None:
            Replica.objects.filter(
                deployment=deployment,
                backend=BACKEND,
                state=S.STOPPED,
                stopped_at__lt=now - timedelta(days=1),
            ).delete()
        return [row for row in kept if row.state != S.STOPPED]

    def _summarise(
        self,
        deployment: Deployment,
        rows: list[Replica],
        *,
        failure: str = "",
        warnings: list[str] | None = None,
    ) -> None:
        summary = deployment_summary(
            deleting=deployment.deleted_at is not None,
            paused=deployment.paused,
            desired=deployment.desired_replicas,
            replica_states=[r.state for r in rows],
            failure=failure,
        )
        reason = summary.reason
        if warnings and summary.state in (
            DeploymentState.PENDING,
            DeploymentState.STARTING,
            DeploymentState.DEGRADED,
        ):
            reason = f"{reason} {' '.join(warnings)}"
        reason = reason[:4000]
        summary_write(deployment, summary.state, reason, say=self._say)

    def _note(self, deployment: Deployment, reason: str) -> None:
        if reason != deployment.state_reason:
            Deployment.objects.filter(pk=deployment.pk).update(state_reason=reason[:4000])
            self._say(deployment, reason)

    def _say(self, deployment: Deployment, message: str) -> None:
        self._report(f"{deployment.org.slug}/{deployment.name}: {message}")


def kubernetes_orchestrator(
    config: OrchestratorConfig, *, report: Callable[[str], None] | None = None
) -> KubernetesOrchestrator:
    return KubernetesOrchestrator(config=config, kube=KubernetesConfig.from_env(), report=report)
