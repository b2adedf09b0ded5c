from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import models
from django.db.models import Sum

from billing.ledger import UptimeEvent, uptime_record_batch, usage_record_batch
from billing.models import (
    MeterEvent,
    Price,
    PriceUnit,
    RollupCursor,
    UptimeRecord,
    UsageRecord,
    UsageRollup,
)
from billing.rollups import rollup_hour, usage_rollup, usage_rollup_range
from console.services.keys import api_key_create
from tests.billing.factories import price, usage

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)


def rollup_rows() -> list[dict]:
    return list(UsageRollup.objects.order_by("id").values())


def test_each_record_is_rated_at_the_price_in_force_when_served(org):
    price(effective_from=T0 - timedelta(days=1), input_micros_per_million=1_000_000)
    new = price(effective_from=T0 + timedelta(minutes=30), input_micros_per_million=3_000_000)
    written = usage_record_batch(
        [
            usage(org.pk, T0 + timedelta(minutes=29), request_id="before", completion_tokens=0),
            usage(org.pk, T0 + timedelta(minutes=30), request_id="after", completion_tokens=0),
        ]
    )
    assert written == 2
    before, after = (UsageRecord.objects.get(request_id=r) for r in ("before", "after"))
    assert (before.cost_micros, after.cost_micros) == (1_000, 3_000)
    assert after.price_id == new.id


def test_a_repeated_request_id_writes_nothing(org):
    event = usage(org.pk, T0, request_id="req-1")
    assert usage_record_batch([event, event]) == 1
    assert usage_record_batch([event]) == 0
    assert UsageRecord.objects.count() == 1


def test_an_invalid_event_writes_nothing_of_its_batch(org):
    good = usage(org.pk, T0)
    bad = usage(org.pk, T0, cached_tokens=5_000)  # more cached than prompt tokens
    with pytest.raises(ValueError, match="cached_tokens"):
        usage_record_batch([good, bad])
    naive = usage(org.pk, T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone"):
        usage_record_batch([naive])
    assert UsageRecord.objects.count() == 0


def test_baseline_cost_is_rated_at_the_baseline_model(org):
    price(effective_from=T0 - timedelta(days=1))
    price(
        model="big-model",
        effective_from=T0 - timedelta(days=1),
        output_micros_per_million=20_000_000,
    )
    usage_record_batch([usage(org.pk, T0, request_id="r", baseline_model="big-model")])
    record = UsageRecord.objects.get(request_id="r")
    # 1,000 in at $1/M + 500 out at $2/M = 2,000; at big-model: 1,000 + 500 x $20/M = 11,000.
    assert (record.cost_micros, record.baseline_cost_micros) == (2_000, 11_000)


def test_money_columns_are_integers_never_floats(org):
    money = [
        field
        for model in (UsageRecord, UsageRollup, MeterEvent, Price, UptimeRecord)
        for field in model._meta.fields
        if "micros" in field.name
    ]
    assert money and all(isinstance(f, models.BigIntegerField) for f in money)
    usage_record_batch([usage(org.pk, T0)])
    usage_rollup(now=T0 + timedelta(hours=1))
    assert type(UsageRecord.objects.get().cost_micros) is int
    assert type(UsageRollup.objects.get().cost_micros) is int


def test_rerunning_a_rollup_gives_the_same_rows(org, owner):
    key = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).key
    usage_record_batch(
        [
            usage(org.pk, T0 + timedelta(minutes=m), api_key_id=key.pk, route=r, latency_ms=50 * m)
            for m, r in [(1, "chat"), (2, "chat"), (3, "fast"), (61, "chat")]
        ]
        + [usage(org.pk, T0 + timedelta(minutes=5), status_code=500)]
    )
    usage_rollup(now=T0 + timedelta(hours=3))
    first = rollup_rows()
    usage_rollup(now=T0 + timedelta(hours=3))
    usage_rollup_range(start=T0 - timedelta(days=1), end=T0 + timedelta(days=1))
    rollup_hour(org_id=org.pk, hour=T0)
    assert rollup_rows() == first
    hour = [r for r in first if r["hour"] == T0]
    assert sorted((r["route"], r["requests"], r["errors"]) for r in hour) == [
        ("", 1, 1),
        ("chat", 2, 0),
        ("fast", 1, 0),
    ]
    assert sum(r["requests"] for r in first) == 5


def test_late_usage_reaches_its_hour_on_the_next_run(org):
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=10))])
    usage_rollup(now=T0 + timedelta(hours=2))
    total = UsageRollup.objects.aggregate(c=Sum("cost_micros"))["c"]
    # A record for that (long finished) hour arrives a day later.
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=20), completion_tokens=0)])
    usage_rollup(now=T0 + timedelta(days=1))
    rollup = UsageRollup.objects.get()
    assert rollup.requests == 2
    assert rollup.cost_micros == total + 500  # 1,000 prompt tokens at the fallback $0.50/M
    assert rollup.cost_micros == UsageRecord.objects.aggregate(c=Sum("cost_micros"))["c"]


def test_a_backlog_is_caught_up_over_runs_each_going_on_where_the_last_stopped(org, settings):
    """After an outage the records of many hours wait; a run that has used its time leaves the
    cursor where it got to, and the next goes on from there rather than from the start."""
    now = T0 + timedelta(hours=10)
    events = [usage(org.pk, T0 + timedelta(hours=h), request_id=f"r{h}") for h in range(6)]
    usage_record_batch(events)
    for h in range(6):  # written as they were served, an hour apart, while no worker ran
        UsageRecord.objects.filter(request_id=f"r{h}").update(
            created_at=T0 + timedelta(hours=h, minutes=1)
        )
    settings.BILLING_ROLLUP_RUN_SECONDS = 60
    ticks = iter([0.0, 30.0, 61.0])  # the second slice ends the run
    first = usage_rollup(now=now, clock=lambda: next(ticks))
    assert first.org_hours == 2 and first.created_before == T0 + timedelta(hours=2, minutes=1)
    assert sorted(UsageRollup.objects.values_list("hour", flat=True)) == [
        T0,
        T0 + timedelta(hours=1),
    ]
    assert RollupCursor.objects.get().created_before == T0 + timedelta(hours=2, minutes=1)
    # The next run starts at the cursor (less the margin), not at the first record.
    second = usage_rollup(now=now)
    assert second.created_before == now
    hours = sorted(UsageRollup.objects.values_list("hour", flat=True))
    assert hours == [T0 + timedelta(hours=h) for h in range(6)]
    assert second.org_hours == 4  # hours 2 to 5: none of hour 1 was created in the margin
    assert (
        UsageRollup.objects.aggregate(c=Sum("cost_micros"))["c"]
        == (UsageRecord.objects.aggregate(c=Sum("cost_micros"))["c"])
    )


def test_uptime_is_split_by_hour_rated_and_rolled_up(org):
    deployment = uuid.uuid4()
    price(
        org=org,
        deployment_id=deployment,
        unit=PriceUnit.GPU_SECOND,
        micros_per_unit_hour=3_600_000,  # $3.60 per GPU-hour = 1,000 µ$ per GPU-second
        effective_from=T0 - timedelta(days=1),
    )
    event = UptimeEvent(
        event_id="up-1",
        org_id=org.pk,
        deployment_id=deployment,
        replica_id=uuid.uuid4(),
        model="tiny-llama",
        started_at=T0 + timedelta(minutes=59),
        ended_at=T0 + timedelta(minutes=61),
        gpus=2,
    )
    assert uptime_record_batch([event]) == 2
    assert uptime_record_batch([event]) == 0
    assert sorted(UptimeRecord.objects.values_list("seconds", "cost_micros")) == [
        (60, 120_000),
        (60, 120_000),
    ]
    # Requests served by that deployment cost nothing per token.
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=59), deployment_id=deployment)])
    assert UsageRecord.objects.get().cost_micros == 0
    usage_rollup(now=T0 + timedelta(hours=3))
    uptime = UsageRollup.objects.filter(source="uptime")
    assert sorted(uptime.values_list("resource_seconds", "cost_micros")) == [
        (120, 120_000),
        (120, 120_000),
    ]


def test_uptime_events_are_validated(org):
    with pytest.raises(ValueError, match="before"):
        uptime_record_batch(
            [
                UptimeEvent(
                    event_id="x",
                    org_id=org.pk,
                    deployment_id=uuid.uuid4(),
                    replica_id=uuid.uuid4(),
                    model="m",
                    started_at=T0,
                    ended_at=T0 - timedelta(seconds=1),
                )
            ]
        )


def _uptime(event_id: str, org_id: int, deployment: uuid.UUID, start: datetime, end: datetime):  # type: ignore[no-untyped-def]
    return UptimeEvent(
        event_id=event_id,
        org_id=org_id,
        deployment_id=deployment,
        replica_id=uuid.uuid4(),
        model="tiny-llama",
        started_at=start,
        ended_at=end,
        gpus=1,
    )


def test_uptime_is_rated_at_each_price_in_force_during_the_hour(org):
    deployment = uuid.uuid4()
    rates = {"org": org, "deployment_id": deployment, "unit": PriceUnit.GPU_SECOND}
    old = price(micros_per_unit_hour=2_000_000, effective_from=T0 - timedelta(days=1), **rates)
    new = price(micros_per_unit_hour=4_000_000, effective_from=T0 + timedelta(minutes=30), **rates)
    event = _uptime("up-1", org.pk, deployment, T0 + timedelta(minutes=20), T0 + timedelta(hours=1))
    assert uptime_record_batch([event]) == 2
    assert uptime_record_batch([event]) == 0
    # 600 s at $2 per GPU-hour, then 1,800 s at $4 from the half hour on.
    assert sorted(UptimeRecord.objects.values_list("seconds", "cost_micros", "price_id")) == [
        (600, 333_333, old.pk),
        (1800, 2_000_000, new.pk),
    ]
    usage_rollup(now=T0 + timedelta(hours=2))
    rollup = UsageRollup.objects.get(source="uptime")
    assert (rollup.resource_seconds, rollup.cost_micros) == (2400, 2_333_333)


def test_a_deployment_moved_to_uptime_pricing_mid_hour_pays_for_the_rest_of_the_hour(org):
    deployment = uuid.uuid4()
    price(effective_from=T0 - timedelta(days=1))  # per token
    price(
        org=org,
        deployment_id=deployment,
        unit=PriceUnit.GPU_SECOND,
        micros_per_unit_hour=3_600_000,
        effective_from=T0 + timedelta(minutes=30),
    )
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=45), deployment_id=deployment)])
    uptime_record_batch(
        [_uptime("up-2", org.pk, deployment, T0 + timedelta(minutes=10), T0 + timedelta(hours=1))]
    )
    assert UsageRecord.objects.get().cost_micros == 0  # billed by uptime from the half hour
    # Per token until the half hour (its uptime costs nothing), 1,800 s at $3.60 after it.
    assert sorted(UptimeRecord.objects.values_list("seconds", "cost_micros")) == [
        (1200, 0),
        (1800, 1_800_000),
    ]


def test_a_replica_hour_is_rounded_once_however_many_reports_it_took(org):
    deployment = uuid.uuid4()
    price(
        org=org,
        deployment_id=deployment,
        unit=PriceUnit.GPU_SECOND,
        micros_per_unit_hour=1_000_000,  # 277.7… µ$ a GPU-second
        effective_from=T0 - timedelta(days=1),
    )
    replica = uuid.uuid4()
    events = [
        UptimeEvent(
            event_id=f"up-{second}",
            org_id=org.pk,
            deployment_id=deployment,
            replica_id=replica,
            model="tiny-llama",
            started_at=T0 + timedelta(seconds=second),
            ended_at=T0 + timedelta(seconds=second + 1),
            gpus=2,
        )
        for second in range(3)
    ]
    uptime_record_batch(events[:1])
    uptime_record_batch(events[1:])
    uptime_record_batch(events)  # repeated: writes nothing, changes nothing
    # 3 s on 2 GPUs: 1,666.67 µ$, not three times 555.56 rounded.
    assert UptimeRecord.objects.aggregate(c=Sum("cost_micros"))["c"] == 1_667


def test_uptime_split_at_an_hour_keeps_the_reports_whole_seconds(org):
    deployment = uuid.uuid4()
    start = T0 - timedelta(seconds=29, microseconds=500_000)
    uptime_record_batch([_uptime("up-3", org.pk, deployment, start, start + timedelta(minutes=1))])
    # 29.5 s before the hour and 30.5 s after it: 60 whole seconds, not 29 + 30.
    assert sorted(UptimeRecord.objects.values_list("hour", "seconds")) == [
        (T0 - timedelta(hours=1), 29),
        (T0, 31),
    ]


def test_a_token_count_beyond_the_ledger_is_refused_and_the_rest_of_the_batch_written(
    org, tmp_path
):
    """The ledger's count columns are 32-bit integers on PostgreSQL: one larger count made the
    database refuse the whole batch, which the gateway then retried for ever."""
    import json

    from inference.gateway.metering import Meter

    bad = usage(org.pk, T0, completion_tokens=2**31)
    with pytest.raises(ValueError, match="completion_tokens must be at most 2147483647"):
        usage_record_batch([bad])
    good = [usage(org.pk, T0) for _ in range(3)]
    meter = Meter(spill_dir=tmp_path, close_connections=False)
    for event in [good[0], bad, *good[1:]]:
        meter.record(event)
    assert meter.flush() == 3
    written = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert written == {event.request_id for event in good}
    (spill,) = tmp_path.glob("unwritten-usage-*.jsonl")
    assert json.loads(spill.read_text())["request_id"] == bad.request_id


def test_a_time_beyond_the_ledger_is_stored_as_its_largest_value_with_a_warning(org, caplog):
    slow = usage(org.pk, T0, latency_ms=2**31, ttft_ms=2**40)
    assert usage_record_batch([slow, usage(org.pk, T0)]) == 2
    record = UsageRecord.objects.get(request_id=slow.request_id)
    assert (record.latency_ms, record.ttft_ms) == (2**31 - 1, 2**31 - 1)
    assert record.cost_micros == 1_250  # its tokens are billed as ever (the fallback price)
    assert "latency_ms 2147483648 is more than the ledger holds" in caplog.text
