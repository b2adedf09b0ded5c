"""The local backend: each replica is one vLLM server process on this host.

Processes are started from an argument list (never a shell), in their own session so that a
signal meant for the orchestrator does not reach them, with their own port and log file, and with
an environment built from scratch: platform secrets (database, Stripe, Django) never reach an
engine. The handle is ``pid:<pid>:<start time>``, so a recycled process id is never mistaken for
a replica after a restart of the orchestrator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from django.core.exceptions import ValidationError
from django.utils import timezone

from inference.engine_args import engine_args_argv, engine_args_validate
from inference.orchestrator.backends.base import (
    CannotStart,
    Capacity,
    Inspection,
    Launched,
    Liveness,
    NoCapacity,
    ReplicaSpec,
)

logger = logging.getLogger(__name__)

ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
# Passed through from the orchestrator's environment; everything else is left out.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "LD_LIBRARY_PATH")
PASS_PREFIXES = ("VLLM_", "HF_", "HUGGING_FACE_", "OMP_", "NCCL_", "TRANSFORMERS_")


@dataclass
class LocalConfig:
    run_dir: Path
    host: str = "127.0.0.1"
    ports: tuple[int, int] = (18000, 18999)
    python: str = sys.executable
    cpu_kvcache_gib: int = 1
    gpus: list[int] | None = None
    """GPU indices to use; None discovers them through NVML."""
    extra_env: dict[str, str] = field(default_factory=dict)


def _parse_handle(handle: str) -> tuple[int, str] | None:
    parts = handle.split(":")
    if len(parts) != 3 or parts[0] != "pid" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks) from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after the last ')' do not.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], fields[19]


class LocalBackend:
    name = "local"

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # A starting engine binds its port only once it has loaded, so a bind test alone would
        # hand the port out twice: ports stay taken until their replica is stopped or exits.
        self._handed_out: set[int] = set()
        self._port_of: dict[str, int] = {}
        if config.gpus is None:
            from inference.orchestrator.gpus import gpus_discover

            config.gpus = [gpu.index for gpu in gpus_discover()]

    def capacity(self) -> Capacity:
        return Capacity(gpus=list(self.config.gpus or []))

    # Starting

    def _free_port(self) -> int:
        low, high = self.config.ports
        candidates = list(range(low, high + 1))
        random.shuffle(candidates)
        for port in candidates:
            if port in self._handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((self.config.host, port))
                except OSError:
                    continue
            self._handed_out.add(port)
            return port
        raise NoCapacity(f"no free port between {low} and {high} on this host")

    def command(self, spec: ReplicaSpec, *, port: int, gpus: list[int]) -> list[str]:
        """The engine's argument list: every value is its own item, nothing is parsed by a shell."""
        args = dict(spec.engine_args)
        args.pop("runner", None)
        cpu = not self.capacity().gpus
        if cpu:
            # CPUs without bfloat16 kernels run float32 correctly; "auto" may pick bfloat16.
            args.setdefault("dtype", "float32")
        elif len(gpus) > 1:
            args.setdefault("tensor_parallel_size", len(gpus))
        argv = [
            self.config.python,
            "-m",
            ENGINE_MODULE,
            "--model",
            spec.model,
            "--served-model-name",
            spec.served_model_name,
            "--runner",
            spec.runner,
            "--host",
            self.config.host,
            "--port",
            str(port),
            "--disable-uvicorn-access-log",
        ]
        if spec.revision:
            argv += ["--revision", spec.revision]
        return argv + engine_args_argv(args)

    def environment(self, spec: ReplicaSpec, *, gpus: list[int]) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key in PASS_THROUGH or key.startswith(PASS_PREFIXES)
        }
        env.update(self.config.extra_env)
        env["PLATFORM_REPLICA_ID"] = spec.replica_id
        env["PYTHONUNBUFFERED"] = "1"
        if self.capacity().gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
        else:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.cpu_kvcache_gib))
        return env

    def start(self, spec: ReplicaSpec, *, gpus: list[int]) -> Launched:
        if spec.source == "local" and not Path(spec.model).is_dir():
            raise CannotStart(f"Model directory {spec.model} does not exist on this host.")
        try:
            # Checked again: the row may have been saved under an older allow-list.
            engine_args_validate(dict(spec.engine_args))
        except ValidationError as error:
            # The fix first: the allowed names that may follow make a long line, cut short in
            # places that quote it.
            raise CannotStart(
                "Engine arguments refused (edit the deployment to change them): "
                + " ".join(error.messages)
            ) from None
        port = self._free_port()
        log_dir = self.config.run_dir / "replicas"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{spec.replica_id}.log"
        argv = self.command(spec, port=port, gpus=gpus)
        try:
            with open(log_path, "ab") as log:
                log.write(f"=== {timezone.now().isoformat()} starting on port {port}\n".encode())
                log.flush()
                process = subprocess.Popen(  # noqa: S603 - an argument list, no shell
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(spec, gpus=gpus),
                    cwd=self.config.run_dir,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError:
            self._handed_out.discard(port)
            raise
        self._children[process.pid] = process
        stat = _proc_stat(process.pid)
        started = stat[1] if stat else "0"
        handle = f"pid:{process.pid}:{started}"
        self._port_of[handle] = port
        logger.info("started replica %s as pid %s on port %s", spec.replica_id, process.pid, port)
        return Launched(
            handle=handle,
            host=self.config.host,
            port=port,
            gpus=list(gpus),
            pid=process.pid,
            log_ref=str(log_path),
        )

    # Watching and stopping

    def _release_port(self, handle: str) -> None:
        port = self._port_of.pop(handle, None)
        if port is not None:
            self._handed_out.discard(port)

    def inspect(self, *, handle: str) -> Inspection:
        parsed = _parse_handle(handle)
        if parsed is None:
            return Inspection(Liveness.GONE, "unknown handle")
        pid, started = parsed
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return Inspection(Liveness.RUNNING)
            self._release_port(handle)
            # Kept until stop(): asking again must give the same answer, exit code included.
            return Inspection(Liveness.EXITED, _describe_exit(code))
        stat = _proc_stat(pid)
        if stat is None or stat[1] != started:
            self._release_port(handle)
            return Inspection(Liveness.GONE, "the process is gone")
        if stat[0] in ("Z", "X"):
            # A child of this process that a previous orchestrator object started: reap it.
            code = None
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(pid, os.WNOHANG)
                code = os.waitstatus_to_exitcode(status)
            return Inspection(Liveness.EXITED, _describe_exit(code))
        return Inspection(Liveness.RUNNING)

    def stop(self, *, handle: str, grace_s: float) -> None:
        parsed = _parse_handle(handle)
        if parsed is None:
            return
        pid, started = parsed
        stat = _proc_stat(pid)
        if stat is not None and stat[1] != started:
            self._release_port(handle)
            return  # the id now belongs to some other process
        # The engine runs helper processes in the same process group: signal them all.
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if self._wait_gone(pid, wait_s):
                # Nothing of it can hold the port now (a survivor keeps it until it is seen gone).
                self._release_port(handle)
                break
        self._children.pop(pid, None)

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        child = self._children.get(pid)
        while True:
            if child is not None:
                try:
                    child.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
                exited = child.returncode is not None
            else:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                stat = _proc_stat(pid)
                exited = stat is None or stat[0] in ("Z", "X")
                if not exited:
                    time.sleep(0.1)
            group_left = _group_alive(pid)
            if exited and not group_left:
                return True
            if time.monotonic() >= deadline:
                return False

    def log_tail(self, *, handle: str, log_ref: str, lines: int) -> list[str]:
        return log_file_tail(Path(log_ref), lines=lines) if log_ref else []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the process exited"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"the process was killed by {signal.Signals(-code).name}"
    return f"the process exited with code {code}"


def log_file_tail(path: Path, *, lines: int, max_bytes: int = 65536) -> list[str]:
    """The last ``lines`` non-empty lines of a log file, without reading all of it."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [line.rstrip() for line in text.split("\n") if line.strip()]
    return kept[-lines:]


def env_subset(env: Mapping[str, str]) -> dict[str, str]:
    """Exposed for tests: what of ``env`` an engine process would inherit."""
    return {k: v for k, v in env.items() if k in PASS_THROUGH or k.startswith(PASS_PREFIXES)}
