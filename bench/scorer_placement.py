"""Where the router's scorer runs: in the gateway's process (as shipped) or as a separate service.

    .venv/bin/python bench/scorer_placement.py [--prompts 60] [--rounds 3] [--tokens 512]

Both arms run in the same run, interleaved round by round, on distinct prompts (the digest cache
never answers) of exactly ``--tokens`` tokens:
- in-process: the gateway's own ``AutoRouter`` (the shipped scorer in a two-thread pool of the
  gateway process; the event loop awaits a future);
- service: the same scorer behind a minimal HTTP service in another process (uvicorn, one
  request at a time, scored in a thread so that its loop stays free), called over a keep-alive
  connection with the gateway's own upstream client.
For each it prints the latency scoring adds to a request (p50/p95) and how late the event loop
runs other work meanwhile (a 1 ms ticker's lateness, p50/p99), which is what requests to other
routes would feel; both with one scored request at a time and with four at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gateway_common import UVICORN, free_port, log_dir, start_process, stop  # noqa: E402

SERVICE_APP = "bench.scorer_placement:service"

_scorer: Any = None
_pool: Any = None


async def service(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The separate scoring service: POST a prompt (UTF-8 body), get its score back as text."""
    global _scorer, _pool
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if _scorer is None:
        from concurrent.futures import ThreadPoolExecutor

        from inference.scorer.scorer import Scorer

        _scorer = Scorer.load(threads=1)
        _pool = ThreadPoolExecutor(2)
    loop = asyncio.get_running_loop()
    score = await loop.run_in_executor(_pool, _scorer.score, body.decode())
    payload = repr(score).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def prompts(tokens: int, count: int) -> list[str]:
    from scorer_latency import make_prompts
    from tokenizers import Tokenizer

    from inference.scorer.embedder import packaged_model_dir

    tokenizer = Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return make_prompts(tokenizer, tokens, count)


class Ticker:
    """Wakes every millisecond and records how late it woke: the event loop's lag."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            self.lateness.append(max(0.0, time.perf_counter() - due))

    def __enter__(self) -> Ticker:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run_arm(
    score: Any, texts: list[str], concurrency: int
) -> tuple[list[float], list[float]]:
    latencies: list[float] = []
    queue = list(texts)

    async def worker() -> None:
        while queue:
            text = queue.pop()
            started = time.perf_counter()
            await score(text)
            latencies.append(time.perf_counter() - started)

    with Ticker() as ticker:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, ticker.lateness


async def main_async(args: argparse.Namespace) -> None:
    from inference.gateway.router import AutoRouter
    from inference.gateway.upstream import Pool
    from inference.routing.config import RouteSpec

    texts = prompts(args.tokens, args.prompts * args.rounds * 2 * 2 + 8)
    router = AutoRouter()
    spec = RouteSpec(name="bench", policy="auto")
    port = free_port()
    log = log_dir() / "scorer-service.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "console.settings"}
    server = start_process(
        [UVICORN, SERVICE_APP, "--port", str(port), "--no-access-log", "--lifespan", "off"],
        env,
        port,
        log,
    )
    pool = Pool(connect_timeout=5, read_timeout=60)
    url = f"http://127.0.0.1:{port}/score"

    async def in_process(text: str) -> float:
        result = await router.score(spec, "", None, text)
        assert isinstance(result, float), result
        return result

    async def remote(text: str) -> float:
        response = await pool.request("POST", url, text.encode())
        return float(await response.read())

    arms = {"in-process": in_process, "service": remote}
    try:
        for score in arms.values():  # warm-up: load the scorer, open the connection
            for text in texts[:4]:
                await score(text)
        texts = texts[8:]
        with Ticker() as idle:
            await asyncio.sleep(1.0)
        print(
            f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
            f"{args.tokens}-token prompts, distinct; idle loop lateness p50 "
            f"{pct(idle.lateness, 0.5):.2f} ms, p99 {pct(idle.lateness, 0.99):.2f} ms"
        )
        for concurrency in (1, 4):
            results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in arms}
            for _ in range(args.rounds):
                for name, score in arms.items():
                    batch, texts = texts[: args.prompts], texts[args.prompts :]
                    latencies, lateness = await run_arm(score, batch, concurrency)
                    results[name][0].extend(latencies)
                    results[name][1].extend(lateness)
            print(f"\nconcurrency {concurrency}: {args.prompts * args.rounds} prompts per arm")
            for name, (latencies, lateness) in results.items():
                print(
                    f"  {name:11s} scoring p50 {pct(latencies, 0.5):6.2f} ms  p95 "
                    f"{pct(latencies, 0.95):6.2f} ms   loop lateness p50 "
                    f"{pct(lateness, 0.5):5.2f} ms  p99 {pct(lateness, 0.99):5.2f} ms"
                )
            local = statistics.median(results["in-process"][0])
            service_p50 = statistics.median(results["service"][0])
            print(f"  service / in-process scoring p50: {service_p50 / local:.2f}")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        pool.close()
        router.close()
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=60, help="prompts per arm per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
