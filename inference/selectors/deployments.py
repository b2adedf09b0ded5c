"""Reads of deployments and replicas for pages and the REST API."""

from __future__ import annotations

from pathlib import Path

from django.db.models import Prefetch, QuerySet

from console.models import Organisation
from inference.models import LIVE_REPLICA_STATES, Deployment, Replica
from inference.orchestrator.backends.local import log_file_tail

RECENT_STOPPED = 5


def deployments_for_org(*, org: Organisation) -> QuerySet[Deployment]:
    """The org's deployments (those being deleted too, until the orchestrator removes them)."""
    live = Replica.objects.filter(state__in=LIVE_REPLICA_STATES).order_by("created_at")
    return (
        Deployment.objects.filter(org=org)
        .prefetch_related(Prefetch("replicas", queryset=live, to_attr="live_replicas"))
        .order_by("name")
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
