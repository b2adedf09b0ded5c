"""The prompt scorer: how likely the cheaper model answers a prompt as well as the stronger one.

Usage from async code (the gateway): loading takes about a second (it builds the encoder), so
load once at start-up; scoring takes a few milliseconds of CPU and must not run on the event loop:

    scorer = await asyncio.to_thread(Scorer.load)
    score = await asyncio.to_thread(scorer.score, prompt)
    target = "weak" if score >= threshold else "strong"

A `Scorer` is thread-safe: any number of threads may call `score` at once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.scorer.embedder import Embedder
from inference.scorer.features import FEATURE_NAMES, multiple_choice, prompt_features
from inference.scorer.head import HeadWeights

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "router_head.json"


class _DigestCache:
    """A small thread-safe LRU of scores keyed by the prompt's digest, so that retries and
    repeated prompts (system prompts, health probes) skip the encoder. Keys are 16-byte digests,
    not the prompts, so memory stays bounded whatever the prompt sizes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(prompt: str) -> bytes:
        return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, key: bytes) -> float | None:
        if self.capacity <= 0:
            return None
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: bytes, value: float) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Scorer:
    """Scores prompts with a fitted head on MiniLM embeddings and cheap features."""

    def __init__(
        self, head: HeadWeights, embedder: Embedder | None = None, cache_size: int = 4096
    ) -> None:
        if embedder is None:
            embedder = Embedder(head.embedder)
        elif embedder.config != head.embedder:
            raise ValueError(
                f"the head was fitted on {head.embedder} embeddings, not {embedder.config}"
            )
        expected = embedder.dimensions + len(FEATURE_NAMES)
        if head.feature_names != FEATURE_NAMES or len(head.coef) != expected:
            raise ValueError(
                f"the head expects {len(head.coef)} inputs ({', '.join(head.feature_names)}); "
                f"this scorer makes {expected} ({', '.join(FEATURE_NAMES)})"
            )
        self.head = head
        self.embedder = embedder
        self._cache = _DigestCache(cache_size)

    @classmethod
    def load(
        cls, weights: Path | None = None, *, threads: int = 0, cache_size: int = 4096
    ) -> Scorer:
        """Load a head (the shipped one by default) and build its encoder. Blocking, ~1 s.

        `threads` is onnxruntime's intra-op thread count (0: one per core).
        """
        head = HeadWeights.load(weights or SHIPPED_WEIGHTS)
        return cls(head, Embedder(head.embedder, threads=threads), cache_size=cache_size)

    def inputs(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """The head's inputs for one prompt: (embedding, features)."""
        encoded = self.embedder.encode(prompt)
        return self.embedder.vectors(encoded), prompt_features(prompt, encoded.prompt_tokens)

    def score(self, prompt: str) -> float:
        """P(the weak model answers as well as the strong one), in [0, 1]; higher is cheaper.

        Blocking (a few ms of CPU): call it through `asyncio.to_thread` or an executor.
        """
        key = self._cache.key(prompt)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        embedding, features = self.inputs(prompt)
        choices = np.array([multiple_choice(prompt)])
        value = float(self.head.predict(embedding[None, :], features[None, :], choices)[0])
        self._cache.put(key, value)
        return value

    def score_batch(self, prompts: Sequence[str]) -> list[float]:
        """Scores for several prompts, in order. Prompts are encoded one at a time (see
        `embedder`), so this is a convenience, not a faster path."""
        return [self.score(p) for p in prompts]


_default: Scorer | None = None
_default_lock = threading.Lock()


def default_scorer() -> Scorer:
    """The process-wide scorer with the shipped weights, loaded on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Scorer.load()
        return _default
