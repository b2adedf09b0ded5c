"""The Kubernetes backend against a real API server, controller manager and scheduler.

What runs: etcd, kube-apiserver (token auth, RBAC, default admission), kube-controller-manager
and kube-scheduler, built from Debian's `kubernetes` source package. What does not: a container
runtime and a kubelet. There is none on this machine, so a stand-in kubelet (tests/k8s/kubelet.py)
registers a GPU node and reports bound pods Running and Ready; the real scheduler binds them (and
refuses pods that need more GPUs than the node has), the real controllers create ReplicaSets, pods
and Endpoints. The orchestrator talks to the API server as its own user with only the Role from
deploy/kubernetes/orchestrator-rbac.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from kubernetes.client.exceptions import ApiException

from console.models import Organisation, User
from console.snapshot import snapshot_version
from inference.conf import OrchestratorConfig
from inference.models import Deployment, DeploymentState, Replica, ReplicaState
from inference.orchestrator.kubernetes.backend import KubernetesBackend
from inference.orchestrator.kubernetes.config import KubernetesConfig
from inference.orchestrator.kubernetes.loop import KubernetesOrchestrator, deployment_facts
from inference.orchestrator.kubernetes.manifests import (
    DEPLOYMENT_ID,
    MANAGER,
    desired_deployment,
    desired_service,
    object_name,
    spec_drift,
)
from inference.services.deployments import (
    deployment_create,
    deployment_delete,
    deployment_pause,
    deployment_resume,
    deployment_scale,
    deployment_update,
)
from tests.k8s.conftest import wait_until

IMAGE = "vllm/vllm-openai:v0.11.0"


@pytest.fixture
def make_orchestrator(
    namespace: str, orchestrator_kubeconfig: Path, tmp_path: Path
) -> Callable[..., KubernetesOrchestrator]:
    made: list[KubernetesOrchestrator] = []

    def make(image: str = IMAGE) -> KubernetesOrchestrator:
        kube = KubernetesConfig(
            namespace=namespace, kubeconfig=str(orchestrator_kubeconfig), image=image
        )
        orchestrator = KubernetesOrchestrator(
            config=OrchestratorConfig(run_dir=tmp_path),
            kube=kube,
            # Pod IPs here belong to no container; load comes from the gateways' count only.
            probe_metrics=False,
        )
        made.append(orchestrator)
        return orchestrator

    yield make
    for orchestrator in made:
        orchestrator.backend.close()


@pytest.fixture
def apps(admin_api: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(admin_api)


@pytest.fixture
def core(admin_api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(admin_api)


def plain(admin_api: Any, obj: Any) -> dict[str, Any]:
    return admin_api.sanitize_for_serialization(obj)  # type: ignore[no-any-return]


def create(org: Organisation, owner: User, name: str = "chat", **fields: Any) -> Deployment:
    values: dict[str, Any] = {
        "source": "huggingface",
        "model": "acme/tiny-chat",
        "engine_args": {"max_model_len": 2048, "enable_prefix_caching": True},
        "gpus_per_replica": 1,
        "min_replicas": 1,
        "max_replicas": 1,
        **fields,
    }
    return deployment_create(org=org, actor=owner, name=name, **values)


def converge(
    orchestrator: KubernetesOrchestrator,
    deployment: Deployment,
    check: Callable[[Deployment], bool],
    *,
    what: str,
    timeout_s: float = 90.0,
) -> Deployment:
    """Run reconcile passes until ``check`` holds for the deployment as the database has it."""

    def one_pass() -> Deployment | None:
        orchestrator.reconcile_once()
        fresh = Deployment.objects.filter(pk=deployment.pk).first()
        return fresh if fresh is not None and check(fresh) else None

    return wait_until(one_pass, timeout_s=timeout_s, what=what)  # type: ignore[no-any-return]


def ready_rows(deployment: Deployment) -> list[Replica]:
    return list(
        Replica.objects.filter(deployment=deployment, state=ReplicaState.READY).order_by("handle")
    )


def endpoint_ips(core: Any, namespace: str, name: str) -> list[str]:
    endpoints = core.read_namespaced_endpoints(name, namespace)
    return sorted(a.ip for s in endpoints.subsets or [] for a in s.addresses or [])


def scale_of(apps: Any, namespace: str, name: str) -> int:
    # The API leaves out a zero count: read through the scale subresource, None means 0.
    return int(apps.read_namespaced_deployment_scale(name, namespace).spec.replicas or 0)


def ready_count(n: int) -> Callable[[Deployment], bool]:
    return lambda d: d.state == DeploymentState.READY and len(ready_rows(d)) == n


def test_create_makes_exact_objects_accepted_by_real_validation(
    org: Organisation,
    owner: User,
    namespace: str,
    make_orchestrator: Callable[..., KubernetesOrchestrator],
    apps: Any,
    core: Any,
    admin_api: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    deployment = create(org, owner)
    orchestrator = make_orchestrator()
    version_before = snapshot_version()
    with django_capture_on_commit_callbacks(execute=True):
        deployment = converge(orchestrator, deployment, ready_count(1), what="one ready replica")
    assert snapshot_version() > version_before  # the gateways were told

    facts = deployment_facts(deployment)
    name = object_name(facts)
    live = plain(admin_api, apps.read_namespaced_deployment(name, namespace))
    service = plain(admin_api, core.read_namespaced_service(name, namespace))
    # Everything we asked for is what the API server stored, after its defaulting.
    assert spec_drift(desired_deployment(facts, orchestrator.kube, replicas=1), live) == []
    assert spec_drift(desired_service(facts, orchestrator.kube), service) == []
    container = live["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["args"] == [
        "--model", "acme/tiny-chat",
        "--served-model-name", "chat",
        "--runner", "generate",
        "--host", "0.0.0.0",  # noqa: S104 - the pod's own address
        "--port", "8000",
        "--disable-uvicorn-access-log",
        "--enable-prefix-caching",
        "--max-model-len", "2048",
    ]  # fmt: skip
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "model-cache", "emptyDir": {}} in live["spec"]["template"]["spec"]["volumes"]
    labels = live["metadata"]["labels"]
    assert labels[DEPLOYMENT_ID] == str(deployment.pk)
    assert labels["console-platform/org-id"] == str(org.public_id)
    assert labels["app.kubernetes.io/managed-by"] == MANAGER
    assert live["metadata"]["annotations"]["console-platform/org-slug"] == org.slug

    # The one replica row is the pod behind the Service's ready endpoints.
    [row] = ready_rows(deployment)
    assert [row.host] == endpoint_ips(core, namespace, name)
    assert row.port == 8000 and row.backend == "kubernetes" and row.handle.startswith(name)

    # A restarted orchestrator adopts what exists: nothing is created or rewritten.
    before = live["metadata"]["resourceVersion"], live["metadata"]["uid"]
    restarted = make_orchestrator()
    restarted.reconcile_once()
    again = plain(admin_api, apps.read_namespaced_deployment(name, namespace))
    assert (again["metadata"]["resourceVersion"], again["metadata"]["uid"]) == before
    assert [r.handle for r in ready_rows(deployment)] == [row.handle]
    assert Replica.objects.filter(deployment=deployment).count() == 1


def test_scale_one_three_zero_and_pause(
    org: Organisation,
    owner: User,
    namespace: str,
    make_orchestrator: Callable[..., KubernetesOrchestrator],
    apps: Any,
    core: Any,
) -> None:
    orchestrator = make_orchestrator()
    deployment = converge(orchestrator, create(org, owner), ready_count(1), what="1 ready")
    name = object_name(deployment_facts(deployment))

    deployment_scale(deployment=deployment, actor=owner, min_replicas=3, max_replicas=3)
    deployment = converge(orchestrator, deployment, ready_count(3), what="3 ready replicas")
    assert scale_of(apps, namespace, name) == 3
    assert apps.read_namespaced_deployment(name, namespace).status.ready_replicas == 3
    hosts = sorted(r.host for r in ready_rows(deployment))
    assert hosts == endpoint_ips(core, namespace, name) and len(set(hosts)) == 3

    deployment_update(deployment=deployment, actor=owner, min_replicas=0, scale_down_delay_s=0)
    deployment = converge(
        orchestrator,
        deployment,
        lambda d: d.state == DeploymentState.IDLE and not Replica.objects.filter(
            deployment=d, state__in=[ReplicaState.READY, ReplicaState.DRAINING]
        ).exists(),
        what="scaled to zero",
    )  # fmt: skip
    assert scale_of(apps, namespace, name) == 0
    assert endpoint_ips(core, namespace, name) == []
    assert core.list_namespaced_pod(namespace).items == []

    # Pause is a scale to zero that keeps the objects; resume brings the minimum back.
    deployment_scale(deployment=deployment, actor=owner, min_replicas=1, max_replicas=1)
    deployment = converge(orchestrator, deployment, ready_count(1), what="1 ready again")
    deployment_pause(deployment=deployment, actor=owner)
    deployment = converge(
        orchestrator,
        deployment,
        lambda d: d.state == DeploymentState.PAUSED and not ready_rows(d),
        what="paused",
    )
    assert scale_of(apps, namespace, name) == 0
    assert core.read_namespaced_service(name, namespace) is not None
    deployment_resume(deployment=deployment, actor=owner)
    converge(orchestrator, deployment, ready_count(1), what="resumed")


def test_cluster_problems_become_the_deployment_reason(
    org: Organisation,
    owner: User,
    namespace: str,
    make_orchestrator: Callable[..., KubernetesOrchestrator],
) -> None:
    org.max_gpus = 16
    org.save()
    orchestrator = make_orchestrator()
    # The node has 4 GPUs: the real scheduler cannot place a replica that needs 8.
    big = create(org, owner, name="big", gpus_per_replica=8)
    big = converge(
        orchestrator,
        big,
        lambda d: "Insufficient nvidia.com/gpu" in d.state_reason,
        what="the scheduler's reason",
    )
    assert big.state == DeploymentState.STARTING or big.state == DeploymentState.PENDING
    [row] = Replica.objects.filter(deployment=big)
    assert row.state == ReplicaState.PENDING and row.progress == "scheduling"

    unpullable = make_orchestrator(image="registry.invalid/vllm:none")
    small = create(org, owner, name="small")
    small = converge(
        unpullable, small, lambda d: "ImagePullBackOff" in d.state_reason, what="pull failure"
    )
    assert 'Back-off pulling image "registry.invalid/vllm:none"' in small.state_reason
    assert not ready_rows(small)


def test_delete_removes_everything_it_created_and_nothing_else(
    org: Organisation,
    owner: User,
    namespace: str,
    make_orchestrator: Callable[..., KubernetesOrchestrator],
    apps: Any,
    core: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    orchestrator = make_orchestrator()
    deployment = create(org, owner, min_replicas=2, max_replicas=2)
    deployment = converge(orchestrator, deployment, ready_count(2), what="2 ready")
    name = object_name(deployment_facts(deployment))
    # Bystanders: objects of the same kinds and labels-in-common that are not this deployment's.
    other_labels = {"app.kubernetes.io/managed-by": MANAGER, DEPLOYMENT_ID: "someone-else"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "bystander", "labels": other_labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": other_labels},
                "template": {
                    "metadata": {"labels": other_labels},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                },
            },
        },
    )
    core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "bystander", "labels": other_labels},
         "spec": {"selector": other_labels, "ports": [{"port": 80}]}},
    )  # fmt: skip
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    deployment_delete(deployment=deployment, actor=owner)
    with django_capture_on_commit_callbacks(execute=True):
        wait_until(
            lambda: (
                orchestrator.reconcile_once()
                or not Deployment.objects.filter(pk=deployment.pk).exists()
            ),
            timeout_s=90,
            what="the deployment to be removed",
        )
    selector = f"{DEPLOYMENT_ID}={deployment.pk}"
    assert apps.list_namespaced_deployment(namespace, label_selector=selector).items == []
    assert apps.list_namespaced_replica_set(namespace, label_selector=selector).items == []
    assert core.list_namespaced_service(namespace, label_selector=selector).items == []
    assert core.list_namespaced_pod(namespace, label_selector=selector).items == []
    assert not Replica.objects.filter(deployment_id=deployment.pk).exists()
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == [
        "bystander"
    ]
    assert [s.metadata.name for s in core.list_namespaced_service(namespace).items] == ["bystander"]
    assert core.read_namespaced_config_map("bystander", namespace) is not None
    del name


def test_hand_edits_and_stale_versions_are_reconciled(
    org: Organisation,
    owner: User,
    namespace: str,
    make_orchestrator: Callable[..., KubernetesOrchestrator],
    apps: Any,
    core: Any,
    admin_api: Any,
) -> None:
    orchestrator = make_orchestrator()
    deployment = converge(orchestrator, create(org, owner), ready_count(1), what="1 ready")
    facts = deployment_facts(deployment)
    name = object_name(facts)
    merge = {"_content_type": "application/merge-patch+json"}

    # By hand: another image, an extra engine flag, no GPU limit; the Service selects nothing.
    # As `kubectl edit` does: read, change, replace, and again after a conflict (the controller
    # may write the Deployment's status between the read and the replace).
    for _ in range(20):
        live = plain(admin_api, apps.read_namespaced_deployment(name, namespace))
        container = live["spec"]["template"]["spec"]["containers"][0]
        container["image"] = "attacker/vllm:latest"
        container["args"].append("--trust-remote-code")
        container["resources"] = {}
        try:
            apps.replace_namespaced_deployment(name, namespace, live)
            break
        except ApiException as error:
            if error.status != 409:
                raise
    else:
        pytest.fail("the hand edit kept conflicting with the controller")
    core.patch_namespaced_service(
        name, namespace, {"spec": {"selector": {"app": "nothing"}}}, **merge
    )
    # The backend reads the cluster; then someone scales by hand before it writes.
    observed = orchestrator.backend.observe(facts)
    apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 2}}, **merge)

    orchestrator.reconcile_deployment(Deployment.objects.get(pk=deployment.pk), observed=observed)
    # The stale write was refused and redone from a fresh read (the controller writing status
    # after our repair may cost one more round).
    assert orchestrator.backend.conflicts >= 1

    live = plain(admin_api, apps.read_namespaced_deployment(name, namespace))
    assert spec_drift(desired_deployment(facts, orchestrator.kube, replicas=1), live) == []
    assert live["spec"]["replicas"] == 1
    service = plain(admin_api, core.read_namespaced_service(name, namespace))
    assert spec_drift(desired_service(facts, orchestrator.kube), service) == []

    def pods() -> list[Any]:
        """The deployment's pods that are not on their way out (the hand-made rollout's pods
        linger, terminating, for a moment after the repair has replaced them)."""
        listed = core.list_namespaced_pod(namespace, label_selector=f"{DEPLOYMENT_ID}={facts.id}")
        return [pod for pod in listed.items if pod.metadata.deletion_timestamp is None]

    def repaired_pod_alone() -> bool:
        # One pod, and the repaired template's: right after the scale-down, the hand-made
        # rollout's last pod can be the only one for a moment, before the repair's replaces it.
        left = pods()
        return len(left) == 1 and left[0].spec.containers[0].image == IMAGE

    deployment = converge(
        orchestrator,
        deployment,
        lambda d: (
            ready_count(1)(d)
            and len(endpoint_ips(core, namespace, name)) == 1
            and repaired_pod_alone()
        ),
        what="the repaired rollout to be ready again, with one pod left",
    )
    [pod] = pods()
    assert pod.spec.containers[0].image == IMAGE
    assert "--trust-remote-code" not in pod.spec.containers[0].args

    # Deleted by hand: recreated on the next pass (Service) or pass after (pods).
    # (The 1.20 server answers a Service delete with a Status, which this client cannot parse.)
    core.delete_namespaced_service(name, namespace, _preload_content=False)
    converge(
        orchestrator,
        deployment,
        lambda d: ready_count(1)(d) and len(endpoint_ips(core, namespace, name)) == 1,
        what="the Service to be recreated",
    )


def test_invalid_spec_is_refused_before_reaching_the_cluster(
    org: Organisation,
    owner: User,
    namespace: str,
    make_orchestrator: Callable[..., KubernetesOrchestrator],
    apps: Any,
    core: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    # Through the service: the allow-list refuses, nothing is written anywhere.
    with pytest.raises(ValidationError) as refused:
        create(org, owner, name="bad", engine_args={"trust_remote_code": True})
    assert "trust_remote_code cannot be set" in str(refused.value)
    assert not Deployment.objects.filter(name="bad").exists()

    # Rows this backend cannot run: refused by the orchestrator with the reason, no API write.
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    settings.MODEL_ROOTS = [str(tmp_path / "models")]
    local = create(org, owner, name="local", source="local", model=str(model_dir))
    stale = create(org, owner, name="stale")
    # Written before a rule change (or by hand): the row holds an argument now out of range.
    Deployment.objects.filter(pk=stale.pk).update(engine_args={"max_num_seqs": 0})
    orchestrator = make_orchestrator()
    orchestrator.reconcile_once()

    local.refresh_from_db()
    stale.refresh_from_db()
    assert local.state == DeploymentState.FAILED
    assert "a local model must be a folder under /models/" in local.state_reason
    assert stale.state == DeploymentState.FAILED
    assert "max_num_seqs must be between 1 and 4096, got 0" in stale.state_reason
    assert apps.list_namespaced_deployment(namespace).items == []
    assert core.list_namespaced_service(namespace).items == []
    assert not Replica.objects.filter(deployment__org=org).exists()


def test_backend_without_rights_reports_forbidden(
    org: Organisation,
    owner: User,
    kube_cluster: Any,
    orchestrator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    """In a namespace where it holds no Role, the orchestrator says so instead of crashing."""
    kube = KubernetesConfig(namespace="kube-public", kubeconfig=str(orchestrator_kubeconfig))
    backend = KubernetesBackend(kube)
    orchestrator = KubernetesOrchestrator(
        config=OrchestratorConfig(run_dir=tmp_path), kube=kube, backend=backend,
        probe_metrics=False,
    )  # fmt: skip
    deployment = create(org, owner)
    orchestrator.reconcile_once()
    deployment.refresh_from_db()
    backend.close()
    assert deployment.state == DeploymentState.FAILED
    assert "403 Forbidden" in deployment.state_reason
    assert "docs/operations.md" in deployment.state_reason


def test_run_orchestrator_command_uses_the_kubernetes_backend(
    org: Organisation,
    owner: User,
    namespace: str,
    orchestrator_kubeconfig: Path,
    apps: Any,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.core.management import call_command

    settings.RUN_DIR = str(tmp_path)
    monkeypatch.setenv("ORCHESTRATOR_BACKEND", "kubernetes")
    monkeypatch.setenv("K8S_NAMESPACE", namespace)
    monkeypatch.setenv("K8S_KUBECONFIG", str(orchestrator_kubeconfig))
    monkeypatch.setenv("K8S_ENGINE_IMAGE", IMAGE)
    deployment = create(org, owner)
    call_command("run_orchestrator", "--once")
    name = object_name(deployment_facts(deployment))
    live = apps.read_namespaced_deployment(name, namespace)
    assert live.spec.template.spec.containers[0].image == IMAGE
