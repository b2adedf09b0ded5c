from __future__ import annotations

from typing import Any

from console.models import Organisation, User
from inference.models import Deployment
from inference.services.deployments import deployment_create


def make_deployment(
    *, org: Organisation, actor: User | None, model_root: Any, **overrides: Any
) -> Deployment:
    params: dict[str, Any] = {
        "name": "tiny",
        "served_model_name": "tiny-llama",
        "source": "local",
        "model": str(model_root / "tiny"),
        "engine_args": {"max_model_len": 512},
        "gpus_per_replica": 1,
        "min_replicas": 1,
        "max_replicas": 2,
    }
    params.update(overrides)
    return deployment_create(org=org, actor=actor, **params)
