from inference.orchestrator.backends.base import (
    Backend,
    CannotStart,
    Capacity,
    Inspection,
    Launched,
    Liveness,
    ReplicaSpec,
)

__all__ = [
    "Backend",
    "CannotStart",
    "Capacity",
    "Inspection",
    "Launched",
    "Liveness",
    "ReplicaSpec",
]
