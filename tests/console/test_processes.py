"""The processes of the Procfile, started as it starts them: the Celery worker and beat come up
with a ``RUN_DIR`` that does not exist yet and keep their state under it, and every process logs
JSON lines on stderr (their banners aside, which go to stdout)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from console.celery import app

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def procfile_command(name: str) -> list[str]:
    """The Procfile's command line for ``name``, with this interpreter's scripts."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(name + ":"):
            command = shlex.split(line.split(":", 1)[1])
            return [str(BIN / Path(command[0]).name), *command[1:]]
    raise AssertionError(f"no {name} in the Procfile")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], Path]]]:
    """Starts a command; its stderr goes to the log file returned, its stdout elsewhere."""
    started: list[subprocess.Popen[str]] = []

    def run(command: list[str], **env: str) -> tuple[subprocess.Popen[str], Path]:
        log = tmp_path / f"process-{len(started)}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
        base.pop("REDIS_URL", None)
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={
                **base,
                "DJANGO_DEBUG": "1",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                # Celery warns before it sets up logging when it runs as root (as on CI machines).
                "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges",
                **env,
            },
            stdout=(tmp_path / f"process-{len(started)}.out").open("w"),
            stderr=log.open("w"),
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


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and all("level" in line and "message" in line for line in lines)
    return lines


def test_the_worker_starts_with_a_new_run_dir_and_logs_json(start, tmp_path):
    run_dir = tmp_path / "new" / "run"
    process, log = start(procfile_command("worker"), RUN_DIR=str(run_dir))
    text = _wait_for(log, process, lambda text: " ready." in text)
    assert (run_dir / "broker" / "processed").is_dir()
    assert any(str(line["message"]).endswith(" ready.") for line in _json_lines(text))


def test_beat_keeps_its_schedule_under_run_dir_and_logs_json(start, tmp_path):
    run_dir = tmp_path / "new" / "run"
    process, log = start(procfile_command("beat"), RUN_DIR=str(run_dir))
    text = _wait_for(log, process, lambda text: any(run_dir.glob("celerybeat-schedule*")))
    assert any(line["logger"] == "celery.beat" for line in _json_lines(text))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("access_log", [False, True])
def test_the_web_server_logs_json_its_own_lines_included(start, tmp_path, access_log):
    command = procfile_command("web")
    if access_log:
        command.remove("--no-access-log")
    port = str(_free_port())
    command[command.index("${PORT:-8000}")] = port
    process, log = start(command, RUN_DIR=str(tmp_path / "run"), GATEWAY_METER_PROCESS="0")
    _wait_for(log, process, lambda text: "Uvicorn running on" in text)
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    process.terminate()
    process.wait(timeout=30)
    lines = _json_lines(log.read_text())
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    assert not any("color_message" in line for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert bool(access) is access_log


def test_webhook_deliveries_have_a_worker_and_queue_of_their_own(start, tmp_path):
    """A tenant's slow endpoint holds only the webhooks worker: the Procfile's default worker
    does not take deliveries, and its own tasks never wait behind them."""

    def queue_of(task: str) -> str:
        route = app.amqp.router.route({}, task)
        return str(route["queue"].name)

    assert queue_of("console.tasks.webhook_deliver_task") == "webhooks"
    assert queue_of("billing.tasks.meter_events_task") == "celery"
    assert queue_of("console.tasks.webhook_retry_task") == "celery"
    worker = procfile_command("worker")
    webhooks = procfile_command("webhooks")
    assert worker[worker.index("--queues") + 1] == "celery"
    assert webhooks[webhooks.index("--queues") + 1] == "webhooks"
    # It starts beside the default worker, on the same broker, under a name of its own.
    run_dir = tmp_path / "run"
    first, first_log = start(worker, RUN_DIR=str(run_dir))
    second, second_log = start(webhooks, RUN_DIR=str(run_dir))
    _wait_for(first_log, first, lambda text: " ready." in text)
    text = _wait_for(second_log, second, lambda text: " ready." in text)
    assert any(str(line["message"]).startswith("webhooks@") for line in _json_lines(text))
