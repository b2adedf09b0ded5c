"""The Celery worker and beat, started as the Procfile starts them: they come up with a
``RUN_DIR`` that does not exist yet, and keep their state under it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], Path]]]:
    started: list[subprocess.Popen[str]] = []

    def run(*args: str, **env: str) -> tuple[subprocess.Popen[str], Path]:
        log = tmp_path / f"process-{len(started)}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
        base.pop("REDIS_URL", None)
        process = subprocess.Popen(
            [CELERY, "-A", "console", *args],
            cwd=ROOT,
            env={**base, "DJANGO_DEBUG": "1", **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        return process, log

    yield run
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def _wait_for(log: Path, process: subprocess.Popen[str], found: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log.read_text()
        if found(text):
            return text
        assert process.poll() is None, f"exited with {process.returncode}:\n{text}"
        time.sleep(0.2)
    raise AssertionError(f"not seen within 90 s:\n{log.read_text()}")


def test_the_worker_starts_with_a_new_run_dir(start, tmp_path):
    run_dir = tmp_path / "new" / "run"
    process, log = start(
        "worker", "--loglevel", "INFO", "--concurrency", "1", "--pool", "threads",
        RUN_DIR=str(run_dir),
    )  # fmt: skip
    _wait_for(log, process, lambda text: " ready." in text)
    assert (run_dir / "broker" / "processed").is_dir()


def test_beat_keeps_its_schedule_under_run_dir(start, tmp_path):
    run_dir = tmp_path / "new" / "run"
    process, log = start("beat", "--loglevel", "INFO", RUN_DIR=str(run_dir))
    _wait_for(log, process, lambda text: any(run_dir.glob("celerybeat-schedule*")))
