"""The interface between the orchestrator and whatever runs replicas.

The orchestrator decides (how many replicas, which to start, drain or stop, when a replica is
ready); a backend only carries out start, inspect and stop for one replica, and says what capacity
it has. Nothing here speaks of processes: the local backend runs processes on this host, and a
Kubernetes backend would run a pod per replica behind the same calls.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ReplicaSpec:
    """What to run for one replica: a deployment's settings, never a command line."""

    replica_id: str
    deployment_id: str
    source: str
    model: str
    revision: str
    served_model_name: str
    runner: str
    engine_args: Mapping[str, Any]
    gpu_count: int


@dataclass(frozen=True)
class Launched:
    """Where a started replica can be reached, and how the backend finds it again."""

    handle: str
    host: str
    port: int
    gpus: list[int] = field(default_factory=list)
    pid: int | None = None
    log_ref: str = ""


class Liveness(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"
    GONE = "gone"
    """The backend knows nothing of this handle (never started here, or cleaned away)."""


@dataclass(frozen=True)
class Inspection:
    liveness: Liveness
    detail: str = ""
    """For an exited replica: how it ended (exit code, signal)."""


@dataclass(frozen=True)
class Capacity:
    gpus: list[int]
    """Accelerator indices this backend can hand out; empty where replicas run on the CPU."""

    @property
    def cpu_only(self) -> bool:
        return not self.gpus


class CannotStart(Exception):
    """The replica cannot be started as specified; the message says why (shown to the tenant)."""


class NoCapacity(Exception):
    """The host has no room for the replica now (no free port): it waits and is tried again.
    The message says what is short, as in "no free port between 18000 and 18999 on this host"."""


class Backend(Protocol):
    name: str

    def capacity(self) -> Capacity: ...

    def start(self, spec: ReplicaSpec, *, gpus: list[int]) -> Launched:
        """Start a replica on the given accelerators, or raise CannotStart or NoCapacity."""
        ...

    def inspect(self, *, handle: str) -> Inspection: ...

    def stop(self, *, handle: str, grace_s: float) -> None:
        """Ask the replica to stop, and force it after ``grace_s``. Safe to call twice."""
        ...

    def log_tail(self, *, handle: str, log_ref: str, lines: int) -> list[str]: ...
