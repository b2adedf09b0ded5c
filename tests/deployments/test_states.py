from __future__ import annotations

import pytest

from inference.models import DeploymentState, ReplicaState
from inference.orchestrator.states import (
    TRANSITIONS,
    InvalidTransition,
    crash_cause,
    deployment_summary,
    lines_since_start,
    replica_next_state,
    restart_backoff_s,
    startup_phase,
)

S = ReplicaState


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (S.PENDING, "launched", S.STARTING),
        (S.STARTING, "became_ready", S.READY),
        (S.READY, "crashed", S.PENDING),
        (S.STARTING, "crashed", S.PENDING),
        (S.READY, "drain", S.DRAINING),
        (S.DRAINING, "stopped", S.STOPPED),
        (S.STARTING, "gave_up", S.FAILED),
        (S.PENDING, "gave_up", S.FAILED),
    ],
)
def test_allowed_transitions(state, event, after):
    assert replica_next_state(state, event) == after


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.PENDING, "became_ready"),
        (S.STOPPED, "launched"),
        (S.FAILED, "launched"),
        (S.DRAINING, "became_ready"),
        (S.DRAINING, "crashed"),
        (S.STOPPED, "drain"),
    ],
)
def test_impossible_transitions_are_refused(state, event):
    with pytest.raises(InvalidTransition):
        replica_next_state(state, event)


def test_stopped_and_failed_are_final():
    for sources, _ in TRANSITIONS.values():
        assert S.STOPPED not in sources
        assert S.FAILED not in sources


def test_unknown_event_is_refused():
    with pytest.raises(InvalidTransition):
        replica_next_state(S.READY, "exploded")


def test_backoff_doubles_and_is_capped():
    waits = [restart_backoff_s(crash_streak=n, base_s=2, cap_s=30) for n in range(0, 7)]
    assert waits == [0, 2, 4, 8, 16, 30, 30]


def summary(**kw):  # type: ignore[no-untyped-def]
    params = {"deleting": False, "paused": False, "desired": 1, "replica_states": []}
    params.update(kw)
    return deployment_summary(**params)


def test_summary_states():
    assert summary(replica_states=[S.READY]).state == DeploymentState.READY
    assert summary(desired=2, replica_states=[S.READY, S.STARTING]).state == "degraded"
    assert summary(replica_states=[S.STARTING]).state == DeploymentState.STARTING
    assert summary(replica_states=[S.PENDING]).state == DeploymentState.PENDING
    assert summary(desired=0).state == DeploymentState.IDLE
    assert summary(paused=True).state == DeploymentState.PAUSED
    assert summary(deleting=True, paused=True).state == DeploymentState.DELETING


def test_a_failed_deployment_once_paused_shows_as_paused_with_its_failure():
    failure = "A replica failed and will not be restarted: out of memory.\nlast log lines"
    paused = summary(paused=True, failure=failure)
    assert paused.state == DeploymentState.PAUSED
    assert paused.reason == (
        "Paused after a failure (resuming tries again): A replica failed and will not be "
        "restarted: out of memory."
    )
    assert summary(failure=failure).state == DeploymentState.FAILED


def test_failure_wins_and_carries_its_reason():
    result = summary(replica_states=[S.READY], failure="boom: last lines")
    assert result.state == DeploymentState.FAILED
    assert result.reason == "boom: last lines"


def test_startup_phase_follows_the_engine_log():
    lines = [
        "INFO non-default args: {...}",
        "INFO [cpu_model_runner.py:68] Starting to load model /models/tiny...",
        "Loading safetensors checkpoint shards: 100% Completed",
    ]
    assert startup_phase([]) == "launching"
    assert startup_phase(lines[:1]) == "launching"
    assert startup_phase(lines) == "loading"
    assert startup_phase([*lines, "INFO Warming up model for the compilation..."]) == "warming up"
    assert startup_phase(["Downloading model.safetensors", *lines]) == "loading"
    assert startup_phase(["Downloading model.safetensors"]) == "downloading"


def test_only_the_latest_run_of_a_log_counts():
    lines = ["=== first start", "Application startup complete", "=== second start", "Loading"]
    assert lines_since_start(lines) == ["Loading"]
    assert lines_since_start(["no marker"]) == ["no marker"]


def test_the_cause_of_a_crash_is_the_engines_last_specific_exception():
    tool_parser = [
        '  File "/venv/vllm/parser/parser_manager.py", line 94, in validate_parser_tokenizer',
        "    raise TypeError(",
        "TypeError: --tool-call-parser llama3_json cannot be used with the tokenizer of 'm'.",
        "/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: leaked",
        "  warnings.warn('resource_tracker: There appear to be %d '",
    ]
    assert crash_cause(tool_parser) == (
        "TypeError: --tool-call-parser llama3_json cannot be used with the tokenizer of 'm'."
    )
    engine_core = [
        "(EngineCore_DP0 pid=41) ValueError: Unrecognized model type no-such-architecture",
        "(APIServer pid=40) Traceback (most recent call last):",
        "(APIServer pid=40) RuntimeError: Engine core initialization failed. See root cause above.",
    ]
    assert crash_cause(engine_core) == "ValueError: Unrecognized model type no-such-architecture"
    assert crash_cause(engine_core[1:]).startswith("RuntimeError: Engine core initialization")
    assert crash_cause(["torch.OutOfMemoryError: CUDA out of memory."]).startswith("torch.")
    assert crash_cause(["django.core.exceptions.ImproperlyConfigured: no key"]).endswith("key")
    pydantic = [
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
        "  Value error, The checkpoint has model type `nope` but Transformers does not know it.",
        "    For further information visit https://errors.pydantic.dev/2.14/v/value_error",
    ]
    assert crash_cause(pydantic).endswith(
        "for ModelConfig: Value error, The checkpoint has "
        "model type `nope` but Transformers does not know it."
    )
    assert crash_cause(["INFO starting", "Killed"]) == ""
    assert crash_cause(["warnings.UserWarning: leaked", "Note: x"]) == ""
    assert crash_cause(["INFO a ValueError: in the middle of a line"]) == ""
    assert len(crash_cause(["OSError: " + "x" * 1000])) == 300
