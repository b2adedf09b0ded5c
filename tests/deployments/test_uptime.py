"""Dedicated replicas' uptime reaches the ledger once, segment by segment, rated per GPU-second."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from billing.models import PriceUnit, UptimeRecord
from inference.models import Replica, ReplicaState
from inference.services.uptime import replica_uptime_report, replicas_uptime_report
from tests.billing.factories import price
from tests.deployments.factories import make_deployment


def _seconds_and_cost() -> tuple[int, int]:
    totals = UptimeRecord.objects.aggregate(s=Sum("seconds"), c=Sum("cost_micros"))
    return totals["s"] or 0, totals["c"] or 0


def test_uptime_is_reported_once_per_segment_and_at_stop(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    now = timezone.now().replace(microsecond=0)
    price(
        org=org,
        deployment_id=deployment.pk,
        unit=PriceUnit.GPU_SECOND,
        micros_per_unit_hour=3_600_000,  # 1,000 µ$ per GPU-second
        effective_from=now - timedelta(days=1),
    )
    replica = Replica.objects.create(
        deployment=deployment,
        state=ReplicaState.READY,
        gpus=[0, 1],
        started_at=now - timedelta(hours=2),
    )

    replicas_uptime_report(now=now)
    assert _seconds_and_cost() == (7200, 7200 * 2 * 1000)
    # Reporting again at the same moment adds nothing.
    assert replicas_uptime_report(now=now) == 0
    assert _seconds_and_cost() == (7200, 7200 * 2 * 1000)

    # Half an hour later only the difference is added.
    replicas_uptime_report(now=now + timedelta(minutes=30))
    assert _seconds_and_cost()[0] == 9000

    # It stops ten minutes after that: the last segment ends at the stop, not at the report.
    Replica.objects.filter(pk=replica.pk).update(
        state=ReplicaState.STOPPED, stopped_at=now + timedelta(minutes=40)
    )
    replicas_uptime_report(now=now + timedelta(hours=5))
    replicas_uptime_report(now=now + timedelta(hours=6))
    assert _seconds_and_cost() == (9600, 9600 * 2 * 1000)


def test_a_stale_copy_of_the_replica_cannot_report_twice(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    now = timezone.now().replace(microsecond=0)
    replica = Replica.objects.create(
        deployment=deployment, state=ReplicaState.READY, started_at=now - timedelta(minutes=10)
    )
    stale = Replica.objects.get(pk=replica.pk)
    assert replica_uptime_report(replica=replica, now=now) >= 1
    assert replica_uptime_report(replica=stale, now=now) == 0
    assert _seconds_and_cost()[0] == 600


def test_a_replica_that_never_started_reports_nothing(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    Replica.objects.create(deployment=deployment, state=ReplicaState.PENDING)
    assert replicas_uptime_report() == 0
    assert not UptimeRecord.objects.exists()


def test_an_hour_reported_every_minute_bills_the_hour_rounded_once(org, owner, model_root):
    """The orchestrator's loop reports at whatever fraction of a second it runs: the fractions
    carry over to the next report, and the hour's cost is rounded once, not per report."""
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    start = datetime(2026, 6, 15, 12, 0, 0, 250_000, tzinfo=UTC)
    price(
        org=org,
        deployment_id=deployment.pk,
        unit=PriceUnit.GPU_SECOND,
        micros_per_unit_hour=1_000_000,  # 277.7… µ$ a GPU-second: each minute rounds up
        effective_from=start - timedelta(days=1),
    )
    replica = Replica.objects.create(
        deployment=deployment, state=ReplicaState.READY, gpus=[0], started_at=start
    )
    for minute in range(1, 60):
        replicas_uptime_report(now=start + timedelta(minutes=minute, milliseconds=300 * minute))
    Replica.objects.filter(pk=replica.pk).update(
        state=ReplicaState.STOPPED, stopped_at=start + timedelta(hours=1)
    )
    replicas_uptime_report(now=start + timedelta(hours=2))
    assert _seconds_and_cost() == (3600, 1_000_000)
    # 3,599.75 s fell in the first hour and 0.25 s in the next: whole seconds, 3,600 in all.
    hours = UptimeRecord.objects.values_list("hour").annotate(s=Sum("seconds")).order_by("hour")
    assert [seconds for _, seconds in hours] == [3599, 1]
