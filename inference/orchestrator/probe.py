"""Talking to a replica's engine over HTTP: health, a one-token request, and /metrics."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import httpx

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")
WANTED = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
}


@dataclass(frozen=True)
class EngineMetrics:
    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens_total: float
    generation_tokens_total: float
    read_at: float

    @property
    def load(self) -> int:
        return self.running + self.waiting


def metrics_parse(text: str, *, read_at: float | None = None) -> EngineMetrics:
    """Sum each wanted series over its label sets (one engine per replica, but be general)."""
    totals = dict.fromkeys(WANTED.values(), 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None or match["name"] not in WANTED:
            continue
        try:
            totals[WANTED[match["name"]]] += float(match["value"])
        except ValueError:
            continue
    return EngineMetrics(
        running=int(totals["running"]),
        waiting=int(totals["waiting"]),
        kv_cache_usage=totals["kv_cache_usage"],
        prompt_tokens_total=totals["prompt_tokens_total"],
        generation_tokens_total=totals["generation_tokens_total"],
        read_at=time.time() if read_at is None else read_at,
    )


def metrics_reading(
    metrics: EngineMetrics, previous: EngineMetrics | None
) -> dict[str, float | int | str]:
    """What the console shows of a replica's load, with token rates since the previous reading."""
    reading: dict[str, float | int | str] = {
        "running": metrics.running,
        "waiting": metrics.waiting,
        "kv_cache_usage": round(metrics.kv_cache_usage, 4),
        "prompt_tokens_total": int(metrics.prompt_tokens_total),
        "generation_tokens_total": int(metrics.generation_tokens_total),
    }
    if previous is not None and metrics.read_at > previous.read_at:
        span = metrics.read_at - previous.read_at
        generated = metrics.generation_tokens_total - previous.generation_tokens_total
        prompted = metrics.prompt_tokens_total - previous.prompt_tokens_total
        reading["generation_tokens_per_s"] = round(max(0.0, generated) / span, 1)
        reading["prompt_tokens_per_s"] = round(max(0.0, prompted) / span, 1)
    return reading


class EngineProbe:
    """Short-timeout HTTP checks; one pooled client for the orchestrator's whole life."""

    def __init__(self, *, timeout_s: float = 2.0, request_timeout_s: float = 60.0) -> None:
        self._client = httpx.Client(timeout=timeout_s, trust_env=False)
        self._request_timeout_s = request_timeout_s

    def close(self) -> None:
        self._client.close()

    def healthy(self, base_url: str) -> bool:
        try:
            return self._client.get(base_url + "/health").status_code == 200
        except httpx.HTTPError:
            return False

    def one_token(self, base_url: str, *, model: str, runner: str) -> str | None:
        """Serve one tiny request end to end; None when it worked, else what went wrong."""
        body: dict[str, object]
        if runner == "pooling":
            path, body = "/v1/embeddings", {"model": model, "input": "ready?"}
        else:
            path = "/v1/completions"
            body = {"model": model, "prompt": "ready?", "max_tokens": 1, "temperature": 0}
        try:
            response = self._client.post(
                base_url + path, json=body, timeout=self._request_timeout_s
            )
        except httpx.HTTPError as error:
            return f"{path}: {type(error).__name__}"
        if response.status_code != 200:
            return f"{path} answered {response.status_code}: {response.text[:200]}"
        return None

    def metrics(self, base_url: str) -> EngineMetrics | None:
        try:
            response = self._client.get(base_url + "/metrics")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return metrics_parse(response.text)
