"""Scorer latency: the serving runtime against plain PyTorch, measured in the same run.

    .venv/bin/python bench/scorer_latency.py [--runs 50]

For prompts of 128 and 512 tokens it prints p50/p95 milliseconds of:
- torch: sentence-transformers on PyTorch (the model as packaged, whole prompt), the baseline;
- onnx fp32 full: the same encoder on onnxruntime, whole prompt;
- onnx int8 full: int8 weights, whole prompt;
- scorer: what the gateway calls, `Scorer.score` with the shipped settings (int8, first and last
  tokens up to 128) including tokenisation, features and the head, cache off;
- scorer cached: the same prompt again, served from the digest cache;
and the ratio of the baseline's p50 to the scorer's. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the model answers questions about history physics law medicine and mathematics while "
    "a careful reader checks every step of the argument before the final answer is given to "
    "students who compare several sources and write short notes on what they found"
).split()


def make_prompts(tokenizer: object, tokens: int, count: int) -> list[str]:
    """`count` distinct prompts of exactly `tokens` tokens, [CLS] and [SEP] included."""
    from tokenizers import Tokenizer

    assert isinstance(tokenizer, Tokenizer)
    rng = np.random.default_rng(tokens)
    prompts = []
    for _ in range(count):
        words = [str(w) for w in rng.choice(WORDS, size=tokens * 2)]
        text = " ".join(words)
        ids = tokenizer.encode(text, add_special_tokens=False).ids[: tokens - 2]
        prompt = tokenizer.decode(ids)
        assert len(tokenizer.encode(prompt, add_special_tokens=False).ids) == tokens - 2
        prompts.append(prompt)
    return prompts


def measure(fn: Callable[[str], object], prompts: list[str], warmup: int = 3) -> list[float]:
    for prompt in prompts[:warmup]:
        fn(prompt)
    timings = []
    for prompt in prompts:
        start = time.perf_counter()
        fn(prompt)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def p50_p95(timings: list[float]) -> tuple[float, float]:
    return statistics.median(timings), float(np.percentile(timings, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description="scorer latency against plain PyTorch")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from inference.scorer.embedder import Embedder, EmbedderConfig, packaged_model_dir
    from inference.scorer.scorer import Scorer

    model_dir = packaged_model_dir()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    baseline = SentenceTransformer(str(model_dir), device="cpu")
    baseline.max_seq_length = 512  # the packaged default (256) would truncate 512-token prompts
    fp32_full = Embedder(EmbedderConfig("fp32", 512))
    int8_full = Embedder(EmbedderConfig("int8", 512))
    scorer = Scorer.load(cache_size=0)
    cached = Scorer.load(cache_size=16)

    print(
        f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}, "
        f"torch threads: {torch.get_num_threads()}, "
        f"runs per cell: {args.runs}; scorer settings: {scorer.head.embedder}"
    )
    print(f"{'runtime':22s} {'tokens':>6s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for tokens in (128, 512):
        prompts = make_prompts(tokenizer, tokens, args.runs + 3)
        with torch.inference_mode():
            torch_ms = measure(lambda p: baseline.encode(p), prompts)
        rows = [
            ("torch (baseline)", torch_ms),
            ("onnx fp32 full", measure(fp32_full.embed, prompts)),
            ("onnx int8 full", measure(int8_full.embed, prompts)),
            ("scorer (shipped)", measure(scorer.score, prompts)),
        ]
        repeated = [prompts[0]] * len(prompts)
        rows.append(("scorer, cache hit", measure(cached.score, repeated)))
        for name, timings in rows:
            p50, p95 = p50_p95(timings)
            print(f"{name:22s} {tokens:6d} {p50:8.2f} {p95:8.2f}")
        ratio = statistics.median(torch_ms) / statistics.median(rows[3][1])
        print(f"{'':22s} {tokens:6d} scorer is {ratio:.1f}x faster than torch at p50")
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f} (figures are only comparable when low)"
    )


if __name__ == "__main__":
    main()
