"""Write the usage events gateways spilled to disk (RUN_DIR/unwritten-usage-<pid>.jsonl)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from inference.gateway.spill import spill_files, spill_replay


class Command(BaseCommand):
    help = (
        "Replay the usage events a gateway could not write at shutdown (unwritten-usage-*.jsonl) "
        "into the ledger. Idempotent on request id: running it again is safe."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--dir", default=None, help="Folder of the spill files (default: RUN_DIR)."
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Report what would be written; write, rename and create nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"] or settings.RUN_DIR)
        dry_run = bool(options["dry_run"])
        if not directory.is_dir():
            # A mistyped or unmounted folder must not read as "nothing is owed".
            raise CommandError(f"{directory} is not a folder: no spill files can be read there.")
        paths = spill_files(directory)
        if not paths:
            self.stdout.write(f"No spill files (unwritten-usage-<pid>.jsonl) in {directory}.")
            return
        verb = "would be written" if dry_run else "written"
        totals = [0, 0, 0]
        for path in paths:
            try:
                report = spill_replay(path, dry_run=dry_run)
            except DatabaseError as error:
                raise CommandError(
                    f"{path}: the database refused the write ({error}). The file is unchanged; "
                    "run the command again once the database is back (replaying is idempotent)."
                ) from None
            for number, _, reason in report.refused:
                self.stderr.write(f"{path}:{number}: refused: {reason}")
            line = (
                f"{path.name}: {report.lines} event(s): {report.written} {verb}, "
                f"{report.present} already present, {len(report.refused)} refused"
            )
            if report.grew:
                line += "; the file grew while it was read, so it was left in place: run again"
            elif report.replayed_to is not None:
                line += f"; renamed to {report.replayed_to.name}"
            if report.refused_to is not None:
                line += f"; refused lines kept in {report.refused_to.name}"
            self.stdout.write(line)
            totals[0] += report.written
            totals[1] += report.present
            totals[2] += len(report.refused)
        self.stdout.write(
            f"{len(paths)} file(s): {totals[0]} {verb}, {totals[1]} already present, "
            f"{totals[2]} refused" + (" (dry run: nothing was changed)" if dry_run else "")
        )
