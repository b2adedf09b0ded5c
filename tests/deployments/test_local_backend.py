"""The local backend's command line and environment, without starting an engine."""

from __future__ import annotations

import itertools
import socket
import stat
import time
from pathlib import Path

import pytest
from django.test import override_settings

from inference.conf import OrchestratorConfig
from inference.models import Deployment, DeploymentState, Replica, ReplicaState
from inference.orchestrator.backends import CannotStart, Liveness, NoCapacity, ReplicaSpec
from inference.orchestrator.backends.local import LocalBackend, LocalConfig, log_file_tail
from inference.orchestrator.reconcile import Orchestrator
from inference.orchestrator.runtime import local_backend
from inference.services.deployments import deployment_create


def spec(**overrides):  # type: ignore[no-untyped-def]
    params = {
        "replica_id": "r-1",
        "deployment_id": "d-1",
        "source": "local",
        "model": "/models/tiny",
        "revision": "",
        "served_model_name": "tiny-llama",
        "runner": "generate",
        "engine_args": {"max_model_len": 512, "enforce_eager": True},
        "gpu_count": 1,
    }
    params.update(overrides)
    return ReplicaSpec(**params)


def backend(tmp_path: Path, gpus: list[int]) -> LocalBackend:
    return LocalBackend(LocalConfig(run_dir=tmp_path, python="/venv/bin/python", gpus=gpus))


def test_cpu_command_is_an_argument_list_with_float32(tmp_path):
    argv = backend(tmp_path, []).command(spec(), port=18001, gpus=[])
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--model"] == "/models/tiny"
    assert pairs["--served-model-name"] == "tiny-llama"
    assert pairs["--port"] == "18001"
    assert pairs["--dtype"] == "float32"
    assert "--enforce-eager" in argv


def test_names_with_spaces_stay_one_argument(tmp_path):
    argv = backend(tmp_path, []).command(spec(model="/models/a b; rm -rf ~"), port=1, gpus=[])
    assert "/models/a b; rm -rf ~" in argv


def test_gpu_command_spreads_over_its_gpus(tmp_path):
    argv = backend(tmp_path, [0, 1, 2, 3]).command(
        spec(engine_args={}, gpu_count=2), port=1, gpus=[2, 3]
    )
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--dtype" not in argv


def test_revision_is_passed_for_hub_models(tmp_path):
    argv = backend(tmp_path, []).command(
        spec(source="huggingface", model="org/m", revision="v1"), port=1, gpus=[]
    )
    assert argv[argv.index("--revision") + 1] == "v1"


def test_engine_environment_leaves_platform_secrets_out(tmp_path, monkeypatch):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "s3cret")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db/x")
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_live_x")
    monkeypatch.setenv("HF_HOME", "/cache/hf")
    env = backend(tmp_path, []).environment(spec(), gpus=[])
    assert "DJANGO_SECRET_KEY" not in env
    assert "DATABASE_URL" not in env
    assert "STRIPE_SECRET_KEY" not in env
    assert env["HF_HOME"] == "/cache/hf"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["PLATFORM_REPLICA_ID"] == "r-1"
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_gpu_environment_pins_the_assigned_devices(tmp_path):
    env = backend(tmp_path, [0, 1, 2]).environment(spec(), gpus=[1, 2])
    assert env["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env


def test_a_missing_model_directory_cannot_start(tmp_path):
    with pytest.raises(CannotStart, match="does not exist"):
        backend(tmp_path, []).start(spec(model=str(tmp_path / "nope")), gpus=[])


def test_unknown_handles_are_gone_and_stopping_them_is_harmless(tmp_path):
    local = backend(tmp_path, [])
    assert local.inspect(handle="nonsense").liveness.value == "gone"
    assert local.inspect(handle="pid:999999999:1").liveness.value == "gone"
    local.stop(handle="pid:999999999:1", grace_s=0.1)


def test_log_tail_reads_the_end_of_a_large_log(tmp_path):
    log = tmp_path / "replica.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)) + "\n\nlast words\n")
    assert log_file_tail(log, lines=2) == ["line 99999", "last words"]
    assert log_file_tail(tmp_path / "missing.log", lines=5) == []


def test_a_host_out_of_ports_waits_for_capacity_and_fails_nothing(tmp_path, org, owner, mailoutbox):
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = OrchestratorConfig(run_dir=tmp_path, ports=(port, port))
        with pytest.raises(NoCapacity, match=f"no free port between {port} and {port}"):
            local_backend(config, gpus=[]).start(spec(model=str(model)), gpus=[])
        with override_settings(MODEL_ROOTS=[str(tmp_path / "models")]):
            deployment_create(
                org=org,
                actor=owner,
                name="tiny",
                source="local",
                model=str(model),
                gpus_per_replica=0,
            )
            orchestrator = Orchestrator(backend=local_backend(config, gpus=[]), config=config)
            orchestrator.reconcile_once()
            orchestrator.reconcile_once()
    deployment = Deployment.objects.get()
    assert deployment.state == DeploymentState.PENDING
    assert deployment.state_reason.endswith(
        f"Waiting for capacity: no free port between {port} and {port} on this host."
    )
    assert list(Replica.objects.values_list("state", flat=True)) == [ReplicaState.PENDING]
    assert mailoutbox == []


def test_stored_engine_arguments_the_allow_list_now_refuses_fail_the_deployment_clearly(
    tmp_path, org, owner, mailoutbox
):
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    config = OrchestratorConfig(run_dir=tmp_path, ports=(18960, 18969))
    with override_settings(MODEL_ROOTS=[str(tmp_path / "models")]):
        deployment = deployment_create(
            org=org, actor=owner, name="tiny", source="local", model=str(model), gpus_per_replica=0
        )
    # Saved under an older allow-list, which took what this one refuses.
    Deployment.objects.filter(pk=deployment.pk).update(engine_args={"enable_lora": True})
    with pytest.raises(CannotStart, match="enable_lora is not an allowed engine argument"):
        local_backend(config, gpus=[]).start(
            spec(model=str(model), engine_args={"enable_lora": True}), gpus=[]
        )
    orchestrator = Orchestrator(backend=local_backend(config, gpus=[]), config=config)
    orchestrator.reconcile_once()
    orchestrator.reconcile_once()
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.FAILED
    first = deployment.state_reason.splitlines()[0]
    assert first.startswith(
        "A replica failed and will not be restarted: Engine arguments refused (edit the "
        "deployment to change them): enable_lora is not an allowed engine argument"
    )
    assert [r.state for r in Replica.objects.all()] == [ReplicaState.FAILED]
    [mail] = mailoutbox
    assert "enable_lora" in mail.body


def _engine(tmp_path: Path, script: str) -> str:
    engine = tmp_path / "engine"
    engine.write_text("#!/bin/sh\n" + script + "\n")
    engine.chmod(engine.stat().st_mode | stat.S_IXUSR)
    return str(engine)


def _one_free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_stopped_replicas_port_is_handed_out_again(tmp_path):
    port = _one_free_port()
    config = LocalConfig(
        run_dir=tmp_path, ports=(port, port), python=_engine(tmp_path, "exec sleep 300"), gpus=[]
    )
    local = LocalBackend(config)
    for attempt in range(3):  # restarts, or scaling 0 -> 1 -> 0, for as long as it runs
        launched = local.start(spec(replica_id=f"r{attempt}", model=str(tmp_path)), gpus=[])
        assert launched.port == port
        local.stop(handle=launched.handle, grace_s=1)


def test_an_exited_replicas_port_is_handed_out_again(tmp_path):
    port = _one_free_port()
    config = LocalConfig(
        run_dir=tmp_path, ports=(port, port), python=_engine(tmp_path, "exit 3"), gpus=[]
    )
    local = LocalBackend(config)
    launched = local.start(spec(model=str(tmp_path)), gpus=[])
    deadline = time.monotonic() + 10
    while local.inspect(handle=launched.handle).liveness is Liveness.RUNNING:
        assert time.monotonic() < deadline, "the engine did not exit"
        time.sleep(0.05)
    again = local.start(spec(replica_id="r-2", model=str(tmp_path)), gpus=[])
    assert again.port == port
    local.stop(handle=again.handle, grace_s=1)
