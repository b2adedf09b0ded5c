"""Prometheus metrics for one gateway process, rendered in the text exposition format.

Kept deliberately small: counters and fixed-bucket histograms keyed by label tuples, updated on
the event loop thread (no locks), rendered on demand at ``/metrics``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped, strict=True)) + "}"


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help_text, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, values: tuple[str, ...], amount: float = 1) -> None:
        self.values[values] = self.values.get(values, 0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for values, total in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labels, values)} {total:g}")
        return lines


class Gauge:
    def __init__(
        self, name: str, help_text: str, labels: tuple[str, ...], read: Callable[[], dict]
    ) -> None:
        self.name, self.help, self.labels, self.read = name, help_text, labels, read

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for values, value in sorted(self.read().items()):
            lines.append(f"{self.name}{_labels(self.labels, values)} {value:g}")
        return lines


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...] = LATENCY_BUCKETS_S,
    ) -> None:
        self.name, self.help, self.labels, self.buckets = name, help_text, labels, buckets
        # Per label tuple: counts per bucket (non-cumulative, last is +Inf), sum.
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        entry = self.values.get(values)
        if entry is None:
            entry = ([0] * (len(self.buckets) + 1), [0.0])
            self.values[values] = entry
        entry[0][bisect.bisect_left(self.buckets, amount)] += 1
        entry[1][0] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        names = (*self.labels, "le")
        for values, (counts, total) in sorted(self.values.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f"{self.name}_bucket{_labels(names, (*values, le))} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labels, values)} {total[0]:g}")
            lines.append(f"{self.name}_count{_labels(self.labels, values)} {running}")
        return lines


class GatewayMetrics:
    def __init__(self, inflight: Callable[[], dict]) -> None:
        self.requests = Counter(
            "gateway_requests_total", "Requests answered, by route and status.", ("route", "status")
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the last byte, by route and status.",
            ("route", "status"),
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request to the first streamed chunk, by route.",
            ("route",),
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Failed upstream attempts, by target and kind.",
            ("target", "kind"),
        )
        self.tokens = Counter(
            "gateway_tokens_total", "Tokens metered, by route and kind.", ("route", "kind")
        )
        self.refused = Counter(
            "gateway_refused_total",
            "Requests refused before reaching a model (no usage record), by status and code.",
            ("status", "code"),
        )
        self.usage_dropped = Counter(
            "gateway_usage_records_unwritten_total",
            "Usage records that could not be written to the ledger and were spilled to disk.",
            (),
        )
        self.limiter_errors = Counter(
            "gateway_limiter_errors_total",
            "Limits steps Redis failed or did not answer in time, by step (admit, settle).",
            ("step",),
        )
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Requests in flight to each deployment from this process.",
            ("deployment",),
            inflight,
        )
        self._all = (
            self.requests,
            self.latency,
            self.ttft,
            self.upstream_errors,
            self.tokens,
            self.refused,
            self.usage_dropped,
            self.limiter_errors,
            self.inflight,
        )

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self._all:
            lines += metric.render()
        return ("\n".join(lines) + "\n").encode()
