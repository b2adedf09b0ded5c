"""The Kubernetes manifests, names and drift check as pure functions (no cluster needed)."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from inference.orchestrator.kubernetes.backend import PodView
from inference.orchestrator.kubernetes.config import KubernetesConfig
from inference.orchestrator.kubernetes.loop import pod_state
from inference.orchestrator.kubernetes.manifests import (
    DeploymentFacts,
    SpecRefused,
    desired_deployment,
    desired_service,
    engine_argv,
    label_value,
    object_labels,
    object_name,
    spec_drift,
)

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CONFIG = KubernetesConfig(namespace="inference")


def facts(**changes: Any) -> DeploymentFacts:
    base = DeploymentFacts(
        id=str(uuid.UUID("12345678-1234-5678-1234-567812345678")),
        name="chat",
        org_id=str(uuid.uuid4()),
        org_slug="acme",
        source="huggingface",
        model="acme/tiny-chat",
        revision="",
        served_model_name="chat",
        runner="generate",
        engine_args={},
        gpus_per_replica=1,
        spec_version=1,
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    "name", ["chat", "a" * 63, "9-lives", "---", "x--y", "Llama_3.1 70B!", "ümlaut-model"]
)
def test_object_names_are_dns_labels_short_enough_for_pod_names(name: str) -> None:
    made = object_name(facts(name=name))
    assert DNS_1035.match(made), made
    # The ReplicaSet adds "-<10-char hash>" and the pod "-<5 chars>": the pod name stays <= 63.
    assert len(made) + 17 <= 63


def test_names_differ_per_deployment_even_with_the_same_name() -> None:
    names = {object_name(facts(id=str(uuid.uuid4()))) for _ in range(200)}
    assert len(names) == 200


def test_label_values_are_valid_for_any_slug_or_name() -> None:
    for raw in ["acme", "a" * 80, "-x-", "name with spaces", "日本", "a.b_c-d"]:
        value = label_value(raw)
        assert LABEL_VALUE.match(value) and len(value) <= 63, (raw, value)
    for key, value in object_labels(facts(name="x" * 63, org_slug="y" * 50)).items():
        assert LABEL_VALUE.match(value) and len(value) <= 63, (key, value)


def test_engine_arguments_use_the_allow_list_and_refuse_clearly() -> None:
    argv = engine_argv(facts(engine_args={"max_num_seqs": 8, "enforce_eager": False}), CONFIG)
    assert argv[-3:] == ["--no-enforce-eager", "--max-num-seqs", "8"]
    assert "--revision" not in argv
    assert engine_argv(facts(revision="abc123"), CONFIG)[-2:] == ["--revision", "abc123"]
    with pytest.raises(SpecRefused, match="port cannot be set"):
        engine_argv(facts(engine_args={"port": 1}), CONFIG)
    with pytest.raises(SpecRefused, match="shell is not an allowed engine argument"):
        engine_argv(facts(engine_args={"shell": "rm -rf /"}), CONFIG)
    with pytest.raises(SpecRefused, match="tensor_parallel_size 2 needs 2 GPUs"):
        engine_argv(facts(engine_args={"tensor_parallel_size": 2}), CONFIG)
    with pytest.raises(SpecRefused, match="under /models/"):
        engine_argv(facts(source="local", model="/srv/models/x"), CONFIG)
    with pytest.raises(SpecRefused, match="under /models/"):
        engine_argv(facts(source="local", model="/models/../etc"), CONFIG)
    assert engine_argv(facts(source="local", model="/models/tiny"), CONFIG)[1] == "/models/tiny"
    # Several GPUs: the engine spreads the model over all of them unless told otherwise.
    assert engine_argv(facts(gpus_per_replica=4), CONFIG)[-2:] == ["--tensor-parallel-size", "4"]


def test_gpu_limit_toleration_and_cache_volume_follow_the_settings() -> None:
    pod = desired_deployment(facts(), CONFIG, replicas=1)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["volumes"][0] == {"name": "model-cache", "emptyDir": {}}
    assert "nodeSelector" not in pod

    configured = KubernetesConfig(
        namespace="inference",
        model_cache_pvc="weights",
        node_selector={"nvidia.com/gpu.product": "H100"},
        memory_limit="64Gi",
        image_pull_secret="registry",
    )
    cpu = desired_deployment(facts(gpus_per_replica=0), configured, replicas=2)
    pod = cpu["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"memory": "64Gi"}}
    assert "tolerations" not in pod
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "weights"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert cpu["spec"]["replicas"] == 2
    service = desired_service(facts(), CONFIG)
    assert service["spec"]["selector"] == cpu["spec"]["selector"]["matchLabels"]


def test_drift_ignores_server_defaults_but_sees_every_field_we_set() -> None:
    desired = desired_deployment(facts(), CONFIG, replicas=1)
    live: dict[str, Any] = {
        **desired,
        "status": {"readyReplicas": 1},
        "metadata": {
            **desired["metadata"],
            "uid": "u",
            "labels": {**desired["metadata"]["labels"], "team": "x"},
        },
    }
    assert spec_drift(desired, live) == []

    container = {**desired["spec"]["template"]["spec"]["containers"][0]}
    container["args"] = [*container["args"], "--trust-remote-code"]
    edited = {**desired, "spec": {**desired["spec"], "template": {"metadata": {}, "spec": {
        **desired["spec"]["template"]["spec"], "containers": [container]}}}}  # fmt: skip
    found = spec_drift(desired, edited)
    assert "spec.template.spec.containers[0].args" in found
    assert "spec.template.metadata.labels" in found

    assert spec_drift({"limits": {"cpu": "1"}}, {"limits": {"cpu": "1000m"}}) == []
    assert spec_drift({"limits": {"cpu": "1"}}, {"limits": {"cpu": "2"}}) == ["limits.cpu"]
    assert spec_drift({"opts": {}}, {}) == []
    # A selector must match exactly: one more key changes what it selects.
    assert spec_drift({"selector": {"a": "1"}}, {"selector": {"a": "1", "b": "2"}}) == ["selector"]


def test_pod_states() -> None:
    base = PodView(
        name="p", phase="Pending", ip="", ready=False, deleting=False, scheduled=False,
        restarts=0, problem="", started_at=None, ready_at=None, spec_version=1,
    )  # fmt: skip
    assert pod_state(base) == ("pending", "scheduling")
    assert pod_state(replace(base, scheduled=True)) == ("starting", "pulling image")
    assert pod_state(replace(base, scheduled=True, phase="Running")) == ("starting", "loading")
    assert pod_state(replace(base, scheduled=True, phase="Running", ready=True))[0] == "ready"
    assert pod_state(replace(base, ready=True, deleting=True))[0] == "draining"
    assert pod_state(replace(base, phase="Failed"))[0] == "failed"


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_NAMESPACE", "inference")
    monkeypatch.setenv("K8S_NODE_SELECTOR", "pool=gpu, nvidia.com/gpu.present=true")
    config = KubernetesConfig.from_env()
    assert config.node_selector == {"pool": "gpu", "nvidia.com/gpu.present": "true"}
    monkeypatch.setenv("K8S_NODE_SELECTOR", "pool")
    with pytest.raises(ImproperlyConfigured, match="K8S_NODE_SELECTOR"):
        KubernetesConfig.from_env()
