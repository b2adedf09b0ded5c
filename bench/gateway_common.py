"""Shared pieces of the gateway benchmarks: a throwaway database with an org, a key and
deployments, server processes, and a lean HTTP/1.1 load generator.

The load generator keeps one keep-alive connection per concurrent client, sends pre-encoded
requests and reads responses with the least parsing possible, so that on a two-core machine it
takes as little CPU as it can away from the servers being measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
UVICORN = str(ROOT / ".venv" / "bin" / "uvicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_env(db_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{db_path}",
        DJANGO_DEBUG="1",
        DJANGO_SETTINGS_MODULE="console.settings",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


_SETUP = """
import json, os
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from console.models import Organisation
from console.services.keys import api_key_create
from inference.models import Deployment, Replica
spec = json.loads(os.environ["BENCH_SPEC"])
org = Organisation.objects.create(name="Bench", slug="bench")
for name, ports in spec["deployments"].items():
    deployment = Deployment.objects.create(
        org=org, name=name, served_model_name=name, source="local", model="/bench/" + name,
        engine_args=spec["engine_args"],
    )
    for port in ports:
        Replica.objects.create(deployment=deployment, host="127.0.0.1", port=port, state="ready")
print(api_key_create(org=org, actor=None, name="bench", scopes=["inference"]).secret)
"""


def setup_database(
    deployments: dict[str, list[int]], *, engine_args: dict | None = None
) -> tuple[Path, str]:
    """Create a fresh SQLite database with one org, one inference key and the given deployments
    (name -> replica ports). Returns (database path, key). Runs in a child process so that this
    process stays free of Django."""
    db_path = Path(tempfile.mkdtemp(prefix="gwbench-")) / "bench.sqlite3"
    spec = json.dumps({"deployments": deployments, "engine_args": engine_args or {}})
    out = subprocess.run(
        [PYTHON, "-c", _SETUP],
        env=bench_env(db_path, BENCH_SPEC=spec),
        capture_output=True,
        text=True,
        check=True,
    )
    return db_path, out.stdout.strip().splitlines()[-1]


def start_process(args: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    process = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{args} did not listen on {port}; see {log}")


def start_upstream(port: int, log: Path) -> subprocess.Popen:
    """The fast local upstream (bench/gateway_upstream.py) on ``port``."""
    args = [
        UVICORN, "bench.gateway_upstream:app", "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
        "--lifespan", "off",
    ]  # fmt: skip
    return start_process(args, bench_env(Path("/nonexistent")), port, log)


def start_gateway(db_path: Path, port: int, log: Path, **env: str) -> subprocess.Popen:
    args = [
        UVICORN,
        "console.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]
    return start_process(args, bench_env(db_path, **env), port, log)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def request_bytes(port: int, path: str, body: dict, key: str = "") -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
    )
    if key:
        head += f"Authorization: Bearer {key}\r\n"
    return head.encode() + b"\r\n" + payload


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    out_bytes: int = 0
    cpu_s: float = 0.0  # CPU time of the process under test during the run, when measured
    first_error: bytes = b""
    round_rps: list[float] = field(default_factory=list)  # per round, when merged from rounds

    def pct(self, q: float, values: list[float] | None = None) -> float:
        data = sorted(values if values is not None else self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def _read_response(reader: asyncio.StreamReader, run: Run, started: float) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    run.statuses[status] = run.statuses.get(status, 0) + 1
    lower = head.lower()
    index = lower.find(b"content-length:")
    if index >= 0:
        end = lower.index(b"\r\n", index)
        body = await reader.readexactly(int(lower[index + 15 : end]))
        run.out_bytes += len(body)
        if status != 200 and not run.first_error:
            run.first_error = body[:300]
    else:  # chunked (streaming): read chunks, noting the first one's arrival
        first = True
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
            run.out_bytes += size
            if first:
                run.ttfts.append(time.perf_counter() - started)
                first = False
    return status == 200


async def load(port: int, request: bytes, *, concurrency: int, total: int) -> Run:
    """Send ``total`` requests over ``concurrency`` keep-alive connections."""
    run = Run()
    per_client = total // concurrency

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(per_client):
                started = time.perf_counter()
                writer.write(request)
                ok = await _read_response(reader, run, started)
                if ok:
                    run.latencies.append(time.perf_counter() - started)
                else:
                    run.errors += 1
        finally:
            writer.close()

    begin = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - begin
    return run


async def load_list(port: int, requests: list[bytes], *, concurrency: int) -> Run:
    """Send each of ``requests`` once, ``concurrency`` at a time over keep-alive connections."""
    run = Run()
    queue = list(requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                request = queue.pop()
                started = time.perf_counter()
                writer.write(request)
                if await _read_response(reader, run, started):
                    run.latencies.append(time.perf_counter() - started)
                else:
                    run.errors += 1
        finally:
            writer.close()

    begin = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - begin
    return run


def merge(runs: list[Run]) -> Run:
    merged = Run()
    for r in runs:
        merged.latencies += r.latencies
        merged.ttfts += r.ttfts
        merged.errors += r.errors
        for status, count in r.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
        merged.elapsed += r.elapsed
        merged.out_bytes += r.out_bytes
        merged.cpu_s += r.cpu_s
        merged.first_error = merged.first_error or r.first_error
        merged.round_rps.append(r.rps)
    return merged


def _own_cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime + cutime + cstime, parent pid) of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]), int(fields[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far of a process and all its descendants, live (such as the
    gateway's ledger writer) or exited (Linux /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ticks[int(entry.name)], parents[int(entry.name)] = _own_cpu_ticks(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(ticks.get(member, 0) for member in tree) / os.sysconf("SC_CLK_TCK")


def log_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "gwbench-logs"
    path.mkdir(exist_ok=True)
    return path


def machine() -> str:
    cpus = os.cpu_count()
    return f"{cpus} cores, Python {sys.version.split()[0]}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


__all__ = [
    "Run",
    "cpu_seconds",
    "load",
    "load_list",
    "log_dir",
    "machine",
    "merge",
    "ms",
    "statistics",
]
