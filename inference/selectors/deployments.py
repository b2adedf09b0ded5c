"""Reads of deployments and replicas for pages and the REST API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.db.models import Count, Prefetch, QuerySet

from console.models import Organisation
from inference.models import (
    LIVE_REPLICA_STATES,
    Deployment,
    DeploymentState,
    Replica,
    ReplicaState,
)
from inference.orchestrator.backends.local import log_file_tail

RECENT_STOPPED = 5


def deployments_for_org(*, org: Organisation) -> QuerySet[Deployment]:
    """The org's deployments (those being deleted too, until the orchestrator removes them)."""
    live = Replica.objects.filter(state__in=LIVE_REPLICA_STATES).order_by("created_at")
    return (
        Deployment.objects.filter(org=org)
        .prefetch_related(Prefetch("replicas", queryset=live, to_attr="live_replicas"))
        .order_by("name", "id")  # one being deleted and its successor may share a name
    )


def replicas_for_deployment(*, deployment: Deployment) -> list[Replica]:
    """Live replicas, then the few most recently stopped or failed (their errors explain a lot)."""
    live = list(deployment.replicas.filter(state__in=LIVE_REPLICA_STATES).order_by("created_at"))
    ended = list(
        deployment.replicas.exclude(state__in=LIVE_REPLICA_STATES).order_by("-stopped_at")[
            :RECENT_STOPPED
        ]
    )
    return live + ended


def replica_log_tail(*, replica: Replica, lines: int = 100) -> list[str]:
    """The end of a replica's engine log, where this host can read it (the local backend)."""
    if replica.backend != "local" or not replica.log_path:
        return []
    return log_file_tail(Path(replica.log_path), lines=max(1, min(lines, 1000)))


def replica_log_note(*, replica: Replica) -> str:
    """Where a replica's engine log is, when ``replica_log_tail`` cannot read it; else ""."""
    if replica.backend == "local":
        return ""
    if replica.backend == "kubernetes" and replica.handle:
        # The engine logs to its pod's output, which only the cluster keeps.
        return (
            f"This replica runs on Kubernetes, in pod {replica.handle}; the console does not "
            f"read pod logs. Its engine log: kubectl logs {replica.handle}"
        )
    return f"The console does not read the logs of the {replica.backend} backend."


@dataclass(frozen=True)
class PlatformDeployments:
    """Every organisation's deployments at a glance, for staff."""

    by_state: dict[str, int]  # label -> count, states with none left out
    failed: list[Deployment]  # the most recently changed, at most ``FAILED_SHOWN``
    replicas_ready: int
    replicas_live: int


FAILED_SHOWN = 10


def platform_deployments() -> PlatformDeployments:
    live = Deployment.objects.filter(deleted_at=None)
    by_state = dict(live.values_list("state").order_by().annotate(n=Count("id")))
    failed = list(
        live.filter(state=DeploymentState.FAILED)
        .select_related("org")
        .order_by("-updated_at")[:FAILED_SHOWN]
    )
    replicas = Replica.objects.filter(deployment__deleted_at=None, state__in=LIVE_REPLICA_STATES)
    return PlatformDeployments(
        by_state={s.label: by_state[s.value] for s in DeploymentState if by_state.get(s.value)},
        failed=failed,
        replicas_ready=replicas.filter(state=ReplicaState.READY).count(),
        replicas_live=replicas.count(),
    )
