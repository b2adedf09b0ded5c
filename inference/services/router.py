"""Auto routes: calibrating thresholds, and tenants' own scorer heads.

Calibration turns a route's ``max_strong_percent`` into thresholds (``inference.routing.
calibration``) on the route's own recent traffic: the router scores of its last
``WINDOW_REQUESTS`` scored requests within ``WINDOW_DAYS`` (and since its scorer head last
changed). Until there are ``MIN_TRAFFIC`` of them it uses a reference distribution: the scores of
the route's uploaded outcome file under its fitted head, or else the shipped reference sample
(``inference.routing.reference``). It runs when a route is saved and every few minutes from Celery
beat; a change of thresholds is announced to gateways with ``snapshot_bump``.

A tenant's outcome file is checked in the request (a bad one names the row and changes nothing),
stored, and fitted in a worker (``route_scorer_fit``), refining the shipped head.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from console.models import ApiKey, Organisation, User
from console.services.audit import audit_record
from console.snapshot import snapshot_bump
from inference.models import Deployment, ExternalEndpoint, Route, RouteScorer
from inference.routing.calibration import (
    MIN_TRAFFIC,
    WINDOW_DAYS,
    WINDOW_REQUESTS,
    target_shares,
    thresholds_for_share,
)
from inference.routing.config import RouteConfigError, TargetRef, target_ref_parse
from inference.routing.reference import reference_scores
from inference.routing.resolve import auto_choose
from inference.selectors.router import WindowRecord, route_window

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 2_000_000
MIN_UPLOAD_ROWS = 20


@dataclass(frozen=True, slots=True)
class Calibration:
    source: str  # "traffic", "outcome file" or "reference sample"
    count: int
    thresholds: tuple[float, ...]
    shares: tuple[float, ...]  # per target, cheapest first, on the calibration scores
    # Per 1,000 requests like the window's (traffic only): at these thresholds, and all-strong.
    expected_cost_per_1k_micros: int | None = None
    baseline_cost_per_1k_micros: int | None = None

    @property
    def strong_share(self) -> float:
        return self.shares[-1]

    def as_config(self) -> dict[str, Any]:
        data = asdict(self)
        # Exact: a threshold rounded up past a score many requests share would send them all
        # to the stronger target and break the share shown.
        data["thresholds"] = list(self.thresholds)
        data["shares"] = [round(s, 4) for s in self.shares]
        data["at"] = timezone.now().isoformat()
        return data


def _target_prices(org: Organisation, refs: Sequence[TargetRef]) -> list[Any] | None:
    from billing.pricing import price_table

    table = price_table()
    prices = []
    for ref in refs:
        if ref.kind == "deployment":
            dep = Deployment.objects.filter(org=org, name=ref.name, deleted_at=None).first()
            if dep is None:
                return None
            prices.append(table.get(org.id, dep.served_model_name, deployment_id=dep.id))
        else:
            endpoint = ExternalEndpoint.objects.filter(org=org, name=ref.name).first()
            if endpoint is None:
                return None
            prices.append(table.get(org.id, endpoint.model))
    return prices


def auto_order_problem(org: Organisation, config: Any) -> str | None:
    """Why an auto route's targets are not listed cheapest first, if they are not: a later
    target whose token prices are both lower than an earlier one's would be treated as the
    stronger and get the hard requests. Targets billed by uptime (no per-token price) and pairs
    where one price is higher and the other lower are not judged."""
    refs = _auto_refs(config)
    if refs is None:
        return None
    prices = _target_prices(org, refs)
    if prices is None:
        return None
    for i, earlier in enumerate(prices):
        for j in range(i + 1, len(prices)):
            later = prices[j]
            if earlier.is_uptime or later.is_uptime:
                continue
            if (
                later.input_micros_per_million < earlier.input_micros_per_million
                and later.output_micros_per_million < earlier.output_micros_per_million
            ):
                return (
                    f"Targets go from the cheapest to the strongest, but {refs[j]} costs less "
                    f"than {refs[i]} listed before it "
                    f"({_per_million(later)} against {_per_million(earlier)}). "
                    "List the cheaper model first."
                )
    return None


def _per_million(rates: Any) -> str:
    from billing.money import format_dollars

    return (
        f"{format_dollars(rates.input_micros_per_million)} in / "
        f"{format_dollars(rates.output_micros_per_million)} out per million tokens"
    )


def _expected_costs(
    org: Organisation,
    refs: Sequence[TargetRef],
    window: Sequence[WindowRecord],
    thresholds: tuple[float, ...],
) -> tuple[int | None, int | None]:
    from billing.pricing import cost_micros

    prices = _target_prices(org, refs)
    if prices is None or not window:
        return None, None
    cost = baseline = 0
    for r in window:
        chosen = prices[auto_choose(r.score, thresholds)]
        cost += cost_micros(chosen, r.prompt_tokens, r.completion_tokens, r.cached_tokens)
        baseline += cost_micros(prices[-1], r.prompt_tokens, r.completion_tokens, r.cached_tokens)
    return cost * 1000 // len(window), baseline * 1000 // len(window)


def calibration_compute(
    *,
    org: Organisation,
    route_name: str,
    route_id: uuid.UUID | None,
    targets: Sequence[TargetRef],
    max_strong_percent: int,
) -> Calibration:
    scorer = scorer_in_use(route_id) if route_id is not None else None
    # Only this route's own traffic: a route not saved yet has none, and an older route that had
    # the same name (deleted since) is another route, with other targets and perhaps another head.
    since = timezone.now() - timedelta(days=WINDOW_DAYS)
    created = (
        Route.objects.filter(id=route_id).values_list("created_at", flat=True).first()
        if route_id is not None
        else timezone.now()
    )
    if created is not None:
        since = max(since, created)
    if scorer is not None and scorer.fitted_at is not None:
        since = max(since, scorer.fitted_at)
    window = route_window(org=org, route_name=route_name, since=since, limit=WINDOW_REQUESTS)
    if len(window) >= MIN_TRAFFIC:
        source, scores = "traffic", [r.score for r in window]
    elif scorer is not None and scorer.reference_scores:
        source, scores = "outcome file", list(scorer.reference_scores)
    else:
        source, scores = "reference sample", list(reference_scores())
    thresholds = thresholds_for_share(
        scores, targets=len(targets), max_strong_percent=max_strong_percent
    )
    expected = baseline = None
    if source == "traffic":
        expected, baseline = _expected_costs(org, targets, window, thresholds)
    return Calibration(
        source=source,
        count=len(scores),
        thresholds=thresholds,
        shares=tuple(target_shares(scores, thresholds)),
        expected_cost_per_1k_micros=expected,
        baseline_cost_per_1k_micros=baseline,
    )


def scorer_in_use(route_id: uuid.UUID) -> RouteScorer | None:
    """The route's own fitted head, if it has one: it keeps serving while a newer upload is
    fitted, and after a fit fails."""
    return (
        RouteScorer.objects.filter(route_id=route_id, fitted_at__isnull=False)
        .exclude(head_json="")
        .first()
    )


def _auto_refs(config: Any) -> list[TargetRef] | None:
    items = config.get("targets") if isinstance(config, dict) else None
    if not isinstance(items, list) or len(items) < 2:
        return None
    try:
        return [target_ref_parse(item, f"targets[{i}]") for i, item in enumerate(items)]
    except RouteConfigError:
        return None


def _auto_targets(config: Any) -> tuple[list[TargetRef], int] | None:
    if not isinstance(config, dict):
        return None
    share = config.get("max_strong_percent")
    if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
        return None
    refs = _auto_refs(config)
    return None if refs is None else (refs, share)


def auto_config_prepare(
    *, org: Organisation, route_name: str, route_id: uuid.UUID | None, config: Any
) -> Any:
    """On save: an auto route with ``max_strong_percent`` gets its thresholds calibrated now.

    Anything malformed is returned unchanged for the route validation to report."""
    found = _auto_targets(config)
    if found is None:
        if (
            isinstance(config, dict)
            and "calibration" in config
            and "max_strong_percent" not in config
        ):
            # Thresholds set by hand now: the calibration of an earlier share no longer applies,
            # and the route page must not show its expected shares and cost.
            return {k: v for k, v in config.items() if k != "calibration"}
        return config
    refs, share = found
    calibration = calibration_compute(
        org=org, route_name=route_name, route_id=route_id, targets=refs, max_strong_percent=share
    )
    config = {k: v for k, v in config.items() if k != "threshold"}
    config["thresholds"] = list(calibration.thresholds)
    config["calibration"] = calibration.as_config()
    return config


@transaction.atomic
def route_recalibrate(*, route_id: uuid.UUID) -> bool:
    """Recompute an auto route's thresholds; returns whether they changed (and were announced)."""
    route = Route.objects.select_for_update().filter(id=route_id, policy="auto").first()
    if route is None:
        return False
    config = auto_config_prepare(
        org=route.org, route_name=route.name, route_id=route.id, config=route.config
    )
    if config is route.config:
        return False
    changed = config.get("thresholds") != route.config.get("thresholds")
    before = route.config.get("thresholds")
    route.config = config
    route.save(update_fields=["config"])
    if changed:
        audit_record(
            org=route.org,
            action="route.recalibrated",
            target=route,
            data={"before": before, "after": config["thresholds"]},
        )
        snapshot_bump(keys=False)
    return changed


def routes_recalibrate_all() -> int:
    """Recalibrate every auto route that asks for a strong share; returns how many changed."""
    changed = 0
    for route_id in Route.objects.filter(policy="auto").values_list("id", flat=True):
        try:
            changed += route_recalibrate(route_id=route_id)
        except Exception:
            logger.exception("recalibration failed", extra={"route_id": str(route_id)})
    return changed


# ---- tenants' outcome files --------------------------------------------------------------------


@transaction.atomic
def route_scorer_upload(
    *,
    route: Route,
    actor: User | None,
    file_name: str,
    data: bytes,
    actor_key: ApiKey | None = None,
) -> RouteScorer:
    """Check an outcome file and queue the fit of the route's own head. A bad file raises
    ValidationError({"file": ...}) naming the row, and nothing is stored."""
    from inference.scorer.outcomes import OutcomeFileError, outcomes_from_bytes

    if route.policy != "auto":
        raise ValidationError({"file": "Only routes with the auto policy use a scorer."})
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValidationError({"file": f"The file is larger than {MAX_UPLOAD_BYTES} bytes."})
    try:
        outcomes = outcomes_from_bytes(data)
    except OutcomeFileError as error:
        raise ValidationError({"file": str(error)}) from None
    if len(outcomes.rows) < MIN_UPLOAD_ROWS:
        raise ValidationError(
            {
                "file": f"The file has {len(outcomes.rows)} prompt rows; at least "
                f"{MIN_UPLOAD_ROWS} are needed to fit a scorer."
            }
        )
    scorer, _ = RouteScorer.objects.update_or_create(
        route=route,
        defaults={
            "org": route.org,
            "state": "pending",
            "file_name": (file_name or "")[:200],
            "rows": len(outcomes.rows),
            "weak_model": outcomes.weak_model[:200],
            "strong_model": outcomes.strong_model[:200],
            "upload": data.decode("utf-8-sig"),
            "error": "",
            "created_by": actor if actor is not None and actor.is_authenticated else None,
            "created_at": timezone.now(),
        },
    )
    audit_record(
        org=route.org,
        action="route.scorer_uploaded",
        actor=actor,
        actor_key=actor_key,
        target=route,
        data={"file_name": scorer.file_name, "rows": scorer.rows},
    )
    scorer_id = str(scorer.id)
    transaction.on_commit(lambda: _fit_queue(scorer_id))
    return scorer


def _fit_queue(scorer_id: str) -> bool:
    from inference.tasks import route_scorer_fit_task

    try:
        route_scorer_fit_task.delay(scorer_id)
    except Exception:  # the broker is down: route_scorers_fit_pending queues it later
        logger.exception("could not queue a scorer fit", extra={"scorer_id": scorer_id})
        return False
    return True


def route_scorers_fit_pending(*, now: datetime | None = None) -> int:
    """Queue again the fit of every upload still pending after the task time limit (beat):
    its task was never queued (the broker was down) or died with its worker, and the route's
    page would otherwise say "Fitting" for good. Returns how many were queued."""
    before = (now or timezone.now()) - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    stale = RouteScorer.objects.filter(state="pending", created_at__lt=before)
    return sum(_fit_queue(str(scorer_id)) for scorer_id in stale.values_list("id", flat=True))


@transaction.atomic
def route_scorer_remove(
    *, route: Route, actor: User | None, actor_key: ApiKey | None = None
) -> bool:
    """Go back to the platform's scorer: the route's own head (and any upload being fitted) is
    dropped, the route recalibrated and the gateways told. Returns whether there was one."""
    scorer = RouteScorer.objects.select_for_update().filter(route=route).first()
    if scorer is None:
        return False
    file_name = scorer.file_name
    scorer.delete()
    audit_record(
        org=route.org,
        action="route.scorer_removed",
        actor=actor,
        actor_key=actor_key,
        target=route,
        data={"file_name": file_name},
    )
    if not route_recalibrate(route_id=route.id):
        snapshot_bump(keys=False)  # the gateways drop the head
    return True


def route_scorer_fit(*, scorer_id: uuid.UUID | str) -> bool:
    """Fit a pending upload (blocking: seconds). Returns whether a head was stored."""
    from inference.scorer.embedder import Embedder
    from inference.scorer.fit import fit_from_outcomes
    from inference.scorer.head import HeadWeights
    from inference.scorer.outcomes import outcomes_from_bytes
    from inference.scorer.scorer import SHIPPED_WEIGHTS, Scorer

    pending = RouteScorer.objects.filter(id=scorer_id, state="pending").first()
    if pending is None:
        return False
    uploaded_at = pending.created_at
    try:
        outcomes = outcomes_from_bytes(pending.upload.encode("utf-8"))
        prior = HeadWeights.load(SHIPPED_WEIGHTS)
        embedder = Embedder(prior.embedder)
        head = fit_from_outcomes(outcomes.rows, embedder=embedder, prior=prior)
        scored = Scorer(head, embedder, cache_size=0).score_batch(outcomes.prompts)
    except Exception as error:
        logger.exception("scorer fit failed", extra={"scorer_id": str(scorer_id)})
        # A head fitted earlier (if any) stays in use.
        RouteScorer.objects.filter(id=scorer_id, created_at=uploaded_at).update(
            state="failed", error=str(error)[:300], upload=""
        )
        return False
    # Only if no newer upload replaced this one meanwhile.
    stored = RouteScorer.objects.filter(id=scorer_id, created_at=uploaded_at).update(
        state="ready",
        head_json=head.to_json(),
        reference_scores=sorted(round(s, 4) for s in scored),
        upload="",
        fitted_at=timezone.now(),
    )
    if stored:
        route_id = pending.route_id
        if not route_recalibrate(route_id=route_id):
            snapshot_bump(keys=False)  # the gateways load the new head
    return bool(stored)
