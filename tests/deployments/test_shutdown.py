"""Stopping the orchestrator stops its engines before a process manager gives up on it."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

from django.test import override_settings

from inference.conf import OrchestratorConfig
from inference.models import Replica, ReplicaState
from inference.orchestrator.reconcile import Orchestrator
from inference.orchestrator.runtime import local_backend
from inference.services.deployments import deployment_create

# honcho, which `make run` uses, kills a process that has not stopped 5 seconds after SIGTERM.
PROCESS_MANAGER_PATIENCE_S = 5.0


def _alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2] not in "ZX"


def test_an_engine_still_loading_is_stopped_within_the_process_managers_patience(
    tmp_path, org, owner
):
    # An "engine" that ignores SIGTERM, as vLLM's server does while it loads a model.
    engine = tmp_path / "engine"
    engine.write_text("#!/bin/sh\ntrap '' TERM\nexec sleep 300\n")
    engine.chmod(engine.stat().st_mode | stat.S_IXUSR)
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    config = OrchestratorConfig(
        run_dir=tmp_path, ports=(18950, 18959), engine_python=str(engine), stop_grace_s=20
    )
    with override_settings(MODEL_ROOTS=[str(tmp_path / "models")], RUN_DIR=tmp_path):
        deployment_create(
            org=org, actor=owner, name="tiny", source="local", model=str(model), gpus_per_replica=0
        )
        orchestrator = Orchestrator(backend=local_backend(config, gpus=[]), config=config)
        orchestrator.reconcile_once()
        replica = Replica.objects.get()
        assert replica.state == ReplicaState.STARTING and replica.pid
        pid = replica.pid
        try:
            started = time.monotonic()
            orchestrator.shutdown()
            elapsed = time.monotonic() - started
        finally:
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
    assert not _alive(pid), "the engine outlived the orchestrator"
    assert elapsed < PROCESS_MANAGER_PATIENCE_S
    replica.refresh_from_db()
    assert replica.state == ReplicaState.STOPPED
