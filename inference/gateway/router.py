"""Scoring for auto routes, off the event loop.

The scorer (an ONNX encoder and a logistic head, ``inference.scorer``) takes milliseconds of CPU
per prompt, so it runs in a small dedicated thread pool of its own: requests to other routes,
which need no score, never wait behind it, and the event loop only awaits a future. The shipped
scorer is loaded once per gateway process, in that pool, the first time an auto route is asked
for; a route with its own fitted head (``RouteScorer``) gets a scorer sharing the same encoder.
Each scorer keeps an LRU of scores keyed by the prompt's digest.

A failure to load or to score is returned, not raised: the route then sends the request to its
strongest target and records why (``inference.routing.resolve._auto``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from inference.gateway import bodies
from inference.routing.config import RouteSpec

logger = logging.getLogger(__name__)


class PromptScorer(Protocol):
    def score(self, prompt: str) -> float: ...


def _load_shipped() -> PromptScorer:
    from inference.scorer.scorer import Scorer

    # One onnxruntime thread per scoring thread: the pool is the parallelism.
    return Scorer.load(threads=1)


def _with_head(base: PromptScorer, head_json: str) -> PromptScorer:
    from inference.scorer.head import HeadWeights
    from inference.scorer.scorer import Scorer

    assert isinstance(base, Scorer)
    return Scorer(HeadWeights.from_json(head_json), embedder=base.embedder)


def _responses_scoring_text(body: dict[str, Any]) -> str:
    """A Responses API prompt as the scorer reads it: the instructions, then the input string or
    each input message's text, one per line."""
    texts = [body.get("instructions") or ""]
    value = body.get("input")
    if isinstance(value, str):
        texts.append(value)
    else:
        texts += _contents_text(value or ())
    return "\n".join(t for t in texts if t)


def _contents_text(items: Any) -> list[str]:
    """The text of each chat message or input item: its content string, or its text parts."""
    texts = []
    for item in items:
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.append("".join(p["text"] for p in content if isinstance(p.get("text"), str)))
    return texts


def scoring_text(parsed: bodies.ParsedRequest) -> str:
    """What the scorer reads: the messages' text, one per line, without role names (the scorer
    was fitted on bare prompts), a Responses API request's instructions and input the same way,
    or a completion's prompt."""
    if parsed.kind == bodies.RESPONSES:
        return _responses_scoring_text(parsed.body)
    if parsed.kind != bodies.CHAT:
        return parsed.features.prompt_text
    texts = _contents_text(parsed.body.get("messages") or ())
    return "\n".join(t for t in texts if t)


class AutoRouter:
    def __init__(
        self,
        *,
        threads: int = 2,
        load: Callable[[], PromptScorer] = _load_shipped,
        with_head: Callable[[PromptScorer, str], PromptScorer] = _with_head,
    ) -> None:
        self.threads = threads
        self._load = load
        self._with_head = with_head
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._base: PromptScorer | None = None
        # route id (str) -> (digest of its head, scorer with that head)
        self._routes: dict[str, tuple[bytes, PromptScorer]] = {}

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="gateway-scorer")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _scorer_for(self, route_id: str, head_json: str | None) -> PromptScorer:
        """(scoring thread) The base scorer, loaded once, or the route's own."""
        with self._lock:
            if self._base is None:
                self._base = self._load()
            base = self._base
            if head_json is None:
                return base
            digest = hashlib.blake2b(head_json.encode(), digest_size=16).digest()
            known = self._routes.get(route_id)
            if known is not None and known[0] == digest:
                return known[1]
        scorer = self._with_head(base, head_json)
        with self._lock:
            self._routes[route_id] = (digest, scorer)
        return scorer

    def _score(self, route_id: str, head_json: str | None, prompt: str) -> float:
        return self._scorer_for(route_id, head_json).score(prompt)

    def warm_up(self) -> None:
        """Load the shipped scorer in the pool now (start-up, when auto routes exist)."""
        self.executor.submit(self._scorer_for, "", None)

    async def score(
        self, spec: RouteSpec, route_id: str, head_json: str | None, prompt: str
    ) -> float | Exception:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.executor, self._score, route_id, head_json, prompt
            )
        except Exception as error:
            logger.warning(
                "router scorer failed; the strongest target serves",
                extra={"route": spec.name, "error": str(error)},
            )
            return error
