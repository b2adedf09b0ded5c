"""API failures become the deployment's reason; the orchestrator carries on (no cluster needed)."""

from __future__ import annotations

import json
from pathlib import Path

from console.models import Organisation, User
from inference.conf import OrchestratorConfig
from inference.models import DeploymentState
from inference.orchestrator.kubernetes.config import KubernetesConfig
from inference.orchestrator.kubernetes.loop import KubernetesOrchestrator
from inference.services.deployments import deployment_create


def test_unreachable_api_server_is_reported_not_raised(
    org: Organisation, owner: User, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                # Port 1 on loopback: nothing listens, every connection is refused at once.
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    kube = KubernetesConfig(namespace="inference", kubeconfig=str(kubeconfig))
    orchestrator = KubernetesOrchestrator(
        config=OrchestratorConfig(run_dir=tmp_path), kube=kube, probe_metrics=False
    )
    orchestrator.backend.api.configuration.retries = 0
    deployment = deployment_create(
        org=org, actor=owner, name="chat", source="huggingface", model="acme/tiny-chat"
    )
    orchestrator.reconcile_once()
    deployment.refresh_from_db()
    orchestrator.backend.close()
    # An outage is not the deployment's fault: its state stands, the reason says what is wrong.
    assert deployment.state == DeploymentState.PENDING
    assert deployment.state_reason.startswith(
        "The Kubernetes API could not be reached to read a Deployment"
    )
    assert deployment.state_reason.endswith("Retrying.")
