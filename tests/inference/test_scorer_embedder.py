"""The encoder built from the packaged weights computes what sentence-transformers computes."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from inference.scorer.embedder import Embedder, EmbedderConfig, packaged_model_dir
from inference.scorer.encoder_graph import build_encoder, quantize_columns

SENTENCES = ["a cat sat on the mat", "a kitten sits on a rug", "stock market crashed"]


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return Embedder(EmbedderConfig("fp32", 512))


@pytest.fixture(scope="module")
def int8() -> Embedder:
    return Embedder(EmbedderConfig("int8", 128))


def test_onnx_encoder_matches_sentence_transformers_on_torch(fp32: Embedder) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(packaged_model_dir()), device="cpu").encode(SENTENCES)
    ours = np.stack([fp32.embed(s) for s in SENTENCES])
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_similar_sentences_embed_close_together(int8: Embedder) -> None:
    cat, kitten, market = (int8.embed(s) for s in SENTENCES)
    assert float(np.linalg.norm(cat)) == pytest.approx(1.0, abs=1e-5)
    assert float(cat @ kitten) > 0.55
    assert float(cat @ market) < 0.2


def test_int8_embeddings_stay_close_to_fp32(fp32: Embedder, int8: Embedder) -> None:
    for sentence in SENTENCES:
        assert float(fp32.embed(sentence) @ int8.embed(sentence)) > 0.98


def test_building_the_encoder_is_deterministic() -> None:
    first = hashlib.sha256(build_encoder(packaged_model_dir(), "int8")).hexdigest()
    second = hashlib.sha256(build_encoder(packaged_model_dir(), "int8")).hexdigest()
    assert first == second


def test_long_prompts_keep_their_first_and_last_tokens(int8: Embedder) -> None:
    words = [f"w{i}" for i in range(400)]
    encoded = int8.encode(" ".join(words))
    assert len(encoded.ids) == 128
    assert encoded.prompt_tokens > 400  # counted before truncation
    head = int8.encode(" ".join(words[:5])).ids[1:-1]
    tail = int8.encode(" ".join(words[-5:])).ids[1:-1]
    assert encoded.ids[1 : 1 + len(head)] == head
    assert encoded.ids[-1 - len(tail) : -1] == tail


def test_short_prompts_are_not_truncated(int8: Embedder) -> None:
    encoded = int8.encode("What is the capital of France?")
    assert encoded.prompt_tokens == len(encoded.ids) - 2


def test_quantised_columns_reconstruct_the_weights() -> None:
    weight = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    quantised, scale = quantize_columns(weight)
    assert quantised.dtype == np.int8 and int(np.abs(quantised).max()) <= 63
    np.testing.assert_allclose(quantised * scale, weight, atol=float(scale.max()) / 2 + 1e-7)


def test_embedder_config_is_validated() -> None:
    assert EmbedderConfig.from_dict(EmbedderConfig().as_dict()) == EmbedderConfig()
    with pytest.raises(ValueError, match="precision"):
        EmbedderConfig.from_dict({"precision": "int4", "max_tokens": 128, "head_share": 0.5})
    with pytest.raises(ValueError, match="max_tokens"):
        EmbedderConfig.from_dict({"precision": "int8", "max_tokens": 4096, "head_share": 0.5})


def test_huge_prompts_tokenise_only_their_ends_and_estimate_the_count(int8: Embedder) -> None:
    prompt = "one two three four five six seven eight nine ten " * 20_000  # ~1 MB
    encoded = int8.encode(prompt)
    assert len(encoded.ids) == 128
    assert encoded.prompt_tokens == pytest.approx(200_000, rel=0.05)


def test_lone_surrogates_do_not_break_encoding(int8: Embedder) -> None:
    encoded = int8.encode("abc \ud800 def")
    assert len(encoded.ids) >= 4
