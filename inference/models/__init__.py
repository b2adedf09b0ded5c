from inference.models.deployments import (
    LIVE_REPLICA_STATES,
    Deployment,
    DeploymentState,
    ModelSource,
    Replica,
    ReplicaState,
    Runner,
)
from inference.models.refusals import RefusalCount  # noqa: F401
from inference.models.router import RouteScorer, ScorerState  # noqa: F401
from inference.models.routes import ExternalEndpoint, Route, RoutePolicy  # noqa: F401

__all__ = [
    "LIVE_REPLICA_STATES",
    "Deployment",
    "DeploymentState",
    "ModelSource",
    "Replica",
    "ReplicaState",
    "Runner",
]
