"""The gateway ASGI application: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/responses, /v1/models and /metrics.

A plain ASGI callable (no framework) because every microsecond here is added to every request.
Per request: key -> snapshot lookup, body checks, route plan, one limiter step, the proxied
exchange, one limiter settlement and one in-memory usage event. No ORM query, no Django
middleware; the database is touched only by background threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from billing.money import format_dollars
from inference.gateway import bodies
from inference.gateway.accounting import Finished, access_logger, request_account
from inference.gateway.admission import admission_build, reservation_micros
from inference.gateway.balancer import Balancer
from inference.gateway.config import GatewayConfig
from inference.gateway.errors import GatewayError
from inference.gateway.exchange import (
    Exchange,
    Outcome,
    Target,
    deployment_unavailable,
    target_label,
)
from inference.gateway.health import Health
from inference.gateway.inflight import InflightPublisher, inflight_store
from inference.gateway.ledger import usage_write
from inference.gateway.limits import (
    Admission,
    Limiter,
    LimiterUnavailable,
    LocalLimiter,
    RedisLimiter,
    rate_limit_headers,
    refusal_headers,
)
from inference.gateway.meter_writer import ProcessWriter
from inference.gateway.metering import Meter
from inference.gateway.metrics import GatewayMetrics
from inference.gateway.refusals import RefusalTally
from inference.gateway.router import AutoRouter, scoring_text
from inference.gateway.snapshot import (
    CONSOLE_KEY_ID,
    DeploymentEntry,
    KeyEntry,
    OrgCatalogue,
    OrgEntry,
    Snapshot,
    SnapshotPoller,
    empty_snapshot,
)
from inference.gateway.upstream import Pool
from inference.routing.config import RouteSpec, TargetRef
from inference.routing.egress import egress_policy
from inference.routing.resolve import (
    Plan,
    RequestFeatures,
    ResolveContext,
    RouteResolutionError,
    route_plan,
)

logger = logging.getLogger("inference.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_KINDS = {
    "/v1/chat/completions": bodies.CHAT,
    "/v1/completions": bodies.COMPLETION,
    "/v1/embeddings": bodies.EMBEDDING,
    "/v1/responses": bodies.RESPONSES,
}
DEMAND_SIGNAL_EVERY_S = 5.0
# The longest an unknown key waits for the control plane's answer before its 401.
UNKNOWN_KEY_WAIT_S = 1.0
# Seconds between warnings while Redis fails limits steps.
LIMITER_WARN_S = 10.0
# With GATEWAY_CORS on, every /v1 response carries these, so that a web page on any origin can
# call the API with a key (a bearer key, never a cookie: no ambient credentials are exposed) and
# read the headers that say what served it.
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (
        b"access-control-expose-headers",
        b"x-request-id, x-route, x-target, x-deployment-id, x-replica-id, x-route-score, "
        b"x-route-choice, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
        b"x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
        b"x-ratelimit-reset-tokens",
    ),
]
_RUNNER_FOR_KIND = {
    bodies.CHAT: "generate",
    bodies.COMPLETION: "generate",
    bodies.EMBEDDING: "pooling",
    bodies.RESPONSES: "generate",
}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _model_object(name: str, org: OrgEntry, cat: OrgCatalogue) -> dict[str, Any]:
    """A model as OpenAI's /v1/models describes one (routes and deployments alike)."""
    entry = cat.routes.get(name) or cat.served.get(name)
    created = entry.created if entry is not None else 0
    return {"id": name, "object": "model", "created": created, "owned_by": org.slug}


def _wrong_runner_message(parsed: bodies.ParsedRequest) -> str:
    if parsed.kind == bodies.EMBEDDING:
        return (
            f"The model '{parsed.model}' generates text; it does not answer /v1/embeddings. "
            "Use an embedding model."
        )
    return f"The model '{parsed.model}' is an embedding model; it answers /v1/embeddings only."


# The console's "try it" box acts as the org itself, with no key and no key limits.
CONSOLE_KEY = KeyEntry(
    id=CONSOLE_KEY_ID,
    org_id=0,
    prefix="console",
    scopes=frozenset({"inference"}),
    allowed_models=frozenset(),
    rpm_limit=None,
    tpm_limit=None,
    budget_micros=None,
    expires_at=None,
    revoked=False,
)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("background start-up failed", exc_info=future.exception())


def _check_client_network(key: KeyEntry, scope: Scope) -> None:
    """Refuse a key used from outside its allowed networks. The address is the ASGI client's:
    behind a proxy, the server takes it from ``X-Forwarded-For`` only for trusted proxies
    (uvicorn's ``--forwarded-allow-ips``)."""
    client = scope.get("client")
    host = client[0] if client else ""
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    if address is None or not any(address in network for network in key.allowed_networks):
        raise GatewayError(
            403,
            f"This API key may not be used from {host or 'an unknown address'}: it is limited "
            "to certain IP addresses.",
            "ip_not_allowed",
        )


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class _AccountedFault(Exception):
    """A fault of the gateway's own (the cause) in a request already settled, metered, counted
    and logged as a 500: it is answered without being counted or logged as a refusal too."""


class Gateway:
    """Process-wide gateway state and the ASGI entry point."""

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        limiter: Limiter | None = None,
        meter: Meter | None = None,
        poll: bool = True,
        router: AutoRouter | None = None,
    ) -> None:
        self.config = config = config or GatewayConfig.from_env()
        self.cors_headers = list(CORS_HEADERS) if config.cors else []
        self.hsts_header = (b"strict-transport-security", config.hsts.encode())
        self.snapshot: Snapshot = empty_snapshot()
        self.balancer = Balancer(mode=config.balance, eject_s=config.eject_s)
        self.pool = Pool(
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            egress=egress_policy(config.external_allow),
        )
        if limiter is None:
            limiter = (
                RedisLimiter(config.redis_url, config.redis_timeout_s)
                if config.redis_url
                else LocalLimiter()
            )
        self.limiter = limiter
        self.metrics = GatewayMetrics(self._inflight_gauge)
        # The ledger writer process this gateway started (None: writes in the meter's thread).
        self.writer: ProcessWriter | None = None
        if meter is None and config.metering:
            self.writer = ProcessWriter() if config.meter_process else None
            meter = Meter(
                flush_s=config.meter_flush_s,
                batch=config.meter_batch,
                write=self.writer or usage_write,
                spill_dir=Path(getattr(settings, "RUN_DIR", ".")),
                on_spill=lambda n: self.metrics.usage_dropped.inc((), n),
            )
        self.meter = meter
        # Scores prompts for auto routes in its own thread pool (never on the event loop).
        self.router = router or AutoRouter()
        self.poll = poll
        # Requests refused before reaching a model, counted per key and minute.
        self.refusals = RefusalTally()
        self._limiter_warned = -LIMITER_WARN_S
        self.poller = SnapshotPoller(
            self._install_threadsafe,
            poll_s=config.snapshot_poll_s,
            ttl_s=config.snapshot_ttl_s,
            after=self.refusals.flush,
        )
        self.inflight: dict[str, int] = {}
        self.inflight_publisher: InflightPublisher | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._snapshot_waiters: list[asyncio.Future[None]] = []
        self._demand_at: dict[uuid.UUID, float] = {}
        self._keys_used: set[uuid.UUID] = set()
        # Settlement tasks, referenced until done (the loop keeps only weak references).
        self.background: set[asyncio.Task[None]] = set()
        self.started = False
        self.stopping = False
        self.health = Health(self)

    # ---- lifecycle ----------------------------------------------------------------------

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        # The metering flusher and the snapshot builder are CPU-bound Python threads; a shorter
        # GIL switch interval (default 5 ms) hands the event loop back sooner, which is what
        # keeps the p99 of requests in flight low while a batch is being written.
        sys.setswitchinterval(self.config.gil_switch_interval_s)
        if self.poll:
            try:
                await asyncio.to_thread(self.poller.refresh, force=True)
            except Exception:
                logger.exception("first snapshot failed; serving an empty one until it works")
            self.poller.start()
        first = self.poller.last or self.snapshot
        if any(
            entry.spec.policy == "auto"
            for cat in first.catalogues.values()
            for entry in cat.routes.values()
        ):
            self.router.warm_up()
        if self.writer is not None:
            # Started off the event loop and not awaited: the first flush waits for it instead.
            writer_start = asyncio.ensure_future(asyncio.to_thread(self.writer.start))
            writer_start.add_done_callback(_log_failure)
            # Referenced until done, like the settlement tasks (the loop keeps weak references).
            self.background.add(writer_start)
            writer_start.add_done_callback(self.background.discard)
        if self.meter is not None:
            self.meter.start()
        self._inflight_publish_start()
        self.started = True

    def _inflight_publish_start(self) -> None:
        """Publish in-flight counts per deployment for the autoscaler, from a thread."""
        if self.config.inflight_publish_s <= 0:
            return
        run_dir = Path(getattr(settings, "RUN_DIR", "."))
        self.inflight_publisher = InflightPublisher(
            lambda: dict(self.inflight),
            inflight_store(self.config.redis_url, run_dir),
            interval_s=self.config.inflight_publish_s,
        )
        self.inflight_publisher.start()

    async def shutdown(self) -> None:
        self.stopping = True
        self.poller.stop()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        if self.inflight_publisher is not None:
            await asyncio.to_thread(self.inflight_publisher.stop)
        if self.meter is not None:
            await asyncio.to_thread(self.meter.close)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        await asyncio.to_thread(self._touch_keys)
        await asyncio.to_thread(self.refusals.flush, force=True)
        self.pool.close()
        self.router.close()
        self.health.database.close()
        await self.limiter.close()

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot (event loop thread) and wake requests waiting for replicas."""
        self.snapshot = snapshot
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _install_threadsafe(self, snapshot: Snapshot) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.install, snapshot)
        else:
            self.install(snapshot)
        self._touch_keys()

    def _touch_keys(self) -> None:
        """Record keys' last use, at most once a minute each (from the poller thread)."""
        if not self._keys_used:
            return
        from console.models import ApiKey

        used, self._keys_used = self._keys_used, set()
        now = datetime.now(UTC)
        stale = now.timestamp() - 60
        try:
            ApiKey.objects.filter(id__in=used).exclude(
                last_used_at__gte=datetime.fromtimestamp(stale, UTC)
            ).update(last_used_at=now)
        finally:
            close_old_connections()

    # ---- deployments and replicas --------------------------------------------------------

    def current_deployment(self, target: DeploymentEntry) -> DeploymentEntry | None:
        return self.snapshot.catalogue(target.org_id).deployments.get(target.name)

    def inflight_add(self, target: Target, delta: int) -> None:
        key = str(target.id)
        value = self.inflight.get(key, 0) + delta
        if value > 0:
            self.inflight[key] = value
        else:
            self.inflight.pop(key, None)

    def _inflight_gauge(self) -> dict[tuple[str, ...], int]:
        return {(key,): value for key, value in self.inflight.items()}

    def signal_demand(self, target: DeploymentEntry) -> None:
        """Ask the orchestrator for a replica (at most every few seconds per deployment)."""
        now = time.monotonic()
        if now - self._demand_at.get(target.id, -1e9) < DEMAND_SIGNAL_EVERY_S:
            return
        self._demand_at[target.id] = now

        def signal() -> None:
            from inference.services.deployments import deployment_signal_demand

            try:
                deployment_signal_demand(deployment_id=target.id)
            except Exception:
                logger.exception("demand signal failed", extra={"deployment_id": str(target.id)})
            finally:
                close_old_connections()

        assert self.loop is not None
        self.loop.run_in_executor(None, signal)

    async def wait_for_replicas(self, target: DeploymentEntry) -> DeploymentEntry | None:
        """Wait (bounded by ``cold_start_wait_s``) until the snapshot shows a ready replica."""
        deadline = time.monotonic() + self.config.cold_start_wait_s
        while True:
            current = self.current_deployment(target)
            if current is None or current.paused:
                return None
            if current.replicas:
                return current
            if current.failure:  # nothing will start until the tenant changes it
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            assert self.loop is not None
            waiter = self.loop.create_future()
            self._snapshot_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, timeout=left)
            except TimeoutError:
                return None

    # ---- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle_http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        kind = _KINDS.get(path)
        request_id = "req-" + os.urandom(16).hex()
        secure = True
        if self.config.https_only or self.config.hsts:
            secure = _is_https(scope, self.config.trust_forwarded_proto)
            if secure and self.config.hsts:
                send = _with_header(send, self.hsts_header)
        try:
            if not secure and self.config.https_only and path.startswith("/v1/"):
                # Refused, not redirected: the key has already crossed the network in clear,
                # and a redirected POST loses its body. Probes and /metrics stay on http.
                raise GatewayError(
                    403,
                    "This API answers over https only: send the request to https://. The API "
                    "key in this request was sent unencrypted; roll it if the network may be "
                    "watched.",
                    "https_required",
                )
            if method == "OPTIONS" and self.cors_headers and path.startswith("/v1/"):
                await self.preflight(scope, send)
                return
            if kind is not None:
                if method != "POST":
                    raise GatewayError(405, f"Use POST for {path}.", "method_not_allowed")
                await self.handle_inference(kind, request_id, scope, receive, send, started)
            elif path == "/v1/models":
                if method != "GET":
                    raise GatewayError(405, "Use GET for /v1/models.", "method_not_allowed")
                await self.handle_models(scope, send, request_id)
            elif path.startswith("/v1/models/"):
                if method != "GET":
                    raise GatewayError(405, "Use GET for /v1/models/{model}.", "method_not_allowed")
                # The server has already percent-decoded the path: a name with a slash in it
                # ("org/model", sent by the openai client as "org%2Fmodel") arrives whole.
                await self.handle_model(scope, send, request_id, path[len("/v1/models/") :])
            elif path.startswith("/v1/responses/resp"):
                # A response's id ("resp_..." from vLLM and OpenAI alike), or a path under it.
                await self.handle_stored_response(scope)
            elif path == "/healthz" or path == "/readyz":
                if method not in ("GET", "HEAD"):
                    raise GatewayError(405, f"Use GET for {path}.", "method_not_allowed")
                status, body = (
                    self.health.live() if path == "/healthz" else await self.health.ready()
                )
                await _respond(send, status, body, extra=[(b"cache-control", b"no-store")])
            elif path == "/metrics":
                self.check_metrics_access(scope)
                await _respond(send, 200, self.metrics.render(), b"text/plain; version=0.0.4")
            else:
                raise GatewayError(404, f"No such endpoint: {method} {path}.", "unknown_url")
        except GatewayError as error:
            self.metrics.refused.inc((str(error.status), error.code))
            if self.config.access_log:
                _log_refusal(request_id, path, error, started)
            await _respond_error(send, error, request_id, extra=self.cors_headers)
        except _ClientGone:
            return
        except Exception as fault:
            # A bug, not the client's fault: logged with the request id, and answered in
            # OpenAI's shape (with the id to quote) rather than as the server's bare text.
            logger.exception("request %s failed inside the gateway", request_id)
            failure = GatewayError(
                500,
                f"The gateway failed on this request; quote {request_id} to support.",
                "internal_error",
            )
            if not isinstance(fault, _AccountedFault):  # one access log line per request
                self.metrics.refused.inc(("500", "internal_error"))
                if self.config.access_log:
                    _log_refusal(request_id, path, failure, started)
            try:
                await _respond_error(send, failure, request_id, extra=self.cors_headers)
            except Exception:  # the answer had already started: the server closes the connection
                logger.debug("request %s: no error answer after a started one", request_id)

    async def preflight(self, scope: Scope, send: Send) -> None:
        """A browser asks whether a page may send this request: yes, with whatever headers it
        names (the openai JavaScript client sends several of its own)."""
        asked = b"authorization, content-type"
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers":
                asked = value[:1000]
        headers = [
            *self.cors_headers,
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", asked),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    # ---- authentication -------------------------------------------------------------------

    def check_metrics_access(self, scope: Scope) -> None:
        """Metrics carry route names of every org: scrapers need the token, or loopback."""
        token = self.config.metrics_token
        if token:
            expected = b"Bearer " + token.encode()
            sent = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
            if not hmac.compare_digest(sent, expected):
                raise GatewayError(401, "Send the metrics token as a bearer token.", "metrics_auth")
            return
        client = scope.get("client") or ("", 0)
        if client[0] not in {"127.0.0.1", "::1"}:
            raise GatewayError(
                403, "Metrics are served to loopback only unless a token is set.", "metrics_auth"
            )

    def authenticate(self, scope: Scope) -> tuple[KeyEntry, OrgEntry]:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if header[:7].lower() != b"bearer " or len(header) > 300:
            raise GatewayError(
                401, "Missing API key: send 'Authorization: Bearer sk-...'.", "missing_api_key"
            )
        digest = hashlib.sha256(header[7:].strip()).hexdigest()
        snapshot = self.snapshot
        key = snapshot.keys.get(digest)
        if key is None:
            raise GatewayError(401, "Invalid API key.", "invalid_api_key")
        try:
            org = self._key_check(key, snapshot, scope)
        except GatewayError as error:
            self.refusals.add(key.org_id, key.id, error.status, error.code)
            error.key_prefix = key.prefix
            raise
        self._keys_used.add(key.id)
        return key, org

    def _key_check(self, key: KeyEntry, snapshot: Snapshot, scope: Scope) -> OrgEntry:
        """Whether a known key may be used now, from here; its org."""
        if key.revoked:
            raise GatewayError(401, "This API key has been revoked.", "revoked_api_key")
        if key.expires_at is not None and key.expires_at <= time.time():
            raise GatewayError(401, "This API key has expired.", "expired_api_key")
        if "inference" not in key.scopes:
            raise GatewayError(
                403, "This key lacks the 'inference' scope needed for /v1.", "insufficient_scope"
            )
        org = snapshot.orgs.get(key.org_id)
        if org is None:
            raise GatewayError(401, "Invalid API key.", "invalid_api_key")
        if org.suspended_reason is not None:
            raise GatewayError(
                402, f"This organisation is suspended: {org.suspended_reason}.", "org_suspended"
            )
        if key.allowed_networks:
            _check_client_network(key, scope)
        return org

    def visible_models(self, key: KeyEntry, org: OrgEntry) -> list[str]:
        """The model names this key may call: the org's routes and served deployments, less the
        deployments no request can be served by (paused, or failed with no replica left)."""
        cat = self.snapshot.catalogue(org.id)
        served = {n for n, dep in cat.served.items() if deployment_unavailable(dep) is None}
        names = sorted(set(cat.routes) | served)
        if key.allowed_models:
            names = [n for n in names if n in key.allowed_models]
        return names

    async def authenticate_fresh(self, scope: Scope) -> tuple[KeyEntry, OrgEntry]:
        """``authenticate``, except that a key the snapshot does not know gets one fresh look at
        the control plane before it is refused: a key created a moment ago works at once instead
        of after the next poll. A key that is really unknown waits for that look (a few ms, at
        most ``UNKNOWN_KEY_WAIT_S``) before its 401."""
        try:
            return self.authenticate(scope)
        except GatewayError as error:
            if error.code != "invalid_api_key" or not self.poller.running:
                raise
        loop = asyncio.get_running_loop()
        checked: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(_resolve, checked)

        self.poller.check_soon(done)
        try:
            await asyncio.wait_for(checked, UNKNOWN_KEY_WAIT_S)
        except TimeoutError:
            pass
        return self.authenticate(scope)

    async def handle_models(self, scope: Scope, send: Send, request_id: str) -> None:
        key, org = await self.authenticate_fresh(scope)
        cat = self.snapshot.catalogue(org.id)
        data = [_model_object(name, org, cat) for name in self.visible_models(key, org)]
        body = json.dumps({"object": "list", "data": data}).encode()
        await _respond(
            send, 200, body, extra=[(b"x-request-id", request_id.encode()), *self.cors_headers]
        )

    async def handle_model(self, scope: Scope, send: Send, request_id: str, name: str) -> None:
        key, org = await self.authenticate_fresh(scope)
        if name not in self.visible_models(key, org):
            deployment = self.snapshot.catalogue(org.id).served.get(name)
            if deployment is not None and (not key.allowed_models or name in key.allowed_models):
                # Not listed, but the key's own: the answer a request for it gets, saying why.
                unavailable = deployment_unavailable(deployment)
                if unavailable is not None:
                    raise unavailable
            # As for inference: another org's model, or one the key may not use, is not found.
            raise GatewayError(
                404,
                f"The model '{name}' does not exist or you do not have access to it.",
                "model_not_found",
                param="model",
            )
        body = json.dumps(_model_object(name, org, self.snapshot.catalogue(org.id))).encode()
        await _respond(
            send, 200, body, extra=[(b"x-request-id", request_id.encode()), *self.cors_headers]
        )

    async def handle_stored_response(self, scope: Scope) -> None:
        """``GET``/``DELETE /v1/responses/{id}`` and the like: responses are never stored (any
        replica may serve the next request), so there is none to retrieve, cancel or delete."""
        await self.authenticate_fresh(scope)
        raise GatewayError(
            404,
            "Responses are not stored here: requests are served statelessly by any replica of "
            "the model, so a response cannot be retrieved, cancelled or deleted afterwards.",
            "response_not_found",
        )

    # ---- inference --------------------------------------------------------------------------

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.config.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise GatewayError(413, f"The body is larger than {limit} bytes.", "body_too_large")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"The body is larger than {limit} bytes.", "body_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def limits_unavailable(self, failure: LimiterUnavailable) -> Admission:
        """Redis could not admit a request: refuse it with a 503 that changes nothing, or, where
        ``GATEWAY_LIMITS_FAIL_OPEN`` is on, let it through uncounted (an empty admission, so
        nothing is settled either)."""
        self.metrics.limiter_errors.inc(("admit",))
        self.warn_limiter(failure)
        if self.config.limits_fail_open:
            return Admission()
        raise GatewayError(
            503,
            "Rate limits and budgets cannot be checked right now, so the request was not "
            "forwarded and nothing was counted or charged. Retry shortly.",
            "limits_unavailable",
            retry_after=1,
        )

    def warn_limiter(self, failure: LimiterUnavailable) -> None:
        """One warning per ``LIMITER_WARN_S`` at most: an outage must not flood the log."""
        now = time.monotonic()
        if now - self._limiter_warned >= LIMITER_WARN_S:
            self._limiter_warned = now
            logger.warning(
                "Redis did not answer a limits step (%s); requests with limits or budgets are %s",
                failure,
                "admitted uncounted" if self.config.limits_fail_open else "refused with 503",
            )

    async def auto_scores(
        self, org_id: int, parsed: bodies.ParsedRequest
    ) -> dict[str, float | Exception]:
        """Scores of the prompt for every auto route the requested route can reach (usually
        none, or the route itself), computed in the scorer's thread pool."""
        cat = self.snapshot.catalogue(org_id)
        entry = cat.routes.get(parsed.model)
        if entry is None:
            return {}
        autos: list[RouteSpec] = []
        seen: set[str] = set()
        pending = [entry.spec]
        while pending and len(seen) < 32:
            spec = pending.pop()
            if spec.name in seen:
                continue
            seen.add(spec.name)
            if spec.policy == "auto":
                autos.append(spec)
            pending += [cat.specs[r.name] for r in spec.references() if r.name in cat.specs]
        scores: dict[str, float | Exception] = {}
        text = scoring_text(parsed) if autos else ""
        for spec in autos:
            route = cat.routes[spec.name]
            head = self.snapshot.scorer_heads.get(route.id)
            scores[spec.name] = await self.router.score(spec, str(route.id), head, text)
        return scores

    def plan_for(
        self,
        org_id: int,
        parsed: bodies.ParsedRequest,
        scores: dict[str, float | Exception] | None = None,
    ) -> tuple[str, Plan, list[Target]]:
        """(route name or "", plan, resolved targets) for the model a request names."""
        snapshot = self.snapshot
        cat = snapshot.catalogue(org_id)
        entry = cat.routes.get(parsed.model)
        if entry is not None:
            ctx = None
            if scores:

                def scorer(spec: RouteSpec, features: RequestFeatures) -> float:
                    value = scores.get(spec.name, RuntimeError("not scored"))
                    if isinstance(value, Exception):
                        raise value
                    return value

                ctx = ResolveContext(scorer=scorer)
            try:
                plan = route_plan(entry.spec, cat.specs, parsed.features, ctx)
            except RouteResolutionError as error:
                raise GatewayError(
                    503, f"The route cannot be resolved: {error}.", "bad_route"
                ) from None
            route = parsed.model
        else:
            deployment = cat.served.get(parsed.model)
            if deployment is None:
                raise GatewayError(
                    404,
                    f"The model '{parsed.model}' does not exist or you do not have access to it.",
                    "model_not_found",
                    param="model",
                )
            plan = Plan(targets=(TargetRef("deployment", deployment.name),))
            route = ""
        targets = [
            t for ref in plan.targets if (t := snapshot.target_entry(org_id, ref)) is not None
        ]
        if not targets:
            raise GatewayError(503, "None of this route's targets exists any more.", "no_capacity")
        # A deployment answers either text generation or embeddings; the engine would answer
        # the other kind with a bare 404. External endpoints are left to answer for themselves.
        runner = _RUNNER_FOR_KIND[parsed.kind]
        usable = [t for t in targets if not isinstance(t, DeploymentEntry) or t.runner == runner]
        if not usable:
            raise GatewayError(
                400, _wrong_runner_message(parsed), "model_not_supported", param="model"
            )
        return route, plan, usable

    async def handle_inference(
        self,
        kind: str,
        request_id: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        started: float,
    ) -> None:
        key, org = await self.authenticate_fresh(scope)
        try:
            raw = await self._read_body(scope, receive)
            tag = None
            for name, value in scope["headers"]:
                if name == b"x-route-tag":
                    tag = value.decode("latin-1")[:64]
            await self.serve(kind, request_id, key, org, raw, tag, receive, send, started)
        except GatewayError as error:
            # Refused before reaching a model (failures after that are usage records).
            self.refusals.add(org.id, key.id, error.status, error.code)
            error.org, error.key_prefix = org.slug, key.prefix
            raise

    async def serve(
        self,
        kind: str,
        request_id: str,
        key: KeyEntry,
        org: OrgEntry,
        raw: bytes,
        tag: str | None,
        receive: Receive,
        send: Send,
        started: float,
    ) -> None:
        """Everything after authentication: checks, limits, the exchange, settlement."""
        parsed = bodies.request_parse(
            kind, raw, tag=tag, affinity_chars=self.config.affinity_prefix_chars
        )
        try:
            await self.serve_parsed(request_id, key, org, parsed, raw, receive, send, started)
        except GatewayError as error:
            error.model = parsed.model
            raise

    async def serve_parsed(
        self,
        request_id: str,
        key: KeyEntry,
        org: OrgEntry,
        parsed: bodies.ParsedRequest,
        raw: bytes,
        receive: Receive,
        send: Send,
        started: float,
    ) -> None:
        """``serve``, once the body is read: refusals raise, everything else is answered here."""
        if key.allowed_models and parsed.model not in key.allowed_models:
            raise GatewayError(
                403,
                f"This key may not use the model '{parsed.model}'.",
                "model_not_allowed",
                param="model",
            )
        scores = await self.auto_scores(org.id, parsed)
        route, plan, targets = self.plan_for(org.id, parsed, scores)
        reserve = 0
        if org.budget_micros is not None or key.budget_micros is not None:
            # Priced at every target that may answer, the cold-start fallback included.
            priced = targets
            if plan.cold_start_fallback is not None:
                cold = self.snapshot.target_entry(org.id, plan.cold_start_fallback)
                priced = [*targets, cold] if cold is not None else targets
            reserve = reservation_micros(self.snapshot, self.config, org, parsed, priced)
        adm = admission_build(self.snapshot, self.config, key, org, parsed, reserve)
        if not adm.empty:
            try:
                refusal = await self.limiter.admit(adm)
            except LimiterUnavailable as failure:
                adm, refusal = self.limits_unavailable(failure), None
            if refusal is not None:
                if refusal.is_budget:
                    message = f"Request refused: {refusal.counter.label} is used up."
                    if refusal.counter.key.startswith("gw:spend:org:") and org.budget_message:
                        message = org.budget_message
                    if refusal.counter.amount > 0:
                        # What is left may be short of this request's most, not gone: say so.
                        most = format_dollars(refusal.counter.amount)
                        message += (
                            f" This request could cost up to {most} (its prompt and max_tokens "
                            "at the model's price), which is reserved before it is sent: a "
                            "lower max_tokens may fit what is left."
                        )
                    raise GatewayError(402, message, "budget_exhausted")
                raise GatewayError(
                    429,
                    f"Rate limit reached: {refusal.counter.label}. "
                    f"Retry after {refusal.retry_after_s} s.",
                    "rate_limit_exceeded",
                    retry_after=refusal.retry_after_s,
                    headers=refusal_headers(refusal),
                )
        exchange = Exchange(
            self,
            request_id=request_id,
            route=route,
            org_id=org.id,
            parsed=parsed,
            raw=raw,
            send=send,
        )
        if adm.counts:
            exchange.extra_headers = self.cors_headers + rate_limit_headers(adm, time.time())
        watcher = asyncio.ensure_future(_watch_disconnect(receive, exchange))
        error: GatewayError | None = None

        def account(outcome: Outcome, code: str) -> None:
            request_account(
                self,
                Finished(
                    key, org, parsed, route, plan, outcome, adm, reserve, request_id, started, code
                ),
            )

        try:
            outcome = await exchange.run(plan, targets)
        except GatewayError as caught:
            error, outcome = caught, exchange.outcome
            outcome.status = caught.status
            if outcome.target is None and key.id != CONSOLE_KEY_ID:
                # No target was tried (a sleeping model that did not wake in time, a failed or
                # paused deployment): there is no usage record, so it is counted with the
                # refusals, by key and reason, above the request log.
                self.refusals.add(org.id, key.id, caught.status, caught.code)
        except Exception as fault:
            # A fault of the gateway's own once the limits admitted the request: settle it (the
            # budget reservation falls back to what was metered, usually nothing) and record
            # it, then let the caller log the fault and answer 500. Unsettled, the reservation
            # would stay counted against the budget until the month ends.
            exchange.outcome.status = 500
            account(exchange.outcome, "internal_error")
            raise _AccountedFault from fault
        finally:
            watcher.cancel()
        if error is not None and not outcome.disconnected:
            await _respond_error(send, error, request_id, route, outcome, exchange.extra_headers)
        account(outcome, error.code if error is not None else "")


def _is_https(scope: Scope, trust_forwarded_proto: bool) -> bool:
    """Whether a request came over https: the server's word (uvicorn already takes a trusted
    proxy's ``X-Forwarded-Proto``), or, with ``TRUST_X_FORWARDED_PROTO``, the proxy's header as
    Django reads it for the console."""
    if scope.get("scheme") == "https":
        return True
    if trust_forwarded_proto:
        for name, value in scope["headers"]:
            if name == b"x-forwarded-proto":
                return value.split(b",", 1)[0].strip() == b"https"
    return False


def _with_header(send: Send, header: tuple[bytes, bytes]) -> Send:
    async def send_with_header(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return send_with_header


def _log_refusal(request_id: str, path: str, error: GatewayError, started: float) -> None:
    """The access log line of a request answered with an error before reaching a model (those
    that did are logged with their usage). Never the key or the body."""
    access_logger.info(
        "request",
        extra={
            "request_id": request_id,
            "path": path,
            "org": error.org,
            "key": error.key_prefix,
            "model": error.model,
            "status": error.status,
            "code": error.code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


async def _watch_disconnect(receive: Receive, exchange: Exchange) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            exchange.on_disconnect()
            return


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_error(
    send: Send,
    error: GatewayError,
    request_id: str,
    route: str = "",
    outcome: Outcome | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    extra = list(extra or ())
    if request_id:
        extra.append((b"x-request-id", request_id.encode()))
    if route:
        extra.append((b"x-route", route.encode()))
    if outcome is not None and outcome.target is not None:
        extra.append((b"x-target", target_label(outcome.target).encode()))
        # Which deployment and replica answered last, as on a success.
        if isinstance(outcome.target, DeploymentEntry):
            extra.append((b"x-deployment-id", str(outcome.target.id).encode()))
        if outcome.replica is not None:
            extra.append((b"x-replica-id", outcome.replica.key.encode()))
    if error.retry_after is not None:
        extra.append((b"retry-after", str(error.retry_after).encode()))
    if error.headers:
        extra += error.headers
    await _respond(send, error.status, error.body(), extra=extra)
