"""Fixtures for the Kubernetes backend: one real control plane per session, a namespace per test.

The cluster needs the binaries tests/k8s/build_binaries.sh builds (or K8S_BIN_DIR). Without them
these tests skip and say so, unless REQUIRE_K8S=1 (set by CI), which makes that a failure.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.cluster import (
    ORCHESTRATOR_USER,
    REPO,
    LocalCluster,
    binaries_dir,
    binaries_missing,
)

RBAC = REPO / "deploy" / "kubernetes" / "orchestrator-rbac.yaml"
GPUS_ON_NODE = 4


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    missing = binaries_missing()
    if missing:
        reason = (
            f"Kubernetes binaries missing from {binaries_dir()}: {', '.join(missing)} "
            "(build them with tests/k8s/build_binaries.sh, or set K8S_BIN_DIR)"
        )
        if os.environ.get("REQUIRE_K8S") == "1":
            pytest.fail(reason + "; REQUIRE_K8S=1 makes this a failure")
        pytest.skip(reason)
    from kubernetes import client

    from tests.k8s.kubelet import StandInKubelet

    cluster = LocalCluster(workdir=tmp_path_factory.mktemp("k8s"))
    kubelet: StandInKubelet | None = None
    try:
        cluster.start()
        admin = client.ApiClient(_configuration(cluster, "admin"))
        kubelet = StandInKubelet(admin, gpus=GPUS_ON_NODE)
        kubelet.start()
        cluster.admin = admin
        yield cluster
    finally:
        if kubelet is not None:
            kubelet.stop()
        cluster.stop()
        if kubelet is not None:
            kubelet.join()


def _configuration(cluster: LocalCluster, user: str) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(cluster.kubeconfig(user)), client_configuration=configuration
    )
    return configuration


@pytest.fixture
def admin_api(kube_cluster: LocalCluster) -> Any:
    return kube_cluster.admin


def wait_until(
    check: Callable[[], Any], *, timeout_s: float = 60.0, what: str = "", step_s: float = 0.2
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what or check}")
        time.sleep(step_s)


@pytest.fixture
def namespace(kube_cluster: LocalCluster, admin_api: Any) -> Iterator[str]:
    """A fresh namespace where the orchestrator's user holds exactly the documented Role."""
    from kubernetes import client

    core = client.CoreV1Api(admin_api)
    rbac = client.RbacAuthorizationV1Api(admin_api)
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})
    documents = list(yaml.safe_load_all(RBAC.read_text()))
    role = next(doc for doc in documents if doc["kind"] == "Role")
    role["metadata"]["namespace"] = name
    rbac.create_namespaced_role(name, role)
    rbac.create_namespaced_role_binding(
        name,
        {
            "metadata": {"name": ORCHESTRATOR_USER},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "platform-orchestrator",
            },
            "subjects": [
                {"kind": "User", "name": ORCHESTRATOR_USER, "apiGroup": "rbac.authorization.k8s.io"}
            ],
        },
    )

    def has_default_account() -> bool:
        # Pods cannot be created before the service-account controller has made "default".
        names = [a.metadata.name for a in core.list_namespaced_service_account(name).items]
        return "default" in names

    wait_until(has_default_account, timeout_s=60, what="the namespace's default service account")
    yield name
    kube_cluster.assert_running()
    core.delete_namespace(name)


@pytest.fixture
def orchestrator_kubeconfig(kube_cluster: LocalCluster) -> Path:
    return kube_cluster.kubeconfig(ORCHESTRATOR_USER)
