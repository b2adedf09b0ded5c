"""Settings of the Kubernetes backend, from the environment (see the README and docs/operations.md).

Only the orchestrator reads them, and only with ORCHESTRATOR_BACKEND=kubernetes; the `kubernetes`
client library (the `k8s` extra) is imported when a client is actually built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

from console.envvars import env_bool, env_int, env_list, env_str

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Pin a tag in production (docs/operations.md); the engine flags used here need vLLM 0.10 or later.
DEFAULT_IMAGE = "vllm/vllm-openai:latest"


def _key_values(name: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in env_list(name):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ImproperlyConfigured(f"{name} must look like key=value,key=value; got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


@dataclass
class KubernetesConfig:
    namespace: str
    kubeconfig: str = ""
    """A kubeconfig file; empty: $KUBECONFIG, ~/.kube/config, or the in-cluster account."""
    context: str = ""
    image: str = DEFAULT_IMAGE
    image_pull_secret: str = ""
    engine_port: int = 8000
    model_cache_pvc: str = ""
    """A PersistentVolumeClaim (ReadWriteMany) for weights; empty: an emptyDir per pod."""
    model_cache_path: str = "/models"
    hf_token_secret: str = ""
    """A Secret with key `token`, passed to the engine as HF_TOKEN for gated repositories."""
    node_selector: dict[str, str] = field(default_factory=dict)
    gpu_toleration: bool = True
    """Tolerate the `nvidia.com/gpu` NoSchedule taint GPU node pools usually carry."""
    cpu_request: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    shm_size: str = "2Gi"
    startup_timeout_s: int = 1800
    """How long a replica may take to download and load its model before Kubernetes restarts it."""
    progress_deadline_s: int = 3600
    request_timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> KubernetesConfig:
        namespace = env_str("K8S_NAMESPACE")
        if not namespace and IN_CLUSTER_NAMESPACE.exists():
            namespace = IN_CLUSTER_NAMESPACE.read_text().strip()
        if not namespace:
            raise ImproperlyConfigured(
                "K8S_NAMESPACE must name the namespace the orchestrator manages "
                "(outside a cluster there is no default)."
            )
        return cls(
            namespace=namespace,
            kubeconfig=env_str("K8S_KUBECONFIG"),
            context=env_str("K8S_CONTEXT"),
            image=env_str("K8S_ENGINE_IMAGE", DEFAULT_IMAGE),
            image_pull_secret=env_str("K8S_IMAGE_PULL_SECRET"),
            engine_port=env_int("K8S_ENGINE_PORT", 8000, minimum=1, maximum=65535),
            model_cache_pvc=env_str("K8S_MODEL_CACHE_PVC"),
            model_cache_path=env_str("K8S_MODEL_CACHE_PATH", "/models"),
            hf_token_secret=env_str("K8S_HF_TOKEN_SECRET"),
            node_selector=_key_values("K8S_NODE_SELECTOR"),
            gpu_toleration=env_bool("K8S_GPU_TOLERATION", True),
            cpu_request=env_str("K8S_CPU_REQUEST"),
            memory_request=env_str("K8S_MEMORY_REQUEST"),
            memory_limit=env_str("K8S_MEMORY_LIMIT"),
            shm_size=env_str("K8S_SHM_SIZE", "2Gi"),
            startup_timeout_s=env_int("K8S_STARTUP_TIMEOUT_S", 1800, minimum=10),
        )

    def api_client(self) -> ApiClient:
        """A client of its own (not the library's global default), from kubeconfig or in-cluster."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if self.kubeconfig or not IN_CLUSTER_NAMESPACE.exists():
            config.load_kube_config(
                config_file=self.kubeconfig or None,
                context=self.context or None,
                client_configuration=configuration,
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
