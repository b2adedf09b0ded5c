"""Benchmark 1: latency the gateway adds in front of a fast local upstream (non-streaming).

Both arms run in the same process, interleaved round by round: the load generator calls the
upstream directly, then through the gateway, with the same body. Prints p50 and p99 of each arm
and the difference (the gateway's added latency) at each concurrency, plus metering on vs off
when asked. With ``--streams N`` it also streams answers of 64 events a millisecond apart
(concurrency 1 and 8) and prints the time to the first event directly and through the gateway,
and the gateway's CPU per event forwarded.

    .venv/bin/python bench/gateway_latency.py [--rounds 10] [--requests 400] [--concurrency 1 16]
        [--metering-off] [--floor] [--streams 32]

``--floor`` adds an arm through bench/gateway_floor.py, a proxy on the gateway's own stack that
does nothing but forward: the part of the added latency that any Python process in the path costs
on this machine, before the gateway does any work.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_common import (
    PYTHON,
    bench_env,
    cpu_seconds,
    free_port,
    load,
    log_dir,
    machine,
    merge,
    ms,
    request_bytes,
    setup_database,
    start_gateway,
    start_process,
    start_upstream,
    stop,
)
from gateway_upstream import STREAM_EVENTS

BODY = {"model": "fast", "messages": [{"role": "user", "content": "Say something short."}]}


async def measure(
    arms: dict[str, bytes],
    ports: dict[str, int],
    args: argparse.Namespace,
    pids: dict[str, int],
) -> None:
    for concurrency in args.concurrency:
        runs: dict[str, list] = {name: [] for name in arms}
        for name in arms:  # warm-up: connections, caches
            await load(ports[name], arms[name], concurrency=concurrency, total=concurrency * 20)
        for _ in range(args.rounds):
            for name in arms:
                pid = pids.get(name)
                before = cpu_seconds(pid) if pid else 0.0
                run = await load(
                    ports[name], arms[name], concurrency=concurrency, total=args.requests
                )
                run.cpu_s = cpu_seconds(pid) - before if pid else 0.0
                runs[name].append(run)
        merged = {name: merge(r) for name, r in runs.items()}
        base = merged["direct"]
        print(
            f"\nconcurrency {concurrency}: {len(base.latencies)} requests per arm, "
            f"{args.rounds} interleaved rounds"
        )
        for name, run in merged.items():
            print(
                f"  {name:<16} p50 {ms(run.pct(0.5))} ms  p99 {ms(run.pct(0.99))} ms  "
                f"{run.rps:8.0f} req/s  errors {run.errors}"
                + (
                    f"  gateway CPU {run.cpu_s / len(run.latencies) * 1e6:.0f} us/request"
                    if run.cpu_s
                    else ""
                )
            )
        for name, run in merged.items():
            if name == "direct":
                continue
            print(
                f"  added by {name:<8} p50 {ms(run.pct(0.5) - base.pct(0.5))} ms  "
                f"p99 {ms(run.pct(0.99) - base.pct(0.99))} ms  "
                f"throughput ratio {run.rps / base.rps:.3f}"
            )


async def measure_streams(
    ports: dict[str, int], key: str, pid: int, rounds: int, per_round: int
) -> None:
    """Streams of 64 events a millisecond apart: time to first event and gateway CPU per event."""
    body = {**BODY, "stream": True}
    arms = {
        "direct": request_bytes(ports["direct"], "/v1/chat/completions", body),
        "gateway": request_bytes(ports["gateway"], "/v1/chat/completions", body, key),
    }
    events = STREAM_EVENTS + 2  # the tokens, the final usage event (removed), [DONE]
    for concurrency in (1, 8):
        runs: dict[str, list] = {name: [] for name in arms}
        for name in arms:
            await load(ports[name], arms[name], concurrency=concurrency, total=concurrency * 2)
        for _ in range(rounds):
            for name in arms:
                before = cpu_seconds(pid) if name == "gateway" else 0.0
                total = max(per_round, concurrency)
                run = await load(ports[name], arms[name], concurrency=concurrency, total=total)
                run.cpu_s = cpu_seconds(pid) - before if name == "gateway" else 0.0
                runs[name].append(run)
        merged = {name: merge(r) for name, r in runs.items()}
        base, through = merged["direct"], merged["gateway"]
        print(
            f"\nstreaming, concurrency {concurrency}: {len(base.latencies)} streams of "
            f"{STREAM_EVENTS} events per arm, {rounds} interleaved rounds"
        )
        for name, run in merged.items():
            print(f"  {name:<8} time to first event p50 {ms(run.pct(0.5, run.ttfts))} ms")
        per_event = through.cpu_s / len(through.latencies) / events * 1e6
        print(
            f"  added by gateway: time to first event p50 "
            f"{ms(through.pct(0.5, through.ttfts) - base.pct(0.5, base.ttfts))} ms; "
            f"gateway CPU {per_event:.0f} us per event forwarded"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--metering-off", action="store_true", help="add a gateway arm without metering"
    )
    parser.add_argument(
        "--floor", action="store_true", help="add an arm through the do-nothing floor proxy"
    )
    parser.add_argument(
        "--streams", type=int, default=0, help="also stream this many answers per arm per round"
    )
    args = parser.parse_args()

    upstream_port = free_port()
    logs = log_dir()
    upstream = start_upstream(upstream_port, logs / "gwbench-upstream.log")
    db_path, key = setup_database({"fast": [upstream_port]})
    processes = [upstream]
    try:
        ports = {"direct": upstream_port, "gateway": free_port()}
        processes.append(
            start_gateway(
                db_path, ports["gateway"], logs / "gwbench-gateway.log", GATEWAY_ACCESS_LOG="0"
            )
        )
        if args.metering_off:
            ports["no-meter"] = free_port()
            processes.append(
                start_gateway(
                    db_path,
                    ports["no-meter"],
                    logs / "gwbench-gateway-nometer.log",
                    GATEWAY_ACCESS_LOG="0",
                    GATEWAY_METERING="0",
                )
            )
        pids = {"gateway": processes[1].pid}
        if args.metering_off:
            pids["no-meter"] = processes[2].pid
        if args.floor:
            ports["floor"] = free_port()
            floor_args = [PYTHON, "bench/gateway_floor.py", str(ports["floor"]), str(upstream_port)]
            processes.append(
                start_process(
                    floor_args, bench_env(db_path), ports["floor"], logs / "gwbench-floor.log"
                )
            )
            pids["floor"] = processes[-1].pid
        arms = {
            "direct": request_bytes(upstream_port, "/v1/chat/completions", BODY),
            **{
                name: request_bytes(port, "/v1/chat/completions", BODY, key)
                for name, port in ports.items()
                if name != "direct"
            },
        }
        print(
            f"machine: {machine()}; upstream: bench/gateway_upstream.py; gateway: uvicorn "
            "console.asgi:application (uvloop, httptools), access log off"
        )
        asyncio.run(measure(arms, ports, args, pids))
        if args.streams:
            asyncio.run(measure_streams(ports, key, processes[1].pid, args.rounds, args.streams))
    finally:
        for process in reversed(processes):
            stop(process)


if __name__ == "__main__":
    main()
