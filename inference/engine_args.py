"""The engine arguments a tenant may set, with their types and ranges, and how they become argv.

Nothing outside this allow-list reaches the engine. Values are checked by type (a JSON ``true`` is
not an integer), range and choice, and every refusal names the argument. The command line is built
as a list of separate arguments, never as a shell string, so no value can smuggle in another flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError


@dataclass(frozen=True)
class IntArg:
    low: int
    high: int
    help: str

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}.")
        if not self.low <= value <= self.high:
            raise ValueError(f"{name} must be between {self.low} and {self.high}, got {value}.")
        return value


@dataclass(frozen=True)
class FloatArg:
    low: float
    high: float
    help: str

    def check(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}.")
        if not self.low <= value <= self.high:
            raise ValueError(f"{name} must be between {self.low} and {self.high}, got {value}.")
        return float(value)


@dataclass(frozen=True)
class BoolArg:
    help: str

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}.")
        return value


@dataclass(frozen=True)
class ChoiceArg:
    choices: tuple[str, ...]
    help: str

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError(f"{name} must be one of {', '.join(self.choices)}; got {value!r}.")
        return value


Arg = IntArg | FloatArg | BoolArg | ChoiceArg

# The parsers the serving engine (vLLM 0.32) knows by name. Which one a model needs is on its
# model card: Llama 3.1 and 3.2 take llama3_json, Qwen 2.5 and Hermes-style models hermes, Mistral's
# models mistral, and so on.
TOOL_CALL_PARSERS = (
    "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31",
    "deepseek_v32", "deepseek_v4", "deepseek_v41", "dots", "ernie45", "functiongemma", "gemma4",
    "gigachat3", "glm45", "glm47", "granite", "granite-20b-fc", "granite4", "hermes", "hf",
    "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "internlm", "jamba", "k2_horizon", "kimi_k2",
    "kimi_k3", "lfm2", "ling3", "llama3_json", "llama4_json", "llama4_pythonic", "longcat", "mimo",
    "minicpm5", "minimax_m2", "minimax_m3", "mistral", "muse_glimmer", "olmo3", "openai",
    "phi4_mini_json", "plamo3", "poolside_v1", "pythonic", "qwen3_coder", "qwen3_json",
    "qwen3_xml", "seed_oss", "step3", "step3p5", "xlam",
)  # fmt: skip
REASONING_PARSERS = (
    "cohere_command3", "cohere_command4", "deepseek_r1", "deepseek_v3", "deepseek_v4",
    "deepseek_v41", "ernie45", "gemma4", "glm45", "glm47", "granite", "granite_thinking_parser",
    "hf", "holo2", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "k2_horizon", "kimi_k2", "kimi_k3",
    "ling3", "mimo", "minicpmv", "minimax_m2", "minimax_m2_append_think", "minimax_m3", "mistral",
    "muse_glimmer", "nemotron_v3", "olmo3", "openai_gptoss", "plamo3", "poolside_v1", "qwen3",
    "seed_oss", "step3", "step3p5",
)  # fmt: skip

# The quantization methods the serving engine (vLLM 0.32) accepts; any other name stops the engine
# at start-up. A method also has to match how the model's weights were quantized.
QUANTIZATION_METHODS = (
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
    "modelopt_mxfp8", "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin",
    "humming", "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc",
    "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block",
    "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
)  # fmt: skip

ALLOWED: dict[str, Arg] = {
    "max_model_len": IntArg(16, 1_048_576, "Longest prompt plus output, in tokens."),
    "dtype": ChoiceArg(
        ("auto", "float16", "bfloat16", "float32"), "Weight and activation precision."
    ),
    "quantization": ChoiceArg(QUANTIZATION_METHODS, "Weight quantization method."),
    "kv_cache_dtype": ChoiceArg(("auto", "fp8", "bfloat16", "float16"), "KV-cache precision."),
    "tensor_parallel_size": IntArg(1, 8, "GPUs one replica spreads the model over."),
    "gpu_memory_utilization": FloatArg(0.1, 0.98, "Share of each GPU's memory the engine takes."),
    "max_num_seqs": IntArg(1, 4096, "Most sequences in one batch."),
    "max_num_batched_tokens": IntArg(16, 1_048_576, "Most tokens in one engine step."),
    "enable_prefix_caching": BoolArg("Reuse the KV cache of shared prompt prefixes."),
    "enable_chunked_prefill": BoolArg("Split long prompts across engine steps."),
    "enforce_eager": BoolArg("Skip graph capture (faster start, slower serving)."),
    "max_logprobs": IntArg(0, 100, "Most log-probabilities a request may ask for."),
    "seed": IntArg(0, 2**31 - 1, "Random seed for sampling."),
    "block_size": IntArg(1, 256, "KV-cache block size in tokens."),
    "generation_config": ChoiceArg(
        ("auto", "vllm"), "Sampling defaults from the model's files (auto) or vLLM's own."
    ),
    "tool_call_parser": ChoiceArg(
        TOOL_CALL_PARSERS,
        "How tool calls are read from the model's output (see its model card). Needed for "
        "requests that name a tool or require one.",
    ),
    "enable_auto_tool_choice": BoolArg(
        "Let the model decide by itself when to call the tools a request offers "
        '(tool_choice "auto"); needs tool_call_parser.'
    ),
    "reasoning_parser": ChoiceArg(
        REASONING_PARSERS,
        "Return a reasoning model's thinking apart from its answer (reasoning_content).",
    ),
    # Also a field of the deployment; accepted here because people write it with the rest.
    "runner": ChoiceArg(("generate", "pooling"), "Generation or embeddings."),
}

# Arguments the platform sets itself; a tenant value would break routing or isolation.
RESERVED = {
    "model": "set the model with the deployment's model field",
    "served_model_name": "set it with the deployment's served_model_name field",
    "host": "the orchestrator chooses the address",
    "port": "the orchestrator chooses the port",
    "revision": "set it with the deployment's revision field",
    "trust_remote_code": "running code shipped with a model is not allowed",
    "download_dir": "the orchestrator chooses where models are stored",
}


def engine_args_validate(raw: Any) -> dict[str, Any]:
    """Return the checked arguments, or raise ValidationError({"engine_args": [...]})."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError({"engine_args": "Engine arguments must be a JSON object."})
    errors: list[str] = []
    clean: dict[str, Any] = {}
    for name, value in raw.items():
        key = str(name).replace("-", "_")
        if key in RESERVED:
            errors.append(f"{key} cannot be set: {RESERVED[key]}.")
            continue
        spec = ALLOWED.get(key)
        if spec is None:
            errors.append(
                f"{key} is not an allowed engine argument (allowed: {', '.join(sorted(ALLOWED))})."
            )
            continue
        try:
            clean[key] = spec.check(key, value)
        except ValueError as error:
            errors.append(str(error))
    given = {str(name).replace("-", "_") for name in raw}
    if clean.get("enable_auto_tool_choice") and "tool_call_parser" not in given:
        errors.append(
            "enable_auto_tool_choice needs tool_call_parser: the engine must know how to read "
            "the model's tool calls."
        )
    if errors:
        raise ValidationError({"engine_args": errors})
    return clean


def engine_args_argv(args: Mapping[str, Any]) -> list[str]:
    """The validated arguments as separate command-line items, in a stable order."""
    argv: list[str] = []
    for key in sorted(args):
        spec = ALLOWED[key]
        flag = "--" + key.replace("_", "-")
        value = spec.check(key, args[key])  # checked again: the row may predate a rule change
        if isinstance(spec, BoolArg):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv.extend([flag, str(value)])
    return argv
