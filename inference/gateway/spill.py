"""Replaying the usage events a gateway could not write: the meter's spill files.

When the database cannot be reached at shutdown, the meter (``metering.Meter._spill_events``)
appends its events to ``RUN_DIR/unwritten-usage-<pid>.jsonl``, one JSON object per line (an
event the ledger refused as invalid goes there too). ``manage.py usage_replay`` reads every such
file, rebuilds the events and writes them through billing's door, ``usage_record_batch``, which
is idempotent on the request id: a file replayed twice, or an event that did reach the ledger
before the spill, is stored once. A fully processed file is renamed ``*.replayed``; lines that
cannot be read or that the ledger refuses are kept, as they were, in ``*.refused.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import re
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction

from inference.gateway.ledger import UsageEvent, usage_write

SPILL_NAME = re.compile(r"^unwritten-usage-\d+\.jsonl$")
BATCH = 500

Write = Callable[[Sequence[UsageEvent]], int]


class SpillLineError(ValueError):
    """A line that does not hold a usage event."""


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(UsageEvent)


def _value(name: str, hint: Any, value: Any) -> Any:
    """``value`` as read from JSON, converted to the field's type (or SpillLineError)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
    if value is None:
        if type(None) in args:
            return None
        raise SpillLineError(f"{name} must not be null")
    if args:
        hint = next(a for a in args if a is not type(None))
    if hint is datetime:
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                if moment.tzinfo is not None:
                    return moment
        raise SpillLineError(f"{name} must be a time with its offset, got {value!r}")
    if hint is uuid.UUID:
        try:
            return uuid.UUID(str(value))
        except ValueError:
            raise SpillLineError(f"{name} must be a UUID, got {value!r}") from None
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise SpillLineError(f"{name} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def usage_event_parse(line: str) -> UsageEvent:
    """Rebuild the UsageEvent that ``Meter._spill_events`` wrote as ``line``."""
    try:
        data = json.loads(line)
    except ValueError as error:
        raise SpillLineError(f"not JSON ({error})") from None
    if not isinstance(data, dict):
        raise SpillLineError("not a JSON object")
    hints = _field_types()
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise SpillLineError(f"unknown field(s): {', '.join(unknown)}")
    required = [f.name for f in fields(UsageEvent) if f.default is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise SpillLineError(f"missing field(s): {', '.join(missing)}")
    return UsageEvent(**{name: _value(name, hints[name], value) for name, value in data.items()})


@dataclass
class SpillReport:
    """What replaying one file did (or, in a dry run, would do)."""

    path: Path
    lines: int = 0
    written: int = 0
    present: int = 0
    # (line number, the line as it was, why it was refused)
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    replayed_to: Path | None = None
    refused_to: Path | None = None
    grew: bool = False  # the file changed while it was being replayed: not renamed


def spill_files(directory: Path) -> list[Path]:
    """The spill files waiting in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if SPILL_NAME.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def _write_batch(
    batch: list[tuple[int, str, UsageEvent]], write: Write, report: SpillReport
) -> None:
    try:
        with transaction.atomic():
            written = write([event for _, _, event in batch])
    except (ValueError, IntegrityError):
        # One bad event refuses the whole batch: write them one by one to find it.
        for number, text, event in batch:
            try:
                with transaction.atomic():
                    one = write([event])
            except (ValueError, IntegrityError) as error:
                report.refused.append((number, text, str(error)))
                continue
            report.written += one
            report.present += 1 - one
        return
    report.written += written
    report.present += len(batch) - written


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


class _DryRun(Exception):
    pass


def spill_replay(path: Path, *, dry_run: bool = False, write: Write = usage_write) -> SpillReport:
    """Write one spill file's events through the ledger's door; rename what is done.

    Each batch commits on its own. Database errors (the ledger still unreachable) propagate,
    with the file left as it was; running again is safe. A dry run writes everything inside one
    transaction that is then rolled back, and renames or creates no file (a row the database
    would only refuse at commit, such as one for a deleted organisation, counts as written)."""
    report = SpillReport(path)
    raw = path.read_bytes()
    batch: list[tuple[int, str, UsageEvent]] = []
    try:
        with transaction.atomic() if dry_run else contextlib.nullcontext():
            for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                if not line.strip():
                    continue
                report.lines += 1
                try:
                    batch.append((number, line, usage_event_parse(line)))
                except SpillLineError as error:
                    report.refused.append((number, line, str(error)))
                if len(batch) >= BATCH:
                    _write_batch(batch, write, report)
                    batch = []
            if batch:
                _write_batch(batch, write, report)
            if dry_run:
                raise _DryRun
    except _DryRun:
        return report
    report.refused.sort()
    if path.stat().st_size != len(raw):
        report.grew = True  # lines were appended meanwhile: the next run picks them up
        return report
    if report.refused:
        report.refused_to = path.with_name(path.name.removesuffix(".jsonl") + ".refused.jsonl")
        with report.refused_to.open("a") as handle:
            for _, text, _ in report.refused:
                handle.write(text + "\n")
    report.replayed_to = _free_name(path.with_name(path.name + ".replayed"))
    path.rename(report.replayed_to)
    return report
