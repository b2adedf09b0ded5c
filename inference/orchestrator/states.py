"""The replica state machine, the restart backoff and the deployment's summary state. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from inference.models import DeploymentState, ReplicaState

S = ReplicaState

# Which state each event moves a replica to, from which states.
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    # A process was started (first start, or a restart after a crash).
    "launched": (frozenset({S.PENDING}), S.STARTING),
    # /health answered and a one-token request succeeded.
    "became_ready": (frozenset({S.STARTING}), S.READY),
    # The process exited or stopped answering without being asked to; it will be started again.
    "crashed": (frozenset({S.STARTING, S.READY}), S.PENDING),
    # Too many crashes in a row: no more restarts until the deployment changes.
    "gave_up": (frozenset({S.PENDING, S.STARTING, S.READY}), S.FAILED),
    # Scale-down, replacement or shutdown: stop taking traffic, finish what is in flight.
    "drain": (frozenset({S.PENDING, S.STARTING, S.READY}), S.DRAINING),
    "stopped": (frozenset({S.PENDING, S.STARTING, S.READY, S.DRAINING}), S.STOPPED),
}


class InvalidTransition(Exception):
    pass


def replica_next_state(current: str, event: str) -> str:
    """The state after ``event``, or InvalidTransition (a bug in the caller, never tenant input)."""
    if event not in TRANSITIONS:
        raise InvalidTransition(f"unknown event {event!r}")
    sources, target = TRANSITIONS[event]
    if current not in sources:
        raise InvalidTransition(f"{event} is not possible from {current}")
    return target


def restart_backoff_s(*, crash_streak: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait before restart number ``crash_streak`` (1, 2, ...): base, 2x, 4x, capped."""
    if crash_streak < 1:
        return 0.0
    return float(min(cap_s, base_s * 2 ** (crash_streak - 1)))


@dataclass(frozen=True)
class DeploymentSummary:
    state: str
    reason: str


def deployment_summary(
    *,
    deleting: bool,
    paused: bool,
    desired: int,
    replica_states: Iterable[str],
    failure: str = "",
) -> DeploymentSummary:
    """One state for the deployment, from its settings and its live replicas' states."""
    states = list(replica_states)
    ready = sum(1 for s in states if s == S.READY)
    if deleting:
        return DeploymentSummary(DeploymentState.DELETING, "Stopping replicas before removal.")
    if paused:
        # Paused is what the tenant asked for last; resuming clears the failure and tries again.
        if failure:
            return DeploymentSummary(
                DeploymentState.PAUSED,
                "Paused after a failure (resuming tries again): " + failure.splitlines()[0],
            )
        return DeploymentSummary(DeploymentState.PAUSED, "Paused; no replicas run.")
    if failure:
        return DeploymentSummary(DeploymentState.FAILED, failure)
    if desired == 0:
        if ready:
            return DeploymentSummary(DeploymentState.READY, "Scaling to zero.")
        return DeploymentSummary(
            DeploymentState.IDLE, "Scaled to zero; the next request starts a replica."
        )
    if ready >= desired:
        return DeploymentSummary(DeploymentState.READY, f"{ready} of {desired} replicas ready.")
    if ready > 0:
        return DeploymentSummary(
            DeploymentState.DEGRADED, f"{ready} of {desired} replicas ready; the rest starting."
        )
    if any(s == S.STARTING for s in states):
        return DeploymentSummary(DeploymentState.STARTING, f"Starting {desired} replica(s).")
    return DeploymentSummary(DeploymentState.PENDING, "Waiting for the orchestrator.")


# What the engine's log says it is doing, in the order start-up goes through it.
_PHASES: list[tuple[str, re.Pattern[str]]] = [
    ("downloading", re.compile(r"Downloading|Fetching \d+ files|download(ing|ed) (model|weights)")),
    ("loading", re.compile(r"Starting to load model|Loading safetensors|Loading weights")),
    ("warming up", re.compile(r"Warming up|Memory profiling|[Cc]apturing (CUDA )?graphs")),
    ("serving", re.compile(r"Application startup complete")),
]


def startup_phase(log_lines: Iterable[str]) -> str:
    """The furthest start-up phase the log shows: launching, downloading, loading, warming up."""
    reached = "launching"
    rank = {name: i for i, (name, _) in enumerate(_PHASES)}
    for line in log_lines:
        for name, pattern in _PHASES:
            if (reached == "launching" or rank[name] > rank[reached]) and pattern.search(line):
                reached = name
    return reached


def lines_since_start(lines: list[str]) -> list[str]:
    """The lines after the latest start marker (a replica's log is kept across restarts)."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("=== "):
            return lines[index + 1 :]
    return lines


# A Python exception's last line, as an engine prints it when it dies: "TypeError: ...", maybe
# after vLLM's process label ("(APIServer pid=12) "). The name ends like an exception's, or is
# qualified by its module ("django.core.exceptions.ImproperlyConfigured: ..."); warnings are not
# causes.
_EXCEPTION_LINE = re.compile(
    r"^(?:\([\w.-]+ pid=\d+\) )?"
    r"((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)(?:: .+)?"
    r"|(?:[A-Za-z_]\w*\.)+[A-Z]\w*(?<!Warning): .+)$"
)

_VALIDATION = re.compile(r"\d+ validation errors? for \w+$")


def crash_cause(lines: Iterable[str]) -> str:
    """The exception that ended an engine, from its log's last lines, or "" if none shows.

    vLLM's front end ends with a generic "Engine core initialization failed. See root cause
    above."; an earlier, specific exception in the same lines is preferred to it. A pydantic
    "1 validation error for ModelConfig" (how vLLM refuses a configuration) takes the next line,
    which says what is wrong.
    """
    lines = list(lines)
    found = []
    for index, line in enumerate(lines):
        match = _EXCEPTION_LINE.match(line)
        if match is None:
            continue
        cause = match.group(1)
        if _VALIDATION.search(cause) and index + 1 < len(lines):
            cause = f"{cause}: {lines[index + 1].strip()}"
        found.append(cause)
    specific = [cause for cause in found if "root cause above" not in cause]
    cause = (specific or found or [""])[-1]
    return cause if len(cause) <= 300 else cause[:299] + "…"
