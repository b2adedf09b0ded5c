"""The ledger writer process: the gateway's usage batches are written by a child process.

Rating and inserting a record costs tens of microseconds of CPU. In the gateway's own process
that work would run in a thread that competes with the event loop for the GIL, and every request
in flight during a flush would wait for it. ``ProcessWriter`` sends each batch (pickled, a few
microseconds per record) over a pipe to a child process that calls billing's door and answers
with the number of records written; the gateway's flusher thread waits for that answer with the
GIL released, so a flush costs the event loop almost nothing.

The child ignores SIGINT and SIGTERM (a signal to the process group must not kill it before the
gateway has flushed its last batch) and exits when the pipe closes. If it dies anyway, the batch
in hand fails, the meter keeps it for the next flush, and the next call starts a new child; the
ledger is idempotent on request id, so a batch written twice is stored once. A ``ValueError``
from the ledger (an invalid event) is raised again in the gateway, as it would be in-process.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import operator
import os
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the child imports this module before Django is set up
    from inference.gateway.ledger import UsageEvent

logger = logging.getLogger(__name__)

_OK, _INVALID, _FAILED = "ok", "invalid", "failed"
# Usage events per message to the writer: about 0.3 ms of pickling each.
SEND_CHUNK = 64


class WriterUnavailable(RuntimeError):
    """The writer process could not take or finish a batch (the meter retries it later)."""


def _child_main(conn: Connection, database_names: dict[str, str], secret_key: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    # The parent's key, whether it came from the environment or the development default.
    os.environ["DJANGO_SECRET_KEY"] = secret_key
    import django
    from django.conf import settings

    django.setup()
    # Never log the writer's queries, even where DEBUG is on (the embedded default): Django
    # would render every batch's statement with all its parameters into a list kept in memory.
    settings.DEBUG = False
    from django.db import close_old_connections, connections

    # The database the parent uses now (a test database differs from the configured name).
    for alias, name in database_names.items():
        settings.DATABASES[alias]["NAME"] = name
        connections[alias].settings_dict["NAME"] = name
        connections[alias].close()

    from billing.ledger import UsageEvent, usage_record_batch

    conn.send((_OK, 0))  # ready
    while True:
        rows: list[tuple[Any, ...]] = []
        try:
            while True:  # a batch comes in chunks; the last one says so
                last, chunk = conn.recv()
                rows += chunk
                if last:
                    break
        except (EOFError, OSError):
            return  # the gateway closed the pipe or died
        try:
            events = [UsageEvent(*row) for row in rows]
            conn.send((_OK, usage_record_batch(events)))
        except ValueError as error:
            conn.send((_INVALID, str(error)))
        except Exception as error:  # the database is away: the gateway retries later
            conn.send((_FAILED, f"{type(error).__name__}: {error}"))
        finally:
            close_old_connections()


@functools.cache
def _event_fields() -> Callable[[UsageEvent], tuple[Any, ...]]:
    """A usage event's field values in declaration order (what `UsageEvent(*values)` takes)."""
    from billing.ledger import UsageEvent

    names = [field.name for field in dataclasses.fields(UsageEvent)]
    return operator.attrgetter(*names)


class ProcessWriter:
    """A callable with ``usage_write``'s signature that writes in a child process."""

    def __init__(self, *, start_timeout_s: float = 60.0) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: Any = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        with self._lock:
            self._ensure()

    def _ensure(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        self._discard()
        from django.conf import settings
        from django.db import connections

        names = {alias: str(connections[alias].settings_dict["NAME"]) for alias in connections}
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_child_main,
            args=(child, names, settings.SECRET_KEY),
            name="gateway-ledger-writer",
            daemon=True,
        )
        process.start()
        child.close()
        self._conn, self._process = parent, process
        self.starts += 1
        if not parent.poll(self._start_timeout_s):
            self._discard()
            raise WriterUnavailable("the ledger writer process did not start")
        self._receive(parent)
        return parent

    def _receive(self, conn: Connection) -> int:
        try:
            status, value = conn.recv()
        except (EOFError, OSError) as error:
            self._discard()
            raise WriterUnavailable("the ledger writer process exited") from error
        if status == _INVALID:
            raise ValueError(value)
        if status == _FAILED:
            raise WriterUnavailable(value)
        return int(value)

    def __call__(self, events: Sequence[UsageEvent]) -> int:
        # Each event crosses the pipe as a tuple of its fields, in order: a third less CPU to
        # pickle than the dataclass (whose pickling looks its fields up for every instance).
        # It goes in chunks: pickling is one C call that holds the GIL throughout, and a whole
        # batch at once would stall the event loop for milliseconds.
        rows = list(map(_event_fields(), events))
        with self._lock:
            conn = self._ensure()
            try:
                for start in range(0, max(len(rows), 1), SEND_CHUNK):
                    conn.send((start + SEND_CHUNK >= len(rows), rows[start : start + SEND_CHUNK]))
            except (OSError, ValueError) as error:
                self._discard()
                raise WriterUnavailable("the ledger writer process exited") from error
            return self._receive(conn)

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
        self._conn = self._process = None

    def close(self) -> None:
        """Close the pipe; the child finishes the batch in hand (there is none) and exits."""
        with self._lock:
            self._discard()
