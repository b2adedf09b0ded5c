"""The gateway's in-memory picture of the control plane: keys, orgs, routes, replicas, prices.

Built from the database in a background thread and swapped in whole, so that a request reads one
consistent, immutable snapshot with no query. A poller rebuilds it when the control-plane version
moves (keys revoked, routes edited, replicas ready) and at least every ``snapshot_ttl_s``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import close_old_connections
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from inference.gateway import ledger
from inference.routing.config import RouteConfigError, RouteSpec, TargetRef, route_spec_parse

logger = logging.getLogger(__name__)


# Stands for "no key" when the console sends a request as the organisation itself.
CONSOLE_KEY_ID = uuid.UUID(int=0)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    id: uuid.UUID
    org_id: int
    prefix: str
    scopes: frozenset[str]
    allowed_models: frozenset[str]
    rpm_limit: int | None
    tpm_limit: int | None
    budget_micros: int | None
    expires_at: float | None
    revoked: bool
    # Where the key may be used from; empty: anywhere.
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True, slots=True)
class OrgEntry:
    id: int
    slug: str
    suspended_reason: str | None
    budget_micros: int | None
    budget_message: str
    month_spend_micros: int
    # The org's own rate limits; None: the gateway's GATEWAY_ORG_*_LIMIT, 0: no limit.
    rpm_limit: int | None = None
    tpm_limit: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    id: uuid.UUID
    base_url: str
    key: str  # str(id), hashed for prefix affinity and used as a dict key


@dataclass(frozen=True, slots=True)
class DeploymentEntry:
    id: uuid.UUID
    org_id: int
    name: str
    served_model_name: str
    runner: str
    paused: bool
    max_model_len: int | None
    replicas: tuple[ReplicaEntry, ...]
    created: int = 0  # Unix seconds, for /v1/models
    # Whether the engine may choose tools by itself (tool_choice "auto", the default when a
    # request offers tools): vLLM needs a tool-call parser and auto tool choice turned on.
    auto_tools: bool = False
    # Why the deployment failed (its state reason), when the orchestrator gave up on it: no
    # replica will start until the tenant changes it, so requests must not wait for one.
    failure: str = ""


@dataclass(frozen=True, slots=True)
class ExternalEntry:
    id: uuid.UUID
    org_id: int
    name: str
    base_url: str
    model: str
    api_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    id: uuid.UUID
    spec: RouteSpec
    created: int = 0  # Unix seconds, for /v1/models


@dataclass(slots=True)
class OrgCatalogue:
    """What one org's keys can ask for by name."""

    routes: dict[str, RouteEntry] = field(default_factory=dict)
    deployments: dict[str, DeploymentEntry] = field(default_factory=dict)  # by deployment name
    served: dict[str, DeploymentEntry] = field(default_factory=dict)  # by served model name
    externals: dict[str, ExternalEntry] = field(default_factory=dict)
    specs: dict[str, RouteSpec] = field(default_factory=dict)


@dataclass(slots=True)
class Snapshot:
    version: int
    built_at: float
    keys: dict[str, KeyEntry]
    orgs: dict[int, OrgEntry]
    catalogues: dict[int, OrgCatalogue]
    prices: ledger.PriceLookup | None
    month: str
    key_spend: dict[uuid.UUID, int] = field(default_factory=dict)
    price_cache: dict[uuid.UUID, ledger.PriceRates] = field(default_factory=dict)
    spend: ledger.Spend | None = None
    # Auto routes' own fitted scorer heads (JSON), by route id; routes absent use the shipped one.
    scorer_heads: dict[uuid.UUID, str] = field(default_factory=dict)
    # The control plane's keys version when ``keys`` were read (console.snapshot).
    keys_version: int = 0

    def catalogue(self, org_id: int) -> OrgCatalogue:
        return self.catalogues.get(org_id) or OrgCatalogue()

    def target_entry(self, org_id: int, ref: TargetRef) -> DeploymentEntry | ExternalEntry | None:
        cat = self.catalogue(org_id)
        if ref.kind == "deployment":
            return cat.deployments.get(ref.name)
        if ref.kind == "external":
            return cat.externals.get(ref.name)
        return None

    def price(self, org_id: int, target: DeploymentEntry | ExternalEntry) -> ledger.PriceRates:
        """The target's price now, for reservations (the ledger rates records itself).

        Cached for the snapshot's life (at most ``snapshot_ttl_s``), so a price version that
        takes effect is used for reservations within that time."""
        cached = self.price_cache.get(target.id)
        if cached is not None:
            return cached
        if self.prices is None:
            price = ledger.FREE
        elif isinstance(target, DeploymentEntry):
            price = self.prices.get(org_id, target.served_model_name, deployment_id=target.id)
        else:
            price = self.prices.get(org_id, target.model)
        self.price_cache[target.id] = price
        return price


def empty_snapshot() -> Snapshot:
    return Snapshot(0, 0.0, {}, {}, {}, None, "")


def _failure(state: str, reason: str) -> str:
    from inference.models import DeploymentState  # models load later than this module
    from inference.models.deployments import reason_headline

    if state != DeploymentState.FAILED:
        return ""
    line = reason_headline(reason) or "no reason was recorded"
    return line if len(line) <= 300 else line[:299] + "…"


def _auto_tools(engine_args: object) -> bool:
    return (
        isinstance(engine_args, dict)
        and engine_args.get("enable_auto_tool_choice") is True
        and bool(engine_args.get("tool_call_parser"))
    )


def _max_model_len(engine_args: object) -> int | None:
    if isinstance(engine_args, dict):
        value = engine_args.get("max_model_len")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _KeyLists:
    """A key's JSON lists, read as the database's text and each distinct text decoded once:
    most keys share a handful of scope and model lists, and decoding every row's JSON was most
    of a rebuild's time with tens of thousands of keys. The values are immutable, so keys share
    them."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str | None], Any] = {}

    def get(self, field_name: str, text: str | None) -> Any:
        known = self._seen.get((field_name, text), self)
        if known is not self:
            return known
        items = json.loads(text) if text else None
        value: Any
        if field_name == "allowed_ips":
            value = tuple(ipaddress.ip_network(n) for n in items or ())
        else:
            value = frozenset(items or ())
        self._seen[(field_name, text)] = value
        return value


def _keys_read(now: datetime) -> dict[str, KeyEntry]:
    """Every key by its digest (and a rolled key's previous digest during its grace period)."""
    from console.models import ApiKey

    keys: dict[str, KeyEntry] = {}
    lists = _KeyLists()
    # Tuples rather than dicts: a platform has tens of thousands of keys.
    for (
        key_id,
        org_id,
        prefix,
        digest,
        scopes,
        allowed_models,
        allowed_ips,
        rpm_limit,
        tpm_limit,
        budget_micros,
        expires,
        revoked_at,
        previous_digest,
        previous_prefix,
        grace,
    ) in ApiKey.objects.annotate(
        scopes_text=Cast("scopes", TextField()),
        allowed_models_text=Cast("allowed_models", TextField()),
        allowed_ips_text=Cast("allowed_ips", TextField()),
    ).values_list(
        "id",
        "org_id",
        "prefix",
        "digest",
        "scopes_text",
        "allowed_models_text",
        "allowed_ips_text",
        "rpm_limit",
        "tpm_limit",
        "monthly_budget_micros",
        "expires_at",
        "revoked_at",
        "previous_digest",
        "previous_prefix",
        "previous_expires_at",
    ):
        key_entry = keys[digest] = KeyEntry(
            id=key_id,
            org_id=org_id,
            prefix=prefix,
            scopes=lists.get("scopes", scopes),
            allowed_models=lists.get("allowed_models", allowed_models),
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            budget_micros=budget_micros,
            expires_at=expires.timestamp() if expires is not None else None,
            revoked=revoked_at is not None,
            allowed_networks=lists.get("allowed_ips", allowed_ips),
        )
        # The secret a roll replaced: the same key until its grace period ends.
        if previous_digest and grace is not None and grace > now:
            ends = min(grace, expires) if expires is not None else grace
            keys[previous_digest] = dataclasses.replace(
                key_entry, prefix=previous_prefix, expires_at=ends.timestamp()
            )
    return keys


def snapshot_build(
    version: int,
    previous: Snapshot | None = None,
    *,
    keys_version: int = 0,
    reuse_keys: bool = False,
) -> Snapshot:
    """Read the control plane into a fresh snapshot (a handful of queries, no per-row ones).

    If billing's spend figures cannot be read, the previous snapshot's are kept (caps included),
    so that a billing problem neither stops serving nor lifts the caps. With ``reuse_keys`` (the
    keys version has not moved since ``previous`` read them) the previous snapshot's keys are
    kept instead of read again."""
    from console.models import Organisation
    from inference.models import Deployment, ExternalEndpoint, Replica, Route, RouteScorer
    from inference.routing.secrets import secret_decrypt

    now = timezone.now()
    try:
        spend = ledger.spend_load(now)
    except Exception:
        logger.exception("spend figures unavailable; keeping the previous ones")
        kept = previous.spend if previous is not None else None
        spend = kept if kept is not None else ledger.Spend({}, {}, {}, {})
    orgs = {
        row["id"]: OrgEntry(
            id=row["id"],
            slug=row["slug"],
            suspended_reason=(row["suspended_reason"] or "no reason given")
            if row["suspended_at"] is not None
            else None,
            budget_micros=spend.org_caps.get(row["id"]),
            budget_message=spend.org_cap_messages.get(row["id"], ""),
            month_spend_micros=spend.org_spend.get(row["id"], 0),
            rpm_limit=row["rpm_limit"],
            tpm_limit=row["tpm_limit"],
        )
        for row in Organisation.objects.values(
            "id", "slug", "suspended_at", "suspended_reason", "rpm_limit", "tpm_limit"
        )
    }
    if reuse_keys and previous is not None:
        keys, keys_version = previous.keys, previous.keys_version
    else:
        keys = _keys_read(now)

    replicas: dict[uuid.UUID, list[ReplicaEntry]] = {}
    for rep in (
        Replica.objects.filter(state="ready", deployment__deleted_at=None)
        .exclude(port=None)
        .values("id", "deployment_id", "host", "port")
        .order_by("created_at")
    ):
        host = rep["host"] or "127.0.0.1"
        replicas.setdefault(rep["deployment_id"], []).append(
            ReplicaEntry(id=rep["id"], base_url=f"http://{host}:{rep['port']}", key=str(rep["id"]))
        )
    catalogues: dict[int, OrgCatalogue] = {}
    for dep in Deployment.objects.filter(deleted_at=None).values(
        "id", "org_id", "name", "served_model_name", "runner", "paused", "engine_args",
        "created_at", "state", "state_reason",
    ):  # fmt: skip
        entry = DeploymentEntry(
            id=dep["id"],
            org_id=dep["org_id"],
            name=dep["name"],
            served_model_name=dep["served_model_name"],
            runner=dep["runner"],
            paused=dep["paused"],
            max_model_len=_max_model_len(dep["engine_args"]),
            auto_tools=_auto_tools(dep["engine_args"]),
            replicas=tuple(replicas.get(dep["id"], ())),
            created=int(dep["created_at"].timestamp()),
            failure=_failure(dep["state"], dep["state_reason"]),
        )
        cat = catalogues.setdefault(dep["org_id"], OrgCatalogue())
        cat.deployments[entry.name] = entry
        cat.served[entry.served_model_name] = entry
    for endpoint in ExternalEndpoint.objects.all():
        try:
            api_key = secret_decrypt(endpoint.api_key_encrypted)
        except ValueError:
            logger.error(
                "external endpoint key cannot be decrypted",
                extra={"endpoint_id": str(endpoint.id)},
            )
            continue
        catalogues.setdefault(endpoint.org_id, OrgCatalogue()).externals[endpoint.name] = (
            ExternalEntry(
                id=endpoint.id,
                org_id=endpoint.org_id,
                name=endpoint.name,
                base_url=endpoint.base_url.rstrip("/"),
                model=endpoint.model,
                api_key=api_key,
            )
        )
    for route in Route.objects.values(
        "id", "org_id", "name", "policy", "config", "cold_start_fallback", "created_at"
    ):
        try:
            spec = route_spec_parse(
                name=route["name"],
                policy=route["policy"],
                config=route["config"],
                cold_start_fallback=route["cold_start_fallback"],
            )
        except RouteConfigError as error:
            # Saved routes were validated; this only happens if validation rules tightened.
            logger.error(
                "route skipped: invalid configuration",
                extra={"route_id": str(route["id"]), "error": "; ".join(error.messages)},
            )
            continue
        cat = catalogues.setdefault(route["org_id"], OrgCatalogue())
        cat.routes[spec.name] = RouteEntry(
            id=route["id"], spec=spec, created=int(route["created_at"].timestamp())
        )
        cat.specs[spec.name] = spec
    scorer_heads = dict(
        RouteScorer.objects.filter(route__policy="auto", fitted_at__isnull=False)
        .exclude(head_json="")
        .values_list("route_id", "head_json")
    )
    return Snapshot(
        version=version,
        built_at=time.monotonic(),
        keys=keys,
        orgs=orgs,
        catalogues=catalogues,
        prices=ledger.prices_load(),
        month=now.strftime("%Y%m"),
        key_spend=spend.key_spend,
        spend=spend,
        scorer_heads=scorer_heads,
        keys_version=keys_version,
    )


# The shortest time between two version checks that requests asked for (``check_soon``).
MIN_CHECK_GAP_S = 0.05


class SnapshotPoller:
    """A daemon thread: poll the control-plane version, rebuild on change or TTL, hand it over.

    ``install`` is called with each new snapshot from the poller thread; the gateway makes it a
    thread-safe handover to its event loop. ``after`` (if given) is called from the same thread
    after every poll, for the gateway's other small writes.
    """

    def __init__(
        self,
        install: Callable[[Snapshot], None],
        *,
        poll_s: float,
        ttl_s: float,
        build: Callable[..., Snapshot] = snapshot_build,
        after: Callable[[], object] | None = None,
    ) -> None:
        self._install = install
        self._after = after
        self._poll_s = poll_s
        self._ttl_s = ttl_s
        self._build = build
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._checked: list[Callable[[], None]] = []
        self._checked_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.version = -1
        self.built_at = 0.0
        self.last: Snapshot | None = None

    def refresh(self, *, force: bool = False) -> bool:
        """Rebuild if the version moved, the TTL passed, or ``force``. Returns whether it did."""
        from console.snapshot import snapshot_versions

        try:
            version, keys_version = snapshot_versions()
            stale = time.monotonic() - self.built_at >= self._ttl_s
            if not (force or stale or version != self.version):
                return False
            # Keys are read again when their version moved, and at every forced or TTL rebuild.
            reuse_keys = (
                not (force or stale)
                and self.last is not None
                and self.last.keys_version == keys_version
            )
            snapshot = self._build(
                version, self.last, keys_version=keys_version, reuse_keys=reuse_keys
            )
            self.version, self.built_at, self.last = version, snapshot.built_at, snapshot
            self._install(snapshot)
            return True
        finally:
            close_old_connections()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def check_soon(self, done: Callable[[], None]) -> None:
        """Check the version now instead of at the next poll, then call ``done`` (from the poller
        thread, after any new snapshot has been handed to ``install``). Requests that arrive
        together share one check, and checks asked for are at most ``MIN_CHECK_GAP_S`` apart, so
        a stream of unknown keys costs the database a few small queries a second at most."""
        with self._checked_lock:
            self._checked.append(done)
        self._wake.set()

    def _run(self) -> None:
        last_check = 0.0
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            gap = last_check + MIN_CHECK_GAP_S - time.monotonic()
            if gap > 0 and self._stop.wait(gap):
                break
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._checked_lock:
                checked, self._checked = self._checked, []
            last_check = time.monotonic()
            try:
                self.refresh()
            except Exception:
                # The old snapshot keeps serving; the next poll tries again.
                logger.exception("snapshot refresh failed")
            for done in checked:
                done()
            if self._after is not None:
                try:
                    self._after()
                except Exception:
                    logger.exception("after-poll work failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway-snapshot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
