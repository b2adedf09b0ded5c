"""One proxied request: try the plan's targets, stream the answer back, and say what happened.

Retries happen only before the first byte reaches the client: a connection failure is retried
once on another replica of the same deployment (the failed one is ejected for a cool-down), and a
fallback plan moves to its next target on connection errors, 5xx, timeouts, overload (429/503)
and context-length errors. Any other upstream answer (a 400 about the request, say) goes back to
the client as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from inference.gateway.bodies import CHAT, COMPLETION, EMBEDDING, RESPONSES, ParsedRequest
from inference.gateway.errors import GatewayError
from inference.gateway.snapshot import DeploymentEntry, ExternalEntry, ReplicaEntry
from inference.gateway.sse import ResponsesStreamFilter, StreamFilter
from inference.gateway.upstream import UpstreamError, UpstreamResponse
from inference.routing.resolve import Decision, Plan

if TYPE_CHECKING:
    from inference.gateway.app import Gateway

logger = logging.getLogger("inference.gateway")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Target = DeploymentEntry | ExternalEntry

_PATHS = {CHAT: "/chat/completions", COMPLETION: "/completions", RESPONSES: "/responses"}
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}
_EJECTING_STATUS = {500, 502, 504}
# How engines word "the prompt plus max_tokens does not fit" (vLLM versions differ).
_CONTEXT_LENGTH_MARKERS = (b"context length", b"max_model_len", b"maximum context")


def _wants_auto_tools(parsed: ParsedRequest) -> bool:
    """Whether the request offers tools and leaves the choice to the model ("auto", the default)."""
    if parsed.kind not in (CHAT, RESPONSES) or not parsed.features.has_tools:
        return False
    return parsed.body.get("tool_choice", "auto") in ("auto", None)


def _no_auto_tools(deployment: DeploymentEntry) -> GatewayError:
    # The engine would refuse it too, naming its command-line flags; this names the deployment's
    # settings instead, and lets a route try its next target.
    return GatewayError(
        400,
        f"The deployment '{deployment.name}' does not let the model choose tools: set its engine "
        "arguments tool_call_parser (the model's format) and enable_auto_tool_choice, or send "
        'tool_choice "none".',
        "tools_not_enabled",
        param="tool_choice",
    )


def _failed(deployment: DeploymentEntry) -> GatewayError:
    return GatewayError(
        503,
        f"The deployment '{deployment.name}' failed and is not restarted until it is changed "
        f"or scaled: {deployment.failure}",
        "deployment_failed",
    )


def deployment_unavailable(deployment: DeploymentEntry) -> GatewayError | None:
    """The error every request for the deployment gets, even after waiting for a cold start: it
    is paused, or it failed with no replica left; each waits on the tenant. None where a request
    can be served (a scaled-to-zero deployment starts a replica for it)."""
    if deployment.paused:
        return GatewayError(503, "The deployment is paused or gone.", "no_capacity")
    if deployment.failure and not deployment.replicas:
        return _failed(deployment)
    return None


@dataclass(slots=True)
class Outcome:
    """What the client got, and what the engine reported, for metering and headers."""

    status: int = 0
    target: Target | None = None
    replica: ReplicaEntry | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_known: bool = False
    ttft_s: float | None = None
    attempts: int = 0
    disconnected: bool = False
    upstream: UpstreamResponse | None = field(default=None, repr=False)


def target_label(target: Target | None) -> str:
    if isinstance(target, DeploymentEntry):
        return f"deployment:{target.name}"
    if isinstance(target, ExternalEntry):
        return f"external:{target.name}"
    return ""


def response_headers(
    request_id: str,
    route: str,
    outcome: Outcome,
    content_type: bytes,
    decision: Decision | None = None,
) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", content_type),
        (b"x-request-id", request_id.encode()),
        (b"x-route", route.encode()),
        (b"x-target", target_label(outcome.target).encode()),
    ]
    if isinstance(outcome.target, DeploymentEntry):
        headers.append((b"x-deployment-id", str(outcome.target.id).encode()))
    if outcome.replica is not None:
        headers.append((b"x-replica-id", outcome.replica.key.encode()))
    if decision is not None and decision.baseline is not None:
        # An auto route's decision: the score ("none" when the scorer failed) and the choice.
        score = "none" if decision.score is None else f"{decision.score:.4f}"
        headers.append((b"x-route-score", score.encode()))
        headers.append((b"x-route-choice", decision.choice.encode("ascii", "replace")))
    return headers


# More tokens than any model's context holds: a count past this is not believed.
MAX_REPORTED_TOKENS = 100_000_000


def _token_count(value: object) -> int | None:
    """A token count as an upstream reported it, if it is one: a whole number (not a bool),
    not negative, not absurd. External endpoints are the tenant's, not ours to trust."""
    if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


def _completion_estimate(answer: object) -> int:
    """About how many tokens an answer without usage generated: its text at four characters a
    token (choices' messages or texts, or a response's output text), at least one."""
    chars = 0
    if isinstance(answer, dict):
        choices, output = answer.get("choices"), answer.get("output")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                message = choice.get("message")
                text = message.get("content") if isinstance(message, dict) else choice.get("text")
                chars += len(text) if isinstance(text, str) else 0
        for item in output if isinstance(output, list) else ():
            for part in (item.get("content") or ()) if isinstance(item, dict) else ():
                text = part.get("text") if isinstance(part, dict) else None
                chars += len(text) if isinstance(text, str) else 0
    return max(1, (chars + 3) // 4)


def _usage_from(usage: object, outcome: Outcome, *, generates: bool = True) -> None:
    """Take the engine's counts; counts that are not believable leave the usage unknown, so the
    request is metered on the gateway's own estimate instead (never on a negative count). An
    answer that generated text and does not say how much is unknown too, not free; only an
    embedding generates nothing."""
    if not isinstance(usage, dict):
        return
    prompt = _token_count(usage.get("prompt_tokens"))
    raw_completion = usage.get("completion_tokens")
    if raw_completion is None and generates:
        return
    completion = _token_count(raw_completion or 0)
    if prompt is None or completion is None:
        return
    outcome.prompt_tokens = prompt
    outcome.completion_tokens = completion
    details = usage.get("prompt_tokens_details")
    cached = _token_count(details.get("cached_tokens")) if isinstance(details, dict) else None
    outcome.cached_tokens = cached if cached is not None and cached <= prompt else 0
    outcome.usage_known = True


def _responses_usage_from(usage: object, outcome: Outcome) -> None:
    """The Responses API's usage: ``input_tokens``, ``output_tokens`` and
    ``input_tokens_details.cached_tokens``."""
    if not isinstance(usage, dict):
        return
    details = usage.get("input_tokens_details")
    _usage_from(
        {
            "prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "prompt_tokens_details": details if isinstance(details, dict) else None,
        },
        outcome,
    )


def _responses_upstream_body(parsed: ParsedRequest, model: str, raw: bytes) -> bytes:
    """A Responses API body never asks the engine to store the response: no replica could be
    asked for it again (OpenAI's default is to store; vLLM's is not to, unless the engine runs
    with VLLM_ENABLE_RESPONSES_API_STORE=1)."""
    if model == parsed.model and parsed.body.get("store") is False:
        return raw
    body = dict(parsed.body)
    body["model"] = model
    body["store"] = False
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _upstream_body(parsed: ParsedRequest, target: Target, raw: bytes) -> bytes:
    body = parsed.body
    model = target.served_model_name if isinstance(target, DeploymentEntry) else target.model
    if parsed.kind == RESPONSES:
        return _responses_upstream_body(parsed, model, raw)
    if model == parsed.model and not parsed.stream:
        return raw  # nothing to change: forward the client's bytes as they are
    body = dict(body)
    body["model"] = model
    if parsed.stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        if isinstance(target, DeploymentEntry):
            options["continuous_usage_stats"] = True
        body["stream_options"] = options
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _stream_error_event(error: Exception, responses: bool) -> bytes:
    message = f"The model server failed mid-answer: {error}."
    if responses:  # the Responses API's error event
        event = {"type": "error", "code": "upstream_error", "message": message, "param": None}
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
    body = {
        "error": {
            "message": message,
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return str(message or body[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


class Exchange:
    def __init__(
        self,
        gateway: Gateway,
        *,
        request_id: str,
        route: str,
        org_id: int,
        parsed: ParsedRequest,
        raw: bytes,
        send: Send,
    ) -> None:
        self.gw = gateway
        self.request_id = request_id
        self.route = route
        self.org_id = org_id
        self.parsed = parsed
        self.raw = raw
        self.send = send
        self.started = time.perf_counter()
        self.outcome = Outcome()
        self.decision: Decision | None = None
        # Headers every answer carries besides what it is about: CORS, the rate limit headers.
        # Shared lists: replaced, never changed in place.
        self.extra_headers: list[tuple[bytes, bytes]] = gateway.cors_headers

    def on_disconnect(self) -> None:
        self.outcome.disconnected = True
        if self.outcome.upstream is not None:
            self.outcome.upstream.abort()

    async def run(self, plan: Plan, targets: list[Target]) -> Outcome:
        """Try targets in order until one answers; deliver its answer; return the outcome."""
        outcome = self.outcome
        self.decision = plan.decision
        last = GatewayError(503, "No target of this model can take the request.", "no_capacity")
        cold = (
            self.gw.snapshot.target_entry(self.org_id, plan.cold_start_fallback)
            if plan.cold_start_fallback is not None
            else None
        )
        queue = list(targets)
        budget = plan.max_attempts
        while queue and budget > 0 and not outcome.disconnected:
            target: Target | None = queue.pop(0)
            budget -= 1
            if isinstance(target, DeploymentEntry):
                deployment = self.gw.current_deployment(target)
                if deployment is None or deployment.paused:
                    last = GatewayError(503, "The deployment is paused or gone.", "no_capacity")
                    continue
                if not deployment.auto_tools and _wants_auto_tools(self.parsed):
                    last = _no_auto_tools(deployment)
                    continue
                target = deployment
                if not deployment.replicas:
                    if not deployment.failure:
                        self.gw.signal_demand(deployment)
                    if cold is not None:
                        # The cold-start fallback answers now, even where it is also a later
                        # target of the plan: nobody waits on a sleeping model meanwhile.
                        if cold in queue:
                            queue.remove(cold)
                        else:
                            budget += 1
                        queue.insert(0, cold)
                        cold = None
                        last = GatewayError(
                            503,
                            "The model is starting; try again shortly.",
                            "cold_start",
                            retry_after=10,
                        )
                        continue
                    target = await self.gw.wait_for_replicas(deployment)
                    if target is None:
                        now = self.gw.current_deployment(deployment)
                        if now is not None and now.failure:
                            last = _failed(now)
                        else:
                            last = GatewayError(
                                503,
                                "The model is starting and no replica became ready in time.",
                                "cold_start",
                                retry_after=10,
                            )
                        continue
            assert target is not None
            try:
                response = await self._attempt(target)
            except GatewayError as error:
                last = error
                continue
            if response is not None:
                await self._deliver(response, target)
                return outcome
        if outcome.disconnected:
            outcome.status = 499
            return outcome
        raise last

    async def _attempt(self, target: Target) -> UpstreamResponse | None:
        """Open the upstream response for ``target`` (retrying once on another replica).

        Returns the response to deliver, or raises GatewayError when this target failed in a way
        that lets the plan move on. A non-retryable upstream answer is returned for delivery.
        """
        gw, outcome = self.gw, self.outcome
        body = _upstream_body(self.parsed, target, self.raw)
        path = _PATHS.get(self.parsed.kind, "/embeddings")
        headers = [("Content-Type", "application/json"), ("X-Request-Id", self.request_id)]
        tried: set[str] = set()
        label = target_label(target)
        while True:
            replica = None
            if isinstance(target, DeploymentEntry):
                replica = gw.balancer.choose(
                    target.replicas,
                    affinity_text=self.parsed.affinity_text,
                    exclude=frozenset(tried),
                )
                if replica is None:
                    raise GatewayError(503, "No replica could take the request.", "no_capacity")
                tried.add(replica.key)
                url = replica.base_url + "/v1" + path
                auth = headers
            else:
                url = target.base_url + path
                # An endpoint saved without a key gets no Authorization header, not an empty one.
                auth = (
                    [*headers, ("Authorization", f"Bearer {target.api_key}")]
                    if target.api_key
                    else headers
                )
            outcome.attempts += 1
            outcome.target, outcome.replica = target, replica
            if replica is not None:
                gw.balancer.acquire(replica)
                gw.inflight_add(target, 1)
            try:
                response = await gw.pool.request("POST", url, body, auth, external=replica is None)
            except UpstreamError as error:
                self._release(target, replica)
                gw.metrics.upstream_errors.inc((label, error.kind))
                if error.kind == "refused":
                    logger.warning(
                        "external endpoint refused: its address is not allowed",
                        extra={
                            "request_id": self.request_id,
                            "target": label,
                            "reason": str(error),
                        },
                    )
                    raise GatewayError(
                        502,
                        f"The endpoint's address is not allowed: {error}.",
                        "upstream_address_refused",
                    ) from None
                if error.kind == "timeout":
                    raise GatewayError(
                        504, f"The model did not answer: {error}.", "timeout"
                    ) from None
                if replica is not None:
                    gw.balancer.eject(replica)
                    more = isinstance(target, DeploymentEntry) and len(target.replicas) > 1
                    if more and not outcome.disconnected and len(tried) < 2:
                        continue
                raise GatewayError(
                    502, f"The model server could not be reached: {error}.", "upstream_unreachable"
                ) from None
            outcome.upstream = response
            if outcome.disconnected:
                response.abort()
                self._release(target, replica)
                return None
            if response.status == 200:
                # While another target can still take over: a non-streamed answer is read
                # whole, and a stream until its first bytes (the client's headers go out with
                # them), since nothing has reached the client if this server dies before that.
                try:
                    if self.parsed.stream:
                        await response.wait_for_body()
                    else:
                        response.pending_body = await response.read()
                except UpstreamError as error:
                    self._release(target, replica)
                    outcome.upstream = None
                    if outcome.disconnected:
                        return None
                    gw.metrics.upstream_errors.inc((label, error.kind))
                    if replica is not None:
                        gw.balancer.eject(replica)
                    timeout = error.kind == "timeout"
                    raise GatewayError(
                        504 if timeout else 502,
                        f"The model server failed mid-answer: {error}.",
                        "timeout" if timeout else "upstream_error",
                    ) from None
                if replica is not None:
                    gw.balancer.restore(replica)
                return response
            retry = response.status in _RETRYABLE_STATUS
            if not retry and response.status == 400:
                body_bytes = await self._read_quietly(response)
                retry = any(marker in body_bytes for marker in _CONTEXT_LENGTH_MARKERS)
                response.pending_body = body_bytes
            if not retry:
                return response
            error_body = response.pending_body
            if error_body is None:
                error_body = await self._read_quietly(response)
            self._release(target, replica)
            outcome.upstream = None
            gw.metrics.upstream_errors.inc((label, str(response.status)))
            if replica is not None and response.status in _EJECTING_STATUS:
                gw.balancer.eject(replica)
            message = _error_message(error_body)
            if response.status in (429, 503):
                raise GatewayError(
                    503, f"The model is overloaded: {message}", "overloaded", retry_after=1
                )
            if response.status == 400:
                raise GatewayError(400, message, "context_length_exceeded")
            raise GatewayError(502, f"The model server failed: {message}", "upstream_error")

    async def _read_quietly(self, response: UpstreamResponse) -> bytes:
        try:
            return await response.read()
        except UpstreamError:
            return b""

    def _release(self, target: Target, replica: ReplicaEntry | None) -> None:
        if replica is not None:
            self.gw.balancer.release(replica)
            self.gw.inflight_add(target, -1)

    async def _deliver(self, response: UpstreamResponse, target: Target) -> None:
        outcome = self.outcome
        outcome.status = response.status
        try:
            if self.parsed.stream and response.status == 200:
                await self._deliver_stream(response)
            else:
                await self._deliver_whole(response)
        finally:
            self._release(target, outcome.replica)
            outcome.upstream = None

    async def _deliver_whole(self, response: UpstreamResponse) -> None:
        outcome = self.outcome
        body = response.pending_body
        if body is None:
            try:
                body = await response.read()
            except UpstreamError as error:
                if outcome.disconnected:
                    outcome.status = 499
                    return
                outcome.status = 504 if error.kind == "timeout" else 502
                raise GatewayError(
                    outcome.status,
                    f"The model server failed mid-answer: {error}.",
                    "upstream_error",
                ) from None
        if response.status == 200:
            answer: object = None
            try:
                answer = json.loads(body)
                usage = answer.get("usage")  # type: ignore[attr-defined]
                if self.parsed.kind == RESPONSES:
                    _responses_usage_from(usage, outcome)
                else:
                    _usage_from(usage, outcome, generates=self.parsed.kind != EMBEDDING)
            except (ValueError, AttributeError):
                pass
            if not outcome.usage_known:
                # No believable count from the upstream: the gateway's own estimate, as for a
                # stream cut short, rather than a free request.
                outcome.prompt_tokens = self.parsed.prompt_tokens_estimate
                outcome.completion_tokens = _completion_estimate(answer)
        content_type = b"application/json"
        for name, value in response.headers:
            if name == b"content-type":
                content_type = value
        headers = response_headers(
            self.request_id, self.route, outcome, content_type, self.decision
        )
        headers.append((b"content-length", str(len(body)).encode()))
        headers += self.extra_headers
        await self.send(
            {"type": "http.response.start", "status": response.status, "headers": headers}
        )
        await self.send({"type": "http.response.body", "body": body})

    async def _deliver_stream(self, response: UpstreamResponse) -> None:
        outcome = self.outcome
        responses = self.parsed.kind == RESPONSES
        stream: StreamFilter | ResponsesStreamFilter = (
            ResponsesStreamFilter()
            if responses
            else StreamFilter(
                keep_final_usage=self.parsed.include_usage,
                keep_inline_usage=self.parsed.continuous_usage,
            )
        )
        headers = response_headers(
            self.request_id, self.route, outcome, b"text/event-stream", self.decision
        )
        headers.append((b"cache-control", b"no-cache"))
        headers += self.extra_headers
        send = self.send
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for chunk in response.chunks():
                out = stream.feed(chunk)
                if out:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = time.perf_counter() - self.started
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            tail = stream.finish()
        except UpstreamError as error:
            # The client went away (we aborted the upstream) or the upstream broke mid-stream:
            # either way the client already has a 200 and whatever was forwarded. A client still
            # there is told, in the stream's own error shape, so that it does not take what it
            # got for a whole answer (the openai client raises on it).
            outcome.status = 499 if outcome.disconnected else 502
            tail = b"" if outcome.disconnected else _stream_error_event(error, responses)
        except asyncio.CancelledError:
            response.abort()
            raise
        if stream.error_status is not None and outcome.status == 200:
            outcome.status = stream.error_status  # the engine's error event ended the answer
        usage = stream.usage()
        if usage is not None:
            (_responses_usage_from if responses else _usage_from)(usage, outcome)
        if not outcome.usage_known:
            # No believable engine count (an external endpoint cut short or counting nonsense,
            # or a Responses API stream, which has no running usage, cut short): one token per
            # streamed event.
            outcome.prompt_tokens = self.parsed.prompt_tokens_estimate
            outcome.completion_tokens = stream.completion_estimate()
        await send({"type": "http.response.body", "body": tail, "more_body": False})
