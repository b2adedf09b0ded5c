from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from inference.tinymodel.build import STAMP, is_current, tiny_model_build


@pytest.fixture(autouse=True)
def _needs_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        reason = "transformers is not installed (it comes with the cpu or gpu extra)"
        if os.environ.get("REQUIRE_VLLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def digests(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
    }


def test_the_tiny_model_is_the_same_every_time(tmp_path):
    assert tiny_model_build(target=tmp_path / "a") is True
    assert tiny_model_build(target=tmp_path / "b") is True
    assert digests(tmp_path / "a") == digests(tmp_path / "b")

    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert sum(p.stat().st_size for p in (tmp_path / "a").iterdir()) < 5_000_000


def test_a_current_build_is_kept_and_a_stale_one_rebuilt(tmp_path):
    target = tmp_path / "tiny"
    tiny_model_build(target=target)
    assert is_current(target)
    assert tiny_model_build(target=target) is False
    (target / STAMP).write_text('{"fingerprint": "old"}')
    assert not is_current(target)
    assert tiny_model_build(target=target) is True


def test_the_tokenizer_speaks_the_chat_template(tmp_path):
    from transformers import AutoTokenizer

    tiny_model_build(target=tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|begin|><|user|>\nHello there<|end|>\n<|assistant|>\n"
    assert tokenizer.decode(tokenizer("a cat sat")["input_ids"]) == "a cat sat"
