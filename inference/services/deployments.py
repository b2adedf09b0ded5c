"""Writes to deployments: create, update, scale, pause, resume, delete, and the demand signal.

Every change is validated before anything is written, checked against the org's quotas under a
row lock on the org, audited, and announced to gateways with ``snapshot_bump``. The orchestrator
notices the new desired state on its next pass.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from console.models import ApiKey, Organisation, User
from console.services.audit import audit_record
from console.services.orgs import OrgSuspendedError
from console.snapshot import snapshot_bump
from inference.conf import model_roots
from inference.engine_args import engine_args_validate
from inference.models import Deployment, ModelSource, ReplicaState, Route, Runner
from inference.services.routes import routes_check_deployment_runner, routes_sending_to

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SERVED_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")

MAX_GPUS_PER_REPLICA = 8
MAX_REPLICAS = 64
# Changing these needs new engine processes; replicas of the old version are replaced.
SPEC_FIELDS = ("source", "model", "revision", "runner", "engine_args", "gpus_per_replica")
EDITABLE = (
    "name",
    "served_model_name",
    *SPEC_FIELDS,
    "min_replicas",
    "max_replicas",
    "target_concurrency",
    "scale_down_delay_s",
)
# What would let a deployment use more GPUs: refused while the organisation is suspended.
GROWTH_FIELDS = ("min_replicas", "max_replicas", "gpus_per_replica")
CUTS_ALLOWED = "Pausing, scaling down and deleting deployments still work."
DEMAND_MIN_INTERVAL = timedelta(seconds=1)
# A deployment allowed no replicas would look asleep, yet nothing would ever start one: sleeping
# between requests is min_replicas 0, and stopping is Pause.
NO_REPLICAS_MESSAGE = (
    "{field} must be at least 1: with min_replicas 0 the deployment scales to zero between "
    "requests (the next request starts a replica), and Pause stops it."
)


# Each number a deployment takes and its range, both ends allowed (the REST API's schema
# publishes the same ranges).
NUMBER_RANGES = {
    "gpus_per_replica": (0, MAX_GPUS_PER_REPLICA),
    "min_replicas": (0, MAX_REPLICAS),
    "max_replicas": (1, MAX_REPLICAS),
    "target_concurrency": (1, 10_000),
    "scale_down_delay_s": (0, 86_400),
}


def _int(errors: dict[str, str], field: str, value: Any) -> int:
    low, high = NUMBER_RANGES[field]
    if isinstance(value, bool) or not isinstance(value, int):
        errors[field] = f"{field} must be a whole number."
        return low
    if not low <= value <= high:
        errors[field] = f"{field} must be between {low} and {high}."
    return value


def _check_local_path(path: str) -> str:
    if not os.path.isabs(path):
        raise ValueError("A local model must be an absolute path.")
    normal = os.path.normpath(path)
    if ".." in path.split("/"):
        raise ValueError("A local model path may not contain '..'.")
    roots = model_roots()
    if not any(normal == root or normal.startswith(root + os.sep) for root in roots):
        raise ValueError(f"Local models must lie under an allowed directory: {', '.join(roots)}.")
    return normal


def _validated(values: dict[str, Any], *, runner_given: bool = False) -> dict[str, Any]:
    """Check a complete set of deployment fields; raise ValidationError naming each bad field.

    ``runner_given``: whether ``values["runner"]`` is what the caller asked for (and so may
    contradict a runner in the engine arguments), rather than the deployment's current one.
    """
    errors: dict[str, str] = {}
    clean = dict(values)
    name = str(values.get("name") or "").strip()
    if not NAME_RE.match(name):
        errors["name"] = "Use 1 to 63 lowercase letters, digits and hyphens (not at either end)."
    clean["name"] = name
    served = str(values.get("served_model_name") or "").strip() or name
    if not SERVED_NAME_RE.match(served):
        errors["served_model_name"] = (
            "Use up to 128 letters, digits and . _ : / - (starting with a letter or digit)."
        )
    clean["served_model_name"] = served

    source = values.get("source")
    model = str(values.get("model") or "").strip()
    revision = str(values.get("revision") or "").strip()
    if source not in ModelSource.values:
        errors["source"] = f"source must be one of {', '.join(ModelSource.values)}."
    elif source == ModelSource.HUGGINGFACE:
        if not HF_REPO_RE.match(model):
            errors["model"] = "A Hugging Face model is named owner/name."
        if revision and not REVISION_RE.match(revision):
            errors["revision"] = "A revision is a branch, tag or commit id."
    else:
        if revision:
            errors["revision"] = "A local model has no revision."
        try:
            model = _check_local_path(model)
        except ValueError as error:
            errors["model"] = str(error)
    clean["model"], clean["revision"] = model, revision

    try:
        engine_args = engine_args_validate(values.get("engine_args"))
    except ValidationError as error:
        errors["engine_args"] = " ".join(error.message_dict["engine_args"])
        engine_args = {}
    in_args = engine_args.pop("runner", None)
    field_runner = values.get("runner")
    runner = in_args or field_runner or Runner.GENERATE
    if runner not in Runner.values:
        errors["runner"] = f"runner must be one of {', '.join(Runner.values)}."
    elif runner_given and in_args and field_runner and in_args != field_runner:
        errors["runner"] = (
            f"runner is “{field_runner}” but engine_args sets runner “{in_args}”; set it once."
        )
    clean["runner"], clean["engine_args"] = runner, engine_args

    gpus = _int(errors, "gpus_per_replica", values.get("gpus_per_replica"))
    tp = engine_args.get("tensor_parallel_size")
    if tp is not None and tp != gpus and "gpus_per_replica" not in errors:
        errors["engine_args"] = f"tensor_parallel_size ({tp}) must equal gpus_per_replica ({gpus})."
    low = _int(errors, "min_replicas", values.get("min_replicas"))
    high = _int(errors, "max_replicas", values.get("max_replicas"))
    if high == 0:
        errors["max_replicas"] = NO_REPLICAS_MESSAGE.format(field="max_replicas")
    if "min_replicas" not in errors and "max_replicas" not in errors and low > high:
        errors["max_replicas"] = "max_replicas must be at least min_replicas."
    _int(errors, "target_concurrency", values.get("target_concurrency"))
    _int(errors, "scale_down_delay_s", values.get("scale_down_delay_s"))
    if errors:
        raise ValidationError(errors)
    return clean


def _check_quota(*, org: Organisation, values: dict[str, Any], exclude: Deployment | None) -> None:
    """The org's deployments together may allow at most max_replicas and max_gpus.

    ``exclude`` is the deployment being changed, as it is now. Only a change that adds to the
    org's use is held to the quota: staff may have lowered it under what the org already uses,
    and a change that keeps or lowers the use (a fix, a shrink) must still pass.
    """
    others = Deployment.objects.filter(org=org, deleted_at__isnull=True)
    had_replicas = had_gpus = 0
    if exclude is not None:
        others = others.exclude(pk=exclude.pk)
        had_replicas = exclude.max_replicas
        had_gpus = exclude.max_replicas * exclude.gpus_per_replica
    rows = list(others.values_list("max_replicas", "gpus_per_replica"))
    replicas_used = sum(r for r, _ in rows)
    gpus_used = sum(r * g for r, g in rows)
    want = values["max_replicas"]
    if replicas_used + want > org.max_replicas and want > had_replicas:
        left = max(0, org.max_replicas - replicas_used)
        raise ValidationError(
            {
                "max_replicas": f"Your organisation may run {org.max_replicas} replicas in all; "
                f"its other deployments may use {replicas_used}, so at most {left} are left."
            }
        )
    want_gpus = want * values["gpus_per_replica"]
    if gpus_used + want_gpus > org.max_gpus and want_gpus > had_gpus:
        left = max(0, org.max_gpus - gpus_used)
        raise ValidationError(
            {
                "gpus_per_replica": f"Your organisation may use {org.max_gpus} GPUs in all; "
                f"its other deployments may use {gpus_used}, and this one would use up to "
                f"{want_gpus} ({want} replicas x {values['gpus_per_replica']}); {left} are left."
            }
        )


def _check_unique(*, org: Organisation, values: dict[str, Any], exclude: Deployment | None) -> None:
    live = Deployment.objects.filter(org=org, deleted_at__isnull=True)
    if exclude is not None:
        live = live.exclude(pk=exclude.pk)
    errors = {}
    if live.filter(name=values["name"]).exists():
        errors["name"] = f"A deployment named “{values['name']}” exists."
    if live.filter(served_model_name=values["served_model_name"]).exists():
        errors["served_model_name"] = (
            f"Another deployment already serves “{values['served_model_name']}”."
        )
    elif Route.objects.filter(org=org, name=values["served_model_name"]).exists():
        # Requests name a model; one name must not mean a route and a deployment at once.
        errors["served_model_name"] = (
            f"A route is named “{values['served_model_name']}”; choose another model name."
        )
    if errors:
        raise ValidationError(errors)


def _lock_org(org: Organisation) -> Organisation:
    return Organisation.objects.select_for_update().get(pk=org.pk)


def _check_suspended_growth(
    *, org: Organisation, current: Deployment, before: dict[str, Any], values: dict[str, Any]
) -> None:
    """A suspended organisation keeps what it runs and may cut it, but not add to it: no higher
    replica bounds or GPUs, and no new engine version beside the running one (a spec change
    starts the new replicas before the old ones stop)."""
    if not org.is_suspended:
        return
    raised = [field for field in GROWTH_FIELDS if values[field] > before[field]]
    if raised:
        raise OrgSuspendedError(
            org, f"{' and '.join(raised)} cannot be raised while it is suspended. {CUTS_ALLOWED}"
        )
    respec = [field for field in SPEC_FIELDS if values[field] != before[field]]
    if respec and not current.paused and current.desired_replicas > 0:
        raise OrgSuspendedError(
            org,
            f"{' and '.join(respec)} cannot be changed on a running deployment while it is "
            "suspended: new replicas would start beside the old ones. Pause it first. "
            + CUTS_ALLOWED,
        )


def _clear_failures(deployment: Deployment) -> None:
    """Forget failed replicas so the orchestrator tries again (after an edit, scale or resume)."""
    deployment.replicas.filter(state=ReplicaState.FAILED).update(
        state=ReplicaState.STOPPED, stopped_at=timezone.now()
    )


@transaction.atomic
def deployment_create(
    *,
    org: Organisation,
    actor: User | None,
    actor_key: ApiKey | None = None,
    name: str,
    source: str,
    model: str,
    served_model_name: str = "",
    revision: str = "",
    runner: str = "",
    engine_args: dict[str, Any] | None = None,
    gpus_per_replica: int = 1,
    min_replicas: int = 1,
    max_replicas: int = 1,
    target_concurrency: int = 8,
    scale_down_delay_s: int = 300,
) -> Deployment:
    """Create a deployment; the orchestrator starts ``min_replicas`` replicas for it."""
    org = _lock_org(org)
    if org.is_suspended:
        raise OrgSuspendedError(
            org, f"No deployment can be created while it is suspended. {CUTS_ALLOWED}"
        )
    values = _validated(
        {
            "name": name,
            "served_model_name": served_model_name,
            "source": source,
            "model": model,
            "revision": revision,
            "runner": runner,
            "engine_args": engine_args or {},
            "gpus_per_replica": gpus_per_replica,
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_concurrency": target_concurrency,
            "scale_down_delay_s": scale_down_delay_s,
        },
        runner_given=True,
    )
    _check_unique(org=org, values=values, exclude=None)
    _check_quota(org=org, values=values, exclude=None)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                org=org,
                created_by=actor if actor is not None and actor.is_authenticated else None,
                desired_replicas=values["min_replicas"],
                **values,
            )
    except IntegrityError:
        raise ValidationError({"name": "A deployment with this name exists."}) from None
    audit_record(
        org=org,
        action="deployment.created",
        actor=actor,
        actor_key=actor_key,
        target=deployment,
        data={"model": deployment.model, "served_model_name": deployment.served_model_name},
    )
    snapshot_bump(keys=False)
    return deployment


def _live(deployment: Deployment) -> Deployment:
    """The row, locked; deleting deployments cannot be changed."""
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if locked.deleted_at is not None:
        raise ValidationError("This deployment is being deleted.")
    return locked


@transaction.atomic
def deployment_update(
    *,
    deployment: Deployment,
    actor: User | None,
    actor_key: ApiKey | None = None,
    **changes: Any,
) -> Deployment:
    """Change settings. Changing the model, engine arguments or GPUs replaces the replicas."""
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ValidationError({field: "This field cannot be changed." for field in unknown})
    org = _lock_org(deployment.org)
    current = _live(deployment)
    before = {field: getattr(current, field) for field in EDITABLE}
    values = _validated({**before, **changes}, runner_given="runner" in changes)
    _check_suspended_growth(org=org, current=current, before=before, values=values)
    _check_unique(org=org, values=values, exclude=current)
    _check_quota(org=org, values=values, exclude=current)
    changed = [field for field in EDITABLE if values[field] != before[field]]
    if not changed:
        return current
    if "name" in changed:
        # Routes name their deployments: renaming one under them would leave them sending to
        # nothing (and refusing every later edit until fixed).
        users = routes_sending_to(org, f"deployment:{before['name']}")
        if users:
            raise ValidationError(
                {
                    "name": f"Route(s) {', '.join(users)} send requests to “{before['name']}”; "
                    "point them elsewhere before renaming it."
                }
            )
    for field in changed:
        setattr(current, field, values[field])
    if any(field in SPEC_FIELDS for field in changed):
        current.spec_version += 1
    current.desired_replicas = min(
        max(current.desired_replicas, current.min_replicas), current.max_replicas
    )
    current.updated_at = timezone.now()
    current.save()
    if "runner" in changed:
        routes_check_deployment_runner(org, current.name)  # raising undoes the save
    if not org.is_suspended:  # retrying would start replicas
        _clear_failures(current)
    audit_record(
        org=org,
        action="deployment.updated",
        actor=actor,
        actor_key=actor_key,
        target=current,
        data={"changed": changed},
    )
    snapshot_bump(keys=False)
    return current


@transaction.atomic
def deployment_scale(
    *,
    deployment: Deployment,
    actor: User | None,
    actor_key: ApiKey | None = None,
    min_replicas: int,
    max_replicas: int,
) -> Deployment:
    """Set the replica range. Equal bounds pin the count; min 0 allows scaling to zero."""
    org = _lock_org(deployment.org)
    current = _live(deployment)
    before = {field: getattr(current, field) for field in EDITABLE}
    values = _validated({**before, "min_replicas": min_replicas, "max_replicas": max_replicas})
    _check_suspended_growth(org=org, current=current, before=before, values=values)
    _check_quota(org=org, values=values, exclude=current)
    current.min_replicas, current.max_replicas = values["min_replicas"], values["max_replicas"]
    current.desired_replicas = min(
        max(current.desired_replicas, current.min_replicas), current.max_replicas
    )
    current.low_load_since = None
    current.updated_at = timezone.now()
    current.save()
    if not org.is_suspended:  # retrying would start replicas
        _clear_failures(current)
    audit_record(
        org=org,
        action="deployment.scaled",
        actor=actor,
        actor_key=actor_key,
        target=current,
        data={"min_replicas": current.min_replicas, "max_replicas": current.max_replicas},
    )
    snapshot_bump(keys=False)
    return current


def _set_paused(
    *,
    deployment: Deployment,
    actor: User | None,
    actor_key: ApiKey | None,
    paused: bool,
    org: Organisation | None = None,
) -> Deployment:
    """``org``: the deployment's org, locked, when resuming."""
    current = _live(deployment)
    if current.paused == paused:
        # Resuming a deployment that is not paused retries it after a failure, as a change or
        # a scale does; otherwise there is nothing to do.
        failed = current.replicas.filter(state=ReplicaState.FAILED)
        if paused or not failed.exists():
            return current
    if not paused and org is not None and org.is_suspended:
        raise OrgSuspendedError(
            org, f"Deployments cannot be resumed or retried while it is suspended. {CUTS_ALLOWED}"
        )
    if current.paused and not paused:
        current.desired_replicas = current.min_replicas
        current.low_load_since = None
    current.paused = paused
    current.updated_at = timezone.now()
    if not paused:
        _clear_failures(current)
    current.save()
    audit_record(
        org=current.org,
        action="deployment.paused" if paused else "deployment.resumed",
        actor=actor,
        actor_key=actor_key,
        target=current,
    )
    snapshot_bump(keys=False)
    return current


@transaction.atomic
def deployment_pause(
    *, deployment: Deployment, actor: User | None, actor_key: ApiKey | None = None
) -> Deployment:
    """Stop all replicas but keep the settings; requests get no replica until resumed."""
    return _set_paused(deployment=deployment, actor=actor, actor_key=actor_key, paused=True)


@transaction.atomic
def deployment_resume(
    *, deployment: Deployment, actor: User | None, actor_key: ApiKey | None = None
) -> Deployment:
    """Run replicas again; a failed deployment, paused or not, is retried. Refused while the
    organisation is suspended."""
    org = _lock_org(deployment.org)  # the org before the deployment, as every change locks them
    return _set_paused(
        deployment=deployment, actor=actor, actor_key=actor_key, paused=False, org=org
    )


@transaction.atomic
def deployment_delete(
    *, deployment: Deployment, actor: User | None, actor_key: ApiKey | None = None
) -> Deployment:
    """Mark for deletion: the orchestrator drains and stops the replicas, then removes the row.

    The name and served model name are free again at once. Deleting one already being deleted
    changes and records nothing (a client retrying a delete gets the same answer).
    """
    current = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if current.deleted_at is not None:
        return current
    users = routes_sending_to(current.org, f"deployment:{current.name}")
    if users:
        raise ValidationError(
            f"Route(s) {', '.join(users)} send requests to “{current.name}”; point them "
            "elsewhere or delete them before deleting it."
        )
    current.deleted_at = timezone.now()
    current.updated_at = current.deleted_at
    current.save(update_fields=["deleted_at", "updated_at"])
    audit_record(
        org=current.org,
        action="deployment.deleted",
        actor=actor,
        actor_key=actor_key,
        target=current,
    )
    snapshot_bump(keys=False)
    return current


def deployment_signal_demand(*, deployment_id: Any) -> None:
    """A request is waiting for a deployment with no ready replica: ask for one.

    One conditional UPDATE, at most about once a second per deployment, so that a burst of
    requests to a sleeping model costs the database next to nothing. A suspended organisation's
    deployments are not woken (a request the gateway let in just before the suspension).
    """
    now = timezone.now()
    Deployment.objects.filter(
        Q(demand_at__isnull=True) | Q(demand_at__lt=now - DEMAND_MIN_INTERVAL),
        pk=deployment_id,
        deleted_at__isnull=True,
        paused=False,
        org__suspended_at__isnull=True,
    ).update(demand_at=now)


def org_deployment_usage(*, org: Organisation) -> dict[str, int]:
    """How much of the org's quotas its deployments may take at their maximum."""
    live = Deployment.objects.filter(org=org, deleted_at__isnull=True)
    replicas = live.aggregate(n=Sum("max_replicas"))["n"] or 0
    gpus = sum(r * g for r, g in live.values_list("max_replicas", "gpus_per_replica"))
    return {"replicas": replicas, "gpus": gpus}
