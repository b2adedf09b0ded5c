"""The ledger writer process: usage batches are written by a child process over a pipe.

The child opens the test database itself, so these tests need PostgreSQL (SQLite's test database
lives in this process's memory).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.db import connection

from billing.models import UsageRecord
from console.models import Organisation
from inference.gateway.ledger import UsageEvent
from inference.gateway.meter_writer import SEND_CHUNK, ProcessWriter, WriterUnavailable
from inference.gateway.metering import Meter


@pytest.fixture
def writer(committed_db: None) -> Iterator[ProcessWriter]:
    if connection.vendor != "postgresql":
        pytest.skip("the writer process opens the test database: set DATABASE_URL to PostgreSQL")
    process = ProcessWriter()
    yield process
    process.close()


def events(org: Organisation, count: int, *, model: str = "tiny") -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=uuid.uuid4().hex,
            org_id=org.pk,
            model=model,
            served_at=datetime.now(UTC),
            prompt_tokens=10 + i,
            completion_tokens=5,
            latency_ms=3,
        )
        for i in range(count)
    ]


def test_batches_are_written_once_by_the_child(writer: ProcessWriter, org: Organisation):
    batch = events(org, 120)
    assert writer(batch) == 120
    assert writer.pid is not None and writer.pid != os.getpid()
    assert writer(batch) == 0  # idempotent on request id
    stored = UsageRecord.objects.filter(org=org)
    assert stored.count() == 120
    assert sorted(stored.values_list("prompt_tokens", flat=True)) == list(range(10, 130))


@pytest.mark.parametrize("count", [0, SEND_CHUNK, SEND_CHUNK + 1])
def test_every_field_crosses_the_pipe_at_chunk_boundaries(
    writer: ProcessWriter, org: Organisation, count: int
):
    deployment, replica = uuid.uuid4(), uuid.uuid4()
    served = datetime(2026, 11, 2, 10, 30, 5, 123456, tzinfo=UTC)
    batch = [
        UsageEvent(
            request_id=f"req-{count}-{i}",
            org_id=org.pk,
            model="tiny",
            served_at=served,
            prompt_tokens=11,
            completion_tokens=7,
            cached_tokens=3,
            status_code=502,
            latency_ms=41,
            ttft_ms=9,
            route="chat",
            target="deployment:tiny",
            deployment_id=deployment,
            replica_id=replica,
            router_score=0.625,
            router_choice="deployment:tiny",
            baseline_cost_micros=17,
        )
        for i in range(count)
    ]
    assert writer(batch) == count
    stored = UsageRecord.objects.filter(org=org)
    assert stored.count() == count
    expected = (11, 7, 3, 502, 41, 9, "chat", "deployment:tiny", deployment, replica, 0.625,
                "deployment:tiny", 17, served)  # fmt: skip
    for record in stored:
        assert (
            record.prompt_tokens, record.completion_tokens, record.cached_tokens,
            record.status_code, record.latency_ms, record.ttft_ms, record.route, record.target,
            record.deployment_id, record.replica_id, record.router_score, record.router_choice,
            record.baseline_cost_micros, record.served_at,
        ) == expected  # fmt: skip


def test_an_invalid_event_raises_in_the_gateway_and_writes_nothing(
    writer: ProcessWriter, org: Organisation
):
    batch = events(org, 3) + events(org, 1, model="")
    with pytest.raises(ValueError, match="model is required"):
        writer(batch)
    assert not UsageRecord.objects.filter(org=org).exists()
    assert writer(batch[:3]) == 3  # the child is still serving


def test_the_child_ignores_sigterm_and_is_replaced_after_a_crash(
    writer: ProcessWriter, org: Organisation
):
    writer.start()
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGTERM)  # e.g. sent to the whole process group at shutdown
    time.sleep(0.3)
    assert writer(events(org, 2)) == 2
    assert writer.pid == first
    os.kill(first, signal.SIGKILL)
    time.sleep(0.3)
    assert writer(events(org, 4)) == 4  # a new child took over
    assert writer.pid not in (None, first)
    assert writer.starts == 2
    assert UsageRecord.objects.filter(org=org).count() == 6


def test_a_child_that_cannot_start_fails_the_batch_for_a_later_retry(org: Organisation):
    writer = ProcessWriter(start_timeout_s=0.0)  # gives up before any child can be ready
    with pytest.raises(WriterUnavailable, match="did not start"):
        writer(events(org, 1))
    assert writer.pid is None


def test_a_meter_keeps_a_failed_batch_and_writes_it_through_a_new_child(
    writer: ProcessWriter, org: Organisation, monkeypatch: pytest.MonkeyPatch
):
    meter = Meter(write=writer, close_connections=False)
    for event in events(org, 50):
        meter.record(event)
    assert meter.flush() == 50
    monkeypatch.setattr(writer, "_start_timeout_s", 0.0)
    writer.close()  # the child is gone and the next one cannot start in time
    for event in events(org, 30):
        meter.record(event)
    assert meter.flush() == 0
    assert meter.pending == 30  # kept for the next flush
    monkeypatch.setattr(writer, "_start_timeout_s", 60.0)
    meter.close()
    assert meter.pending == 0
    assert UsageRecord.objects.filter(org=org).count() == 80


def test_closing_stops_the_child(writer: ProcessWriter, org: Organisation):
    writer.start()
    pid = writer.pid
    assert pid is not None
    writer.close()
    assert writer.pid is None
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
