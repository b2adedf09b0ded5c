"""Counting the requests this gateway refused before they reached a model.

The event loop adds to a small dict per refusal (key, status, code, minute); the snapshot poller's
thread hands the counts to the database every ``flush_s`` seconds, and the gateway's shutdown
hands over the rest. The counts are for tenants looking for requests that are not in the request
log; if the database cannot take them, they are kept for the next try up to ``MAX_ENTRIES``
distinct entries, then dropped (they are not billed).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from django.db import close_old_connections

if TYPE_CHECKING:
    from inference.services.refusals import RefusalKey

logger = logging.getLogger("inference.gateway")

MAX_ENTRIES = 10_000


class RefusalTally:
    def __init__(self, flush_s: float = 5.0) -> None:
        self.flush_s = flush_s
        self._counts: dict[RefusalKey, int] = {}
        self._lock = threading.Lock()
        self._flushed_at = time.monotonic()

    def add(self, org_id: int, key_id: uuid.UUID, status: int, code: str) -> None:
        entry = (org_id, key_id, int(time.time()) // 60 * 60, status, code)
        with self._lock:
            count = self._counts.get(entry)
            if count is not None:
                self._counts[entry] = count + 1
            elif len(self._counts) < MAX_ENTRIES:
                self._counts[entry] = 1

    def pending(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def flush(self, *, force: bool = False) -> int:
        """Write the counts (from a thread, never the event loop) if ``flush_s`` has passed or
        ``force``. Returns the number of refusals written."""
        if not force and time.monotonic() - self._flushed_at < self.flush_s:
            return 0
        self._flushed_at = time.monotonic()
        with self._lock:
            counts, self._counts = self._counts, {}
        if not counts:
            return 0
        from inference.services.refusals import refusals_add

        try:
            refusals_add(counts)
        except Exception:
            logger.exception("writing %d refusal counts failed; kept for the next try", len(counts))
            with self._lock:
                for entry, count in counts.items():
                    if entry in self._counts or len(self._counts) < MAX_ENTRIES:
                        self._counts[entry] = self._counts.get(entry, 0) + count
            return 0
        finally:
            close_old_connections()
        return sum(counts.values())
