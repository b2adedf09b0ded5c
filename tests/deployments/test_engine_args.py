from __future__ import annotations

import importlib.util
import os

import pytest
from django.core.exceptions import ValidationError

from inference.engine_args import (
    ALLOWED,
    QUANTIZATION_METHODS,
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    engine_args_argv,
    engine_args_validate,
)


def refusal(raw):  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as caught:
        engine_args_validate(raw)
    return " ".join(caught.value.message_dict["engine_args"])


def test_allowed_values_pass_through():
    clean = engine_args_validate(
        {
            "max_model_len": 4096,
            "dtype": "bfloat16",
            "gpu_memory_utilization": 0.9,
            "enable_prefix_caching": True,
            "max_num_seqs": 64,
        }
    )
    assert clean["max_model_len"] == 4096
    assert clean["gpu_memory_utilization"] == 0.9


def test_dashes_are_accepted_as_underscores():
    assert engine_args_validate({"max-model-len": 512}) == {"max_model_len": 512}


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"max_model_len": "4096"}, "max_model_len must be a whole number"),
        ({"max_model_len": True}, "max_model_len must be a whole number"),
        ({"max_model_len": 8}, "max_model_len must be between 16 and"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization must be between"),
        ({"dtype": "float8"}, "dtype must be one of"),
        ({"enable_prefix_caching": "yes"}, "enable_prefix_caching must be true or false"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size must be between 1 and 8"),
        ({"worker_extension_cls": "x"}, "worker_extension_cls is not an allowed engine argument"),
        ({"trust_remote_code": True}, "trust_remote_code cannot be set"),
        ({"port": 80}, "port cannot be set"),
        ({"tool_call_parser": "llama9"}, "tool_call_parser must be one of"),
        ({"reasoning_parser": True}, "reasoning_parser must be one of"),
        # Names vLLM 0.32 does not know: it would refuse them at every start of the engine.
        ({"quantization": "marlin"}, "quantization must be one of"),
        ({"quantization": "gguf"}, "quantization must be one of"),
        ({"quantization": "bitsandbytes"}, "quantization must be one of"),
        ({"enable_auto_tool_choice": True}, "enable_auto_tool_choice needs tool_call_parser"),
    ],
)
def test_bad_arguments_are_refused_naming_the_field(raw, named):
    assert named in refusal(raw)


def test_every_error_is_reported_at_once():
    message = refusal({"dtype": "x", "max_num_seqs": -1})
    assert "dtype" in message and "max_num_seqs" in message


def test_not_an_object_is_refused():
    with pytest.raises(ValidationError, match="JSON object"):
        engine_args_validate(["--port", "1"])


def test_argv_is_a_list_of_separate_items_with_boolean_flags():
    argv = engine_args_argv(
        {"max_model_len": 512, "enforce_eager": True, "enable_prefix_caching": False}
    )
    assert argv == [
        "--enable-prefix-caching".replace("--", "--no-"),
        "--enforce-eager",
        "--max-model-len",
        "512",
    ]


def test_a_value_cannot_smuggle_a_second_flag():
    with pytest.raises(ValidationError):
        engine_args_validate({"dtype": "float32 --trust-remote-code"})


def test_every_allowed_argument_has_help():
    assert all(spec.help for spec in ALLOWED.values())


def test_tool_calling_and_reasoning_become_the_engines_flags():
    clean = engine_args_validate(
        {"enable-auto-tool-choice": True, "tool_call_parser": "hermes", "reasoning_parser": "qwen3"}
    )
    assert engine_args_argv(clean) == [
        "--enable-auto-tool-choice",
        "--reasoning-parser",
        "qwen3",
        "--tool-call-parser",
        "hermes",
    ]
    # A parser alone serves requests that name a tool; an unknown one is not also told to add it.
    assert engine_args_validate({"tool_call_parser": "llama3_json"}) == {
        "tool_call_parser": "llama3_json"
    }
    message = refusal({"enable_auto_tool_choice": True, "tool_call_parser": "llama9"})
    assert "needs tool_call_parser" not in message


def test_the_choices_are_exactly_those_of_the_installed_engine():
    # The control plane does not import vLLM; its lists are copies, checked here against it.
    if importlib.util.find_spec("vllm") is None:
        reason = "vLLM is not installed: pip install -e '.[cpu]' (see docs/deployments.md)"
        if os.environ.get("REQUIRE_VLLM") == "1":
            pytest.fail(reason + " -- REQUIRE_VLLM=1 makes this a failure")
        pytest.skip(reason)
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS as ENGINE_QUANTIZATION_METHODS,
    )
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    assert sorted(QUANTIZATION_METHODS) == sorted(ENGINE_QUANTIZATION_METHODS)
    assert sorted(TOOL_CALL_PARSERS) == sorted(ToolParserManager.list_registered())
    assert sorted(REASONING_PARSERS) == sorted(ReasoningParserManager.list_registered())
