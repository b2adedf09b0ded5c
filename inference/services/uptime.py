"""Hand dedicated replicas' uptime to the ledger, for per-GPU-second (or per-replica-second) prices.

A replica is billed from the moment its process starts (the GPU is held from then, loading
included) until it stops. Each report covers the time since the previous one; the marker on the
replica and the ledger's write move together in one transaction, and the ledger ignores an
event id it already has, so a report that is repeated after a crash changes nothing. A running
replica's report covers whole seconds, so fractions of a second add up over its reports.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from billing.ledger import UptimeEvent, uptime_record_batch
from inference.models import Replica, ReplicaState

_ENDED = (ReplicaState.STOPPED, ReplicaState.FAILED)
# The orchestrators report every replica this often (and when one stops, crashes or is deleted).
REPORT_EVERY_S = 60.0


def _segment(replica: Replica, now: datetime) -> tuple[datetime, datetime] | None:
    if replica.started_at is None:
        return None
    start = max(replica.started_at, replica.uptime_reported_until or replica.started_at)
    if replica.state in _ENDED and replica.stopped_at:
        end = replica.stopped_at  # the last report: only its fraction of a second is not billed
    else:
        # Whole seconds, and the marker moves by just those: the fraction of a second left over
        # is billed with the next report instead of being dropped by each one.
        end = start + timedelta(seconds=(now - start) // timedelta(seconds=1))
    return (start, end) if end > start else None


def replica_uptime_report(*, replica: Replica, now: datetime | None = None) -> int:
    """Report one replica's unreported uptime. Returns the hourly ledger rows written."""
    segment = _segment(replica, now or timezone.now())
    if segment is None:
        return 0
    start, end = segment
    deployment = replica.deployment
    gpus = len(replica.gpus or [])
    if not gpus and replica.backend == "kubernetes":
        # A pod holds the GPUs its spec asks for; the cluster, not the orchestrator, picks which.
        gpus = deployment.gpus_per_replica
    event = UptimeEvent(
        event_id=f"{replica.pk}:{start:%Y%m%dT%H%M%S.%f}",
        org_id=deployment.org_id,
        deployment_id=deployment.pk,
        replica_id=replica.pk,
        model=deployment.served_model_name,
        started_at=start,
        ended_at=end,
        gpus=gpus,
    )
    with transaction.atomic():
        claimed = Replica.objects.filter(
            pk=replica.pk, uptime_reported_until=replica.uptime_reported_until
        ).update(uptime_reported_until=end)
        if not claimed:
            return 0  # another report covered it first
        written = uptime_record_batch([event])
    replica.uptime_reported_until = end
    return written


def replicas_uptime_report(*, now: datetime | None = None) -> int:
    """Report every replica that ran since its last report (the orchestrator calls this)."""
    now = now or timezone.now()
    pending = (
        Replica.objects.select_related("deployment")
        .filter(started_at__isnull=False)
        .filter(
            Q(uptime_reported_until__isnull=True)
            | ~Q(state__in=_ENDED)
            | Q(stopped_at__gt=F("uptime_reported_until"))
        )
    )
    return sum(replica_uptime_report(replica=replica, now=now) for replica in pending)
