"""A recording ``stripe.HTTPClient``: it keeps every request our code makes and answers with
Stripe's own example objects (``shared/data/stripe/fixtures3.json``), adjusted per test.

It is the contract: tests assert the exact method, path, parameters and idempotency keys.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

ERRORS = {
    400: ("invalid_request_error", "resource_missing", "No such customer: 'cus_missing'"),
    402: ("card_error", "card_declined", "Your card was declined."),
    429: ("rate_limit_error", "rate_limit", "Too many requests made to the API too quickly"),
    500: ("api_error", None, "An unknown error occurred"),
}


def stripe_error(status: int, message: str | None = None) -> tuple[int, dict[str, Any]]:
    """Stripe's error shape for a status."""
    kind, code, default = ERRORS[status]
    error: dict[str, Any] = {"type": kind, "message": message or default}
    if code:
        error["code"] = code
    if status == 400:
        error["param"] = "customer"
    return status, {"error": error}


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


@dataclass
class StripeFake(stripe.HTTPClient):
    fixtures: dict[str, Any]
    requests: list[Recorded] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)  # backoff pauses our code asked for
    _answers: dict[tuple[str, str], deque] = field(default_factory=dict)
    name = "recording"

    def __post_init__(self) -> None:
        super().__init__()

    def obj(self, resource: str, **overrides: Any) -> dict[str, Any]:
        """A copy of Stripe's example ``resource`` with fields replaced."""
        body = copy.deepcopy(self.fixtures[resource])
        body.update(overrides)
        return body

    def answer(self, method: str, path: str, *responses: Any) -> None:
        """Queue answers for ``method path``: a dict (200) or a (status, body) pair. The last
        answer repeats."""
        queue = self._answers.setdefault((method.upper(), path), deque())
        for response in responses:
            queue.append(response if isinstance(response, tuple) else (200, response))

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method.upper() and r.path == path]

    def request(
        self, method: str, url: str, headers: Any, post_data: Any = None, **_: Any
    ) -> tuple[str, int, dict[str, str]]:
        parts = urlsplit(url)
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        params = dict(parse_qsl(body or parts.query, keep_blank_values=True))
        self.requests.append(Recorded(method.upper(), parts.path, params, dict(headers or {})))
        queue = self._answers.get((method.upper(), parts.path))
        if not queue:
            status, payload = (
                404,
                {"error": {"type": "invalid_request_error", "message": f"no answer for {url}"}},
            )
        else:
            status, payload = queue.popleft() if len(queue) > 1 else queue[0]
        return json.dumps(payload), status, {"Request-Id": f"req_{len(self.requests)}"}

    def request_stream(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


def load_fixtures(shared_data: Path) -> dict[str, Any]:
    data = json.loads((shared_data / "stripe" / "fixtures3.json").read_text())
    return data["resources"]
