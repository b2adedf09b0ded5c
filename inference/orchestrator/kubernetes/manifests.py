"""What the cluster should hold for one model deployment: a Deployment and a Service. Pure.

The objects are plain dictionaries in the API's own (camelCase) shape, so what we send, what the
tests compare and what ``spec_drift`` checks against the live object are the same thing. Names
are derived from the deployment's UUID, so they are valid DNS labels and never collide; labels tie
every object (and every pod) to the org and the deployment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from inference.engine_args import engine_args_argv, engine_args_validate
from inference.orchestrator.kubernetes.config import KubernetesConfig

MANAGER = "console-platform-orchestrator"
PREFIX = "console-platform/"
DEPLOYMENT_ID = PREFIX + "deployment-id"
ORG_ID = PREFIX + "org-id"
CONTAINER = "engine"
ENGINE_COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_VOLUME = "model-cache"

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


class SpecRefused(Exception):
    """The deployment cannot run on Kubernetes as specified; the message says why."""


@dataclass(frozen=True)
class DeploymentFacts:
    """The fields of a deployment row the manifests depend on (keeps this module ORM-free)."""

    id: str
    name: str
    org_id: str
    org_slug: str
    source: str
    model: str
    revision: str
    served_model_name: str
    runner: str
    engine_args: Mapping[str, Any]
    gpus_per_replica: int
    spec_version: int


def object_name(facts: DeploymentFacts) -> str:
    """``llm-<readable>-<16 hex of the UUID>``: a DNS-1035 label (Services need one) of at most
    41 characters, so pod names (+ 17 characters of hashes) stay within 63."""
    readable = _NOT_LABEL.sub("-", facts.name.lower()).strip("-")[:20].strip("-") or "model"
    return f"llm-{readable}-{facts.id.replace('-', '')[:16]}"


def label_value(raw: str) -> str:
    """A label value from free text: at most 63 characters of [A-Za-z0-9_.-], alphanumeric ends."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)[:63].strip("-_.")
    return value if _LABEL_VALUE.match(value) else ""


def selector_labels(facts: DeploymentFacts) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": MANAGER, DEPLOYMENT_ID: facts.id}


def object_labels(facts: DeploymentFacts) -> dict[str, str]:
    return {
        **selector_labels(facts),
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/component": "inference-engine",
        "app.kubernetes.io/instance": object_name(facts),
        ORG_ID: facts.org_id,
        PREFIX + "org": label_value(facts.org_slug),
        PREFIX + "deployment": label_value(facts.name),
    }


def object_annotations(facts: DeploymentFacts) -> dict[str, str]:
    return {
        PREFIX + "org-slug": facts.org_slug,
        PREFIX + "deployment-name": facts.name,
        PREFIX + "served-model-name": facts.served_model_name,
    }


def engine_argv(facts: DeploymentFacts, config: KubernetesConfig) -> list[str]:
    """The container's arguments, after the same allow-list the local backend uses.

    Raises SpecRefused before anything reaches the cluster: an argument outside the allow-list, a
    bad value, more tensor-parallel ranks than GPUs, or a local model outside the model volume.
    """
    try:
        args = engine_args_validate(dict(facts.engine_args))
    except Exception as error:  # ValidationError: flatten its messages into one sentence list
        messages = getattr(error, "messages", [str(error)])
        raise SpecRefused("Engine arguments refused: " + " ".join(messages)) from None
    args.pop("runner", None)
    gpus = facts.gpus_per_replica
    tensor_parallel = args.get("tensor_parallel_size", 1)
    if gpus and tensor_parallel > gpus:
        raise SpecRefused(
            f"tensor_parallel_size {tensor_parallel} needs {tensor_parallel} GPUs per replica; "
            f"the deployment asks for {gpus}."
        )
    if gpus > 1:
        args.setdefault("tensor_parallel_size", gpus)
    model = facts.model
    if facts.source == "local":
        root = config.model_cache_path.rstrip("/") + "/"
        if not model.startswith(root) or "/../" in model + "/":
            raise SpecRefused(
                f"On Kubernetes a local model must be a folder under {root} on the model volume; "
                f"{model} is not."
            )
    argv = [
        "--model",
        model,
        "--served-model-name",
        facts.served_model_name,
        "--runner",
        facts.runner,
        # Inside the pod: the Service and the pod IP are the only ways in.
        "--host",
        "0.0.0.0",  # noqa: S104
        "--port",
        str(config.engine_port),
        "--disable-uvicorn-access-log",
    ]
    if facts.revision:
        argv += ["--revision", facts.revision]
    return argv + engine_args_argv(args)


def _resources(facts: DeploymentFacts, config: KubernetesConfig) -> dict[str, Any]:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if facts.gpus_per_replica:
        # Extended resources are requested by their limit; a GPU is never shared.
        limits[GPU_RESOURCE] = str(facts.gpus_per_replica)
    if config.memory_limit:
        limits["memory"] = config.memory_limit
    if config.cpu_request:
        requests["cpu"] = config.cpu_request
    if config.memory_request:
        requests["memory"] = config.memory_request
    resources: dict[str, Any] = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    return resources


def desired_deployment(
    facts: DeploymentFacts, config: KubernetesConfig, *, replicas: int
) -> dict[str, Any]:
    name = object_name(facts)
    port = config.engine_port
    health = {"httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"}}
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": config.model_cache_path.rstrip("/") + "/huggingface"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if config.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": config.hf_token_secret, "key": "token"},
                },
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": config.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(ENGINE_COMMAND),
        "args": engine_argv(facts, config),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "resources": _resources(facts, config),
        # Start-up (download, load, warm-up) may take many minutes; until the startup probe
        # passes, the liveness probe does not run, so a slow load is not killed as a hang.
        "startupProbe": {
            **health,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, config.startup_timeout_s // 10),
        },
        "readinessProbe": {
            **health,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
            "successThreshold": 1,
        },
        "livenessProbe": {
            **health,
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 4,
        },
        "volumeMounts": [
            {"name": MODEL_VOLUME, "mountPath": config.model_cache_path},
            {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108 - in the pod, not here
        ],
    }
    if not container["resources"]:
        del container["resources"]
    cache_volume: dict[str, Any] = (
        {"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": config.model_cache_pvc}}
        if config.model_cache_pvc
        else {"name": MODEL_VOLUME, "emptyDir": {}}
    )
    pod_spec: dict[str, Any] = {
        # The engine never talks to the Kubernetes API: no token in the pod, no service env vars.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [
            cache_volume,
            # vLLM's workers share tensors through /dev/shm, which is 64 MiB by default.
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
        ],
    }
    if config.node_selector:
        pod_spec["nodeSelector"] = dict(config.node_selector)
    if facts.gpus_per_replica and config.gpu_toleration:
        pod_spec["tolerations"] = [
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
    if config.image_pull_secret:
        pod_spec["imagePullSecrets"] = [{"name": config.image_pull_secret}]
    labels = object_labels(facts)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": labels,
            "annotations": object_annotations(facts),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(facts)},
            "revisionHistoryLimit": 2,
            "progressDeadlineSeconds": config.progress_deadline_s,
            # A new engine version comes up before an old one goes, so serving never stops
            # (this needs one replica's worth of spare GPUs during a rollout).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {PREFIX + "spec-version": str(facts.spec_version)},
                },
                "spec": pod_spec,
            },
        },
    }


def desired_service(facts: DeploymentFacts, config: KubernetesConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(facts),
            "namespace": config.namespace,
            "labels": object_labels(facts),
            "annotations": object_annotations(facts),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(facts),
            "ports": [
                {
                    "name": "http",
                    "port": config.engine_port,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def _quantity(value: Any) -> Decimal | None:
    try:
        from kubernetes.utils import parse_quantity

        return Decimal(parse_quantity(value))
    except (ValueError, TypeError, ArithmeticError):
        return None


def spec_drift(desired: Any, live: Any, path: str = "") -> list[str]:
    """Where ``live`` departs from ``desired``: every field we set must hold our value.

    Fields we never set (server defaults, status, other managers' labels) are ignored; lists
    must match item by item and in length, so an added container argument or env var counts,
    and selectors must match exactly.
    Quantities compare by value ("1" CPU equals "1000m"), as the server may rewrite them.
    """
    if isinstance(desired, Mapping):
        if path.rsplit(".", 1)[-1] in ("selector", "matchLabels"):
            # A selector must match exactly: one more key changes what it selects.
            return [] if isinstance(live, Mapping) and dict(live) == dict(desired) else [path]
        if not desired:
            return [] if not live else ([] if isinstance(live, Mapping) else [path or "/"])
        if not isinstance(live, Mapping):
            return [path or "/"]
        found: list[str] = []
        for key, value in desired.items():
            found += spec_drift(value, live.get(key), f"{path}.{key}" if path else key)
        return found
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        found = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            found += spec_drift(want, have, f"{path}[{index}]")
        return found
    if desired == live:
        return []
    segments = set(re.split(r"[.\[]", path))
    if "limits" in segments or "requests" in segments or path.endswith("sizeLimit"):
        left, right = _quantity(desired), _quantity(live)
        if left is not None and left == right:
            return []
    return [path]
