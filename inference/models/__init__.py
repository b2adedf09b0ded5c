from inference.models.deployments import (
    LIVE_REPLICA_STATES,
    Deployment,
    DeploymentState,
    ModelSource,
    Replica,
    ReplicaState,
    Runner,
)

__all__ = [
    "LIVE_REPLICA_STATES",
    "Deployment",
    "DeploymentState",
    "ModelSource",
    "Replica",
    "ReplicaState",
    "Runner",
]
