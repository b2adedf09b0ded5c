"""The usage buffer: batches, retries after failures, a refused event does not block the others,
and what cannot be written at shutdown is spilled to disk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from inference.gateway.ledger import UsageEvent
from inference.gateway.metering import Meter


def event(request_id: str, model: str = "m") -> UsageEvent:
    return UsageEvent(request_id=request_id, org_id=1, model=model, served_at=datetime.now(UTC))


class Ledger:
    """Stands in for billing's ledger door: refuses events without a model, can be 'down'."""

    def __init__(self) -> None:
        self.rows: dict[str, UsageEvent] = {}
        self.down = False
        self.calls = 0

    def write(self, events: Sequence[UsageEvent]) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionError("database unreachable")
        if any(not e.model for e in events):
            raise ValueError("model is required")
        new = [e for e in events if e.request_id not in self.rows]
        self.rows.update((e.request_id, e) for e in new)
        return len(new)


def test_events_are_written_in_one_batch():
    ledger = Ledger()
    meter = Meter(write=ledger.write, close_connections=False)
    for i in range(5):
        meter.record(event(f"r{i}"))
    assert meter.flush() == 5
    assert ledger.calls == 1
    assert meter.pending == 0


def test_a_failed_batch_is_kept_and_written_by_the_next_flush():
    ledger = Ledger()
    meter = Meter(write=ledger.write, close_connections=False)
    meter.record(event("a"))
    ledger.down = True
    assert meter.flush() == 0
    assert meter.pending == 1
    meter.record(event("b"))
    ledger.down = False
    assert meter.flush() == 2
    assert set(ledger.rows) == {"a", "b"}


def test_a_refused_event_is_set_aside_and_the_rest_written(tmp_path):
    ledger = Ledger()
    spilled: list[int] = []
    meter = Meter(
        write=ledger.write, spill_dir=tmp_path, on_spill=spilled.append, close_connections=False
    )
    meter.record(event("good-1"))
    meter.record(event("bad", model=""))
    meter.record(event("good-2"))
    assert meter.flush() == 2
    assert set(ledger.rows) == {"good-1", "good-2"}
    assert spilled == [1]
    (spill,) = tmp_path.glob("unwritten-usage-*.jsonl")
    assert json.loads(spill.read_text())["request_id"] == "bad"


def test_close_spills_what_the_ledger_never_took(tmp_path):
    ledger = Ledger()
    ledger.down = True
    meter = Meter(write=ledger.write, spill_dir=tmp_path, close_connections=False)
    meter.record(event("late"))
    meter.close(attempts=2)
    (spill,) = tmp_path.glob("unwritten-usage-*.jsonl")
    assert json.loads(spill.read_text())["request_id"] == "late"
    assert meter.pending == 0
