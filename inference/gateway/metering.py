"""The usage buffer: one event per request, written to the ledger in batches off the hot path.

Requests append to an in-memory list (on the event loop thread, a plain append). A flusher
thread swaps the list out every ``flush_s`` (or as soon as ``batch`` events wait) and hands it to
billing's ``usage_record_batch``, which is idempotent on the request id, so a batch retried after
a failure cannot write twice. ``close()`` (called when the server shuts down, e.g. on SIGTERM
after in-flight requests have finished) flushes what is left; if the database cannot be reached
even then, the events are appended to a JSON-lines spill file so that nothing served is lost.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from django.db import close_old_connections

from inference.gateway.ledger import UsageEvent, usage_write

logger = logging.getLogger(__name__)


class Meter:
    def __init__(
        self,
        *,
        flush_s: float = 1.0,
        batch: int = 500,
        write: Callable[[Sequence[UsageEvent]], int] = usage_write,
        spill_dir: Path | None = None,
        on_spill: Callable[[int], None] | None = None,
        close_connections: bool = True,
    ) -> None:
        self.flush_s = flush_s
        self.batch = batch
        self._write = write
        self._spill_dir = spill_dir
        self._on_spill = on_spill
        # The flusher thread's database connection is its own; close it when it goes stale.
        self._close_connections = close_connections
        self._buffer: list[UsageEvent] = []
        self._retry: list[UsageEvent] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one flush at a time (the thread, or close())
        self._thread: threading.Thread | None = None
        self.written = 0
        self.recorded = 0
        self._recorded_changed = threading.Condition()
        self._waiting = 0

    def record(self, event: UsageEvent) -> None:
        self._buffer.append(event)
        self.recorded += 1
        if len(self._buffer) >= self.batch:
            self._wake.set()
        if self._waiting:  # a lock and a notify per request only while someone waits
            with self._recorded_changed:
                self._recorded_changed.notify_all()

    def wait_recorded(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` events were recorded (tests and shutdown checks)."""
        with self._recorded_changed:
            self._waiting += 1
            try:
                return self._recorded_changed.wait_for(lambda: self.recorded >= count, timeout)
            finally:
                self._waiting -= 1

    def drain(self) -> list[UsageEvent]:
        """Take the buffered events without writing them (the caller writes them itself)."""
        with self._lock:
            events, self._buffer = self._buffer, []
        return events

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._retry)

    def flush(self) -> int:
        """Write everything buffered now. Returns the number of records written."""
        with self._lock:
            # Swapping the list is atomic under the GIL: appends after this go to the new one.
            events, self._buffer = self._buffer, []
            events = self._retry + events
            self._retry = []
            if not events:
                return 0
            try:
                written = self._write(events)
            except ValueError:
                # The ledger refuses a whole batch for one invalid event: write them one by one
                # and set the invalid ones aside, so that one bad event cannot block the rest.
                written = self._write_singly(events)
            except Exception:
                logger.exception("usage flush failed; will retry", extra={"events": len(events)})
                self._retry = events
                return 0
            self.written += written
            return written

    def _write_singly(self, events: list[UsageEvent]) -> int:
        written = 0
        refused: list[UsageEvent] = []
        for event in events:
            try:
                written += self._write([event])
            except ValueError:
                logger.exception(
                    "usage event refused by the ledger", extra={"id": event.request_id}
                )
                refused.append(event)
            except Exception:
                self._retry.append(event)
        if refused:
            self._spill_events(refused)
        return written

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            try:
                self.flush()
            finally:
                # Only the flusher thread's own connection: a flush() called from another
                # thread (shutdown, tests) must leave that thread's connection alone.
                if self._close_connections:
                    close_old_connections()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway-meter", daemon=True)
        self._thread.start()

    def close(self, attempts: int = 5) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for attempt in range(attempts):
            self.flush()
            if not self.pending:
                return
            time.sleep(0.2 * (attempt + 1))
        self._spill()

    def _spill(self) -> None:
        with self._lock:
            events = self._retry + self._buffer
            self._retry, self._buffer = [], []
        if events:
            self._spill_events(events)

    def _spill_events(self, events: list[UsageEvent]) -> None:
        directory = self._spill_dir or Path(".")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"unwritten-usage-{os.getpid()}.jsonl"
        with path.open("a") as handle:
            for event in events:
                handle.write(json.dumps(dataclasses.asdict(event), default=str) + "\n")
        logger.error(
            "usage records spilled to disk", extra={"events": len(events), "path": str(path)}
        )
        if self._on_spill is not None:
            self._on_spill(len(events))
