"""docs/operations.md's table of periodic jobs is the beat schedule the settings define."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

from console.celery import app

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(
    r"^\| `(?P<entry>[a-z-]+)` \| `(?P<task>[a-z_.]+)` \| (?P<every>\d+) (?P<unit>min|h) \|"
)


def _documented() -> dict[str, tuple[str, float]]:
    section = OPERATIONS.read_text().split("## Periodic jobs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        found = ROW.match(line)
        if found:
            seconds = int(found["every"]) * (60 if found["unit"] == "min" else 3600)
            rows[found["entry"]] = (found["task"], float(seconds))
    return rows


def test_the_documented_periodic_jobs_are_the_beat_schedule():
    schedule = {
        entry: (str(spec["task"]), float(spec["schedule"]))  # type: ignore[arg-type]
        for entry, spec in settings.CELERY_BEAT_SCHEDULE.items()
    }
    assert _documented() == schedule


def test_every_scheduled_task_is_registered_with_the_worker():
    app.loader.import_default_modules()
    missing = [
        spec["task"]
        for spec in settings.CELERY_BEAT_SCHEDULE.values()
        if spec["task"] not in app.tasks
    ]
    assert missing == []
