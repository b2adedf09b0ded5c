"""The reconcile loop: observe replicas, decide how many there should be, start, drain, stop.

One pass looks at every deployment: it checks each live replica (is the process there, does it
answer, is it ready yet), asks the autoscaler for the desired count, starts or drains replicas
to match, and writes the deployment's summary state. A restarted orchestrator simply observes
the replicas the database lists: those still running are adopted as they are, so nothing is
started twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from uuid import UUID

from django.db import close_old_connections
from django.db.models import Max
from django.utils import timezone

from console.snapshot import snapshot_bump, snapshot_version
from inference.conf import OrchestratorConfig
from inference.models import LIVE_REPLICA_STATES, Deployment, Replica, ReplicaState
from inference.orchestrator.backends import (
    Backend,
    CannotStart,
    Capacity,
    Liveness,
    NoCapacity,
    ReplicaSpec,
)
from inference.orchestrator.gpus import gpus_pack
from inference.orchestrator.probe import EngineMetrics, EngineProbe, metrics_reading
from inference.orchestrator.scaling import deployment_desired_replicas
from inference.orchestrator.states import (
    crash_cause,
    deployment_summary,
    lines_since_start,
    replica_next_state,
    restart_backoff_s,
    startup_phase,
)
from inference.orchestrator.summary import summary_write
from inference.services.uptime import REPORT_EVERY_S, replica_uptime_report, replicas_uptime_report

logger = logging.getLogger(__name__)
S = ReplicaState
RUNNING_STATES = (S.PENDING, S.STARTING, S.READY)
# Gateways refresh their snapshot within about a second; a draining replica waits this long
# before it may be stopped, so that no request is still on its way to it.
MIN_DRAIN_S = 2.0
# On shutdown the orchestrator has only seconds (process managers then kill it): drain briefly.
SHUTDOWN_MIN_DRAIN_S = 1.0
# ...and stop engines quickly. A drained engine has nothing left to finish, and one still loading
# its model ignores SIGTERM (vLLM's server did for over 30 s here): if the orchestrator waited
# its usual grace, the process manager would kill it first and leave the engines running.
SHUTDOWN_STOP_GRACE_S = 2.0
SHUTDOWN_STOP_GRACE_STARTING_S = 0.5


class Orchestrator:
    def __init__(
        self,
        *,
        backend: Backend,
        config: OrchestratorConfig,
        probe: EngineProbe | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.probe = probe or EngineProbe()
        # What the orchestrator has to say (state changes, start and stop): logged unless the
        # caller collects the lines itself.
        self._report = report or logger.info
        self._stop = threading.Event()
        self._health_misses: dict[UUID, int] = {}
        self._drain_started: dict[UUID, float] = {}
        self._last_metrics: dict[UUID, EngineMetrics] = {}
        self._waiting: dict[UUID, str] = {}
        self._watch: dict[UUID, str] = {}
        self._uptime_reported_at = time.monotonic()
        self._in_use: list[list[int]] = []

    # The loop

    def stop(self) -> None:
        """Ask ``run`` to finish its pass, drain and stop every replica, and return."""
        self._stop.set()

    def _change_token(self) -> tuple[object, ...]:
        latest = Deployment.objects.aggregate(u=Max("updated_at"), d=Max("demand_at"))
        return (snapshot_version(), latest["u"], latest["d"])

    def run(self) -> None:
        """Reconcile every ``interval_s``, and at once when a deployment changes or is wanted."""
        last_token: tuple[object, ...] | None = None
        next_pass = 0.0
        try:
            while not self._stop.is_set():
                try:
                    token = self._change_token()
                    due = time.monotonic() >= next_pass
                    if token != last_token or due or self._something_exited():
                        self.reconcile_once()
                        last_token = self._change_token()
                        next_pass = time.monotonic() + self.config.interval_s
                except Exception:
                    # A database hiccup must not end the loop that keeps replicas alive.
                    logger.exception("reconcile pass failed")
                    close_old_connections()
                self._stop.wait(0.5)
        finally:
            self.shutdown()

    def _something_exited(self) -> bool:
        """A cheap look (no network, no database) at the processes of starting and ready
        replicas, so that a crash is handled within half a second, not at the next pass."""
        return any(
            self.backend.inspect(handle=handle).liveness is not Liveness.RUNNING
            for handle in self._watch.values()
        )

    def reconcile_once(self) -> None:
        capacity = self.backend.capacity()
        self._in_use = [
            list(gpus)
            for gpus in Replica.objects.filter(
                backend=self.backend.name, state__in=LIVE_REPLICA_STATES
            ).values_list("gpus", flat=True)
        ]
        for deployment in Deployment.objects.select_related("org").order_by("created_at"):
            try:
                self._reconcile(deployment, capacity)
            except Exception as error:
                # One broken deployment must not stop the others from being served.
                logger.exception("reconciling deployment %s failed", deployment.pk)
                Deployment.objects.filter(pk=deployment.pk).update(
                    state_reason=f"The orchestrator hit an error: {error}"[:1000]
                )
        if time.monotonic() - self._uptime_reported_at >= REPORT_EVERY_S:
            self._report_uptime()
        cutoff = timezone.now() - timedelta(days=1)
        Replica.objects.filter(state__in=[S.STOPPED], stopped_at__lt=cutoff).delete()

    def _report_uptime(self, replica: Replica | None = None) -> None:
        """Billing must never stop the orchestrator: a failed report is retried next time."""
        self._uptime_reported_at = time.monotonic()
        try:
            if replica is None:
                replicas_uptime_report()
            else:
                replica_uptime_report(replica=replica)
        except Exception:
            logger.exception("reporting replica uptime to the ledger failed")

    def shutdown(self) -> None:
        """Drain and stop every replica this backend runs (SIGTERM to the orchestrator).

        Ready replicas leave the gateways' snapshot first and finish what they are serving (up
        to the drain timeout); then every engine is stopped at once, not one after another,
        because process managers allow a stopping process only a few seconds.
        """
        live = list(
            Replica.objects.select_related("deployment", "deployment__org").filter(
                backend=self.backend.name, state__in=LIVE_REPLICA_STATES
            )
        )
        serving = [r for r in live if r.state in (S.READY, S.DRAINING)]
        for replica in serving:
            if replica.state == S.READY:
                replica.state = replica_next_state(replica.state, "drain")
                replica.save(update_fields=["state"])
        if serving:
            snapshot_bump(keys=False)
            started = time.monotonic()
            while time.monotonic() - started < self.config.drain_timeout_s:
                self._stop.wait(0.25)
                if time.monotonic() - started < SHUTDOWN_MIN_DRAIN_S:
                    continue
                loads = [self.probe.metrics(r.base_url) for r in serving]
                if all(m is None or m.load == 0 for m in loads):
                    break
        running = [r for r in live if r.handle and r.state != S.PENDING]

        def stop(replica: Replica) -> None:
            starting = replica.state == S.STARTING
            grace = SHUTDOWN_STOP_GRACE_STARTING_S if starting else SHUTDOWN_STOP_GRACE_S
            self.backend.stop(handle=replica.handle, grace_s=min(grace, self.config.stop_grace_s))

        if running:
            with ThreadPoolExecutor(max_workers=len(running)) as pool:
                list(pool.map(stop, running))
        for replica in live:
            self._stopped(replica)
        for deployment in Deployment.objects.filter(pk__in={r.deployment_id for r in live}):
            self._summarise(deployment, [])
        self.probe.close()
        self._report(f"stopped {len(live)} replica(s)")

    # One deployment

    def _reconcile(self, deployment: Deployment, capacity: Capacity) -> None:
        replicas = list(
            deployment.replicas.filter(
                backend=self.backend.name, state__in=LIVE_REPLICA_STATES
            ).order_by("created_at")
        )
        for replica in replicas:
            replica.deployment = deployment
            self._observe(deployment, replica)
        live = [r for r in replicas if r.state in LIVE_REPLICA_STATES]
        failure = self._failure(deployment)
        desired = self._desired(deployment, live)

        running = [r for r in live if r.state in RUNNING_STATES]
        current = [r for r in running if r.spec_version == deployment.spec_version]
        stale = [r for r in running if r.spec_version != deployment.spec_version]
        if len(current) < desired and not failure:
            for _ in range(desired - len(current)):
                current.append(
                    Replica.objects.create(
                        deployment=deployment,
                        backend=self.backend.name,
                        spec_version=deployment.spec_version,
                    )
                )
        elif len(current) > desired:
            # Give up the least useful first: not yet started, then starting, then the newest.
            order: dict[str, int] = {S.PENDING: 0, S.STARTING: 1, S.READY: 2}
            victims = sorted(current, key=lambda r: (order[r.state], -r.created_at.timestamp()))
            for replica in victims[: len(current) - desired]:
                self._drain(replica)
            current = [r for r in current if r.state in RUNNING_STATES]
        ready_current = sum(1 for r in current if r.state == S.READY)
        for replica in stale:
            if replica.state != S.READY or ready_current >= desired:
                self._drain(replica)

        now = timezone.now()
        for replica in current:
            if replica.state == S.PENDING and not failure:
                if replica.next_start_at is None or replica.next_start_at <= now:
                    self._start(deployment, replica, capacity)

        seen = {r.pk: r for r in [*live, *current]}
        live = [r for r in seen.values() if r.state in LIVE_REPLICA_STATES]
        if deployment.deleted_at is not None and not live:
            logger.info("deployment %s deleted", deployment.pk)
            deployment.delete()
            snapshot_bump(keys=False)
            return
        self._summarise(deployment, live, failure=failure)

    def _failure(self, deployment: Deployment) -> str:
        failed = (
            deployment.replicas.filter(state=S.FAILED, spec_version=deployment.spec_version)
            .order_by("-stopped_at")
            .first()
        )
        if failed is None:
            return ""
        return f"A replica failed and will not be restarted: {failed.last_error}"[:4000]

    def _desired(self, deployment: Deployment, live: list[Replica]) -> int:
        ready = [r for r in live if r.state == S.READY]
        return deployment_desired_replicas(
            deployment=deployment,
            load=[self._last_metrics[r.id].load for r in ready if r.id in self._last_metrics],
            demand_ttl_s=self.config.demand_ttl_s,
            say=self._say,
            stopped=deployment.deleted_at is not None,
        )

    def _summarise(self, deployment: Deployment, live: list[Replica], *, failure: str = "") -> None:
        summary = deployment_summary(
            deleting=deployment.deleted_at is not None,
            paused=deployment.paused,
            desired=deployment.desired_replicas,
            replica_states=[r.state for r in live],
            failure=failure,
        )
        reason = summary.reason
        waiting = self._waiting.get(deployment.pk)
        if waiting and summary.state in ("pending", "degraded"):
            reason = f"{reason} Waiting for capacity: {waiting}."
        summary_write(deployment, summary.state, reason, say=self._say)

    # One replica

    def _observe(self, deployment: Deployment, replica: Replica) -> None:
        if replica.state == S.PENDING:
            return
        if replica.state == S.DRAINING:
            self._drain_step(replica)
            return
        inspection = self.backend.inspect(handle=replica.handle)
        if inspection.liveness is not Liveness.RUNNING:
            self._crashed(replica, inspection.detail or "the replica ended")
            return
        self._watch[replica.pk] = replica.handle
        if replica.state == S.STARTING:
            self._check_starting(deployment, replica)
        elif replica.state == S.READY:
            self._check_ready(replica)

    def _check_starting(self, deployment: Deployment, replica: Replica) -> None:
        tail = lines_since_start(self._tail(replica, 60))
        phase = startup_phase(tail)
        if self.probe.healthy(replica.base_url):
            error = self.probe.one_token(
                replica.base_url, model=deployment.served_model_name, runner=deployment.runner
            )
            if error is None:
                self._became_ready(deployment, replica)
                return
            phase = "warming up"
        elapsed = (timezone.now() - (replica.started_at or timezone.now())).total_seconds()
        if elapsed > self.config.start_timeout_s:
            self._crashed(replica, f"not ready after {self.config.start_timeout_s:.0f} s")
            return
        if phase != replica.progress:
            replica.progress = phase
            Replica.objects.filter(pk=replica.pk).update(progress=phase)
            self._say(deployment, f"replica {str(replica.pk)[:8]} {phase} ({elapsed:.0f} s)")

    def _became_ready(self, deployment: Deployment, replica: Replica) -> None:
        now = timezone.now()
        replica.state = replica_next_state(replica.state, "became_ready")
        replica.ready_at, replica.progress, replica.crash_streak = now, "ready", 0
        replica.save(update_fields=["state", "ready_at", "progress", "crash_streak"])
        # The waiting request can now be served; demand after this is measured as load.
        Deployment.objects.filter(pk=deployment.pk, demand_at__lte=now).update(demand_at=None)
        deployment.demand_at = None
        snapshot_bump(keys=False)
        took = (now - replica.started_at).total_seconds() if replica.started_at else 0.0
        self._say(deployment, f"replica {str(replica.pk)[:8]} ready in {took:.0f} s")

    def _check_ready(self, replica: Replica) -> None:
        # /health, not /metrics: the API server keeps answering /metrics when its engine died.
        if not self.probe.healthy(replica.base_url):
            misses = self._health_misses.get(replica.pk, 0) + 1
            self._health_misses[replica.pk] = misses
            if misses >= self.config.health_failures:
                self._crashed(replica, f"stopped answering /health ({misses} checks in a row)")
            return
        self._health_misses.pop(replica.pk, None)
        metrics = self.probe.metrics(replica.base_url)
        if metrics is None:
            return
        previous = self._last_metrics.get(replica.pk)
        self._last_metrics[replica.pk] = metrics
        reading = metrics_reading(metrics, previous)
        stored = {k: v for k, v in replica.metrics.items() if k != "read_at"}
        if stored != reading:
            reading["read_at"] = timezone.now().isoformat()
            replica.metrics = reading
            Replica.objects.filter(pk=replica.pk).update(metrics=reading)

    def _crashed(self, replica: Replica, detail: str) -> None:
        was_ready = replica.state == S.READY
        self._report_uptime(replica)  # up to now; a restart starts a new segment
        # Whatever is left of it (helper processes, a hung server) goes before a restart.
        self.backend.stop(handle=replica.handle, grace_s=0.2)
        tail = lines_since_start(self._tail(replica, 40))
        cause = crash_cause(tail)
        now = timezone.now()
        replica.restart_count += 1
        replica.crash_streak += 1
        # The first line says what happened and, where the log shows it, why: it is what the
        # deployment's state, the failure email and the gateway's 503 quote.
        summary = detail[:1].upper() + detail[1:] + (f": {cause}" if cause else ".")
        replica.last_error = "\n".join([summary, *tail[-20:]])[:4000]
        self._forget(replica)
        deployment = replica.deployment
        if replica.crash_streak > self.config.restart_limit:
            replica.state = replica_next_state(replica.state, "gave_up")
            replica.stopped_at = now
            self._say(deployment, f"replica {str(replica.pk)[:8]} failed: {detail}")
        else:
            replica.state = replica_next_state(replica.state, "crashed")
            wait = restart_backoff_s(
                crash_streak=replica.crash_streak,
                base_s=self.config.backoff_base_s,
                cap_s=self.config.backoff_cap_s,
            )
            replica.next_start_at = now + timedelta(seconds=wait)
            self._say(
                deployment,
                f"replica {str(replica.pk)[:8]} crashed ({detail}); restarting in {wait:.0f} s",
            )
        replica.save()
        if was_ready:
            snapshot_bump(keys=False)

    def _start(self, deployment: Deployment, replica: Replica, capacity: Capacity) -> None:
        gpus: list[int] = []
        if not capacity.cpu_only:
            packing = gpus_pack(
                gpus=capacity.gpus,
                in_use=self._in_use,
                wanted={str(replica.pk): deployment.gpus_per_replica},
            )
            if str(replica.pk) in packing.unplaced:
                self._waiting[deployment.pk] = packing.unplaced[str(replica.pk)]
                return
            gpus = packing.assigned[str(replica.pk)]
        self._waiting.pop(deployment.pk, None)
        spec = ReplicaSpec(
            replica_id=str(replica.pk),
            deployment_id=str(deployment.pk),
            source=deployment.source,
            model=deployment.model,
            revision=deployment.revision,
            served_model_name=deployment.served_model_name,
            runner=deployment.runner,
            engine_args=deployment.engine_args,
            gpu_count=deployment.gpus_per_replica,
        )
        now = timezone.now()
        try:
            launched = self.backend.start(spec, gpus=gpus)
        except NoCapacity as error:
            # A shortage on this host, like too few free GPUs: the replica waits for the next pass.
            self._waiting[deployment.pk] = str(error)
            return
        except (CannotStart, OSError) as error:
            # OSError: the engine could not even be spawned (a missing interpreter, no memory).
            replica.state = replica_next_state(replica.state, "gave_up")
            replica.last_error, replica.stopped_at = str(error), now
            replica.save(update_fields=["state", "last_error", "stopped_at"])
            self._say(deployment, f"cannot start: {error}")
            return
        replica.state = replica_next_state(replica.state, "launched")
        replica.handle, replica.host, replica.port = launched.handle, launched.host, launched.port
        replica.pid, replica.gpus, replica.log_path = launched.pid, launched.gpus, launched.log_ref
        replica.started_at, replica.ready_at, replica.next_start_at = now, None, None
        replica.progress = "launching"
        replica.save()
        self._in_use.append(list(launched.gpus))
        self._say(
            deployment,
            f"replica {str(replica.pk)[:8]} launching on port {launched.port}"
            + (f", GPUs {launched.gpus}" if launched.gpus else " (CPU)"),
        )

    def _drain(self, replica: Replica) -> None:
        """Take a replica out of service: a ready one finishes its requests first."""
        if replica.state == S.READY:
            replica.state = replica_next_state(replica.state, "drain")
            replica.save(update_fields=["state"])
            self._drain_started[replica.pk] = time.monotonic()
            snapshot_bump(keys=False)
            self._say(replica.deployment, f"replica {str(replica.pk)[:8]} draining")
        elif replica.state in (S.PENDING, S.STARTING):
            if replica.handle and replica.state == S.STARTING:
                self.backend.stop(handle=replica.handle, grace_s=self.config.stop_grace_s)
            self._stopped(replica)

    def _drain_step(self, replica: Replica, *, force: bool = False) -> None:
        started = self._drain_started.setdefault(replica.pk, time.monotonic())
        elapsed = time.monotonic() - started
        if self.backend.inspect(handle=replica.handle).liveness is Liveness.RUNNING:
            if elapsed < MIN_DRAIN_S and not force:
                return
            metrics = self.probe.metrics(replica.base_url)
            busy = metrics is not None and metrics.load > 0
            if busy and elapsed < self.config.drain_timeout_s and not force:
                return
            self.backend.stop(handle=replica.handle, grace_s=self.config.stop_grace_s)
        self._stopped(replica)

    def _stopped(self, replica: Replica) -> None:
        replica.state = replica_next_state(replica.state, "stopped")
        replica.stopped_at = timezone.now()
        replica.save(update_fields=["state", "stopped_at"])
        self._report_uptime(replica)
        self._forget(replica)
        self._say(replica.deployment, f"replica {str(replica.pk)[:8]} stopped")

    # Small things

    def _forget(self, replica: Replica) -> None:
        self._watch.pop(replica.pk, None)
        self._health_misses.pop(replica.pk, None)
        self._drain_started.pop(replica.pk, None)
        self._last_metrics.pop(replica.pk, None)

    def _tail(self, replica: Replica, lines: int) -> list[str]:
        return self.backend.log_tail(handle=replica.handle, log_ref=replica.log_path, lines=lines)

    def _say(self, deployment: Deployment, message: str) -> None:
        self._report(f"{deployment.org.slug}/{deployment.name}: {message}")
