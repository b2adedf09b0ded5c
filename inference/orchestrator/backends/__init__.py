from inference.orchestrator.backends.base import (
    Backend,
    CannotStart,
    Capacity,
    Inspection,
    Launched,
    Liveness,
    NoCapacity,
    ReplicaSpec,
)

__all__ = [
    "Backend",
    "CannotStart",
    "Capacity",
    "Inspection",
    "Launched",
    "Liveness",
    "NoCapacity",
    "ReplicaSpec",
]
