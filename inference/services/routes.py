"""Writes to routes and external endpoints: create, update, delete.

Every change is validated in full before anything is written: the route's own shape
(``inference.routing.config``) and then the org's whole route graph with the change applied
(unknown targets, cycles). Changes are audited and announced to gateways with ``snapshot_bump``,
which reach every gateway process within a second or so.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from console.models import ApiKey, Organisation, User
from console.services.audit import audit_record
from console.snapshot import snapshot_bump
from inference.models import Deployment, ExternalEndpoint, Route, RoutePolicy, Runner
from inference.routing.config import (
    RouteConfigError,
    RouteSpec,
    route_spec_parse,
    routes_check_references,
)
from inference.routing.egress import egress_policy, http_url_problem, url_problem
from inference.routing.secrets import secret_encrypt
from inference.services.router import auto_config_prepare, auto_order_problem

ROUTE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
ENDPOINT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _lock_org(org: Organisation) -> None:
    # Serialises route changes within an org so that two edits cannot form a cycle together.
    Organisation.objects.select_for_update().filter(pk=org.pk).first()


def _spec_of(route: Route) -> RouteSpec:
    return route_spec_parse(
        name=route.name,
        policy=route.policy,
        config=route.config,
        cold_start_fallback=route.cold_start_fallback,
    )


def _deployment_names(org: Organisation) -> tuple[set[str], set[str]]:
    live = Deployment.objects.filter(org=org, deleted_at=None)
    return (
        set(live.values_list("name", flat=True)),
        set(live.values_list("served_model_name", flat=True)),
    )


def _check_graph(org: Organisation, candidate: Route, *, removing: Route | None = None) -> None:
    """Validate the org's routes as they would be with ``candidate`` saved (or ``removing``
    deleted). Raises ValidationError naming the field and the problem."""
    try:
        spec = _spec_of(candidate)
    except RouteConfigError as error:
        raise ValidationError({"config": error.messages}) from None
    specs: dict[str, RouteSpec] = {}
    for other in Route.objects.filter(org=org).exclude(pk=candidate.pk):
        if removing is not None and other.pk == removing.pk:
            continue
        try:
            specs[other.name] = _spec_of(other)
        except RouteConfigError:
            continue  # an older route that no longer validates cannot block this change
    specs[spec.name] = spec
    deployments, _ = _deployment_names(org)
    externals = set(ExternalEndpoint.objects.filter(org=org).values_list("name", flat=True))
    try:
        routes_check_references(specs, deployments=deployments, externals=externals)
    except RouteConfigError as error:
        raise ValidationError({"config": error.messages}) from None
    _check_one_kind_of_work(org, spec, specs)


def _check_one_kind_of_work(
    org: Organisation, spec: RouteSpec, specs: dict[str, RouteSpec]
) -> None:
    """A route's deployments, through any routes it sends to, must all generate text or all
    make embeddings: a request is one or the other, and the other kind cannot answer it."""
    reached: set[str] = set()
    stack, seen = [spec], {spec.name}
    while stack:  # the graph has no cycles (checked above); ``seen`` keeps shared parts single
        for ref in stack.pop().references():
            if ref.kind == "deployment":
                reached.add(ref.name)
            elif ref.kind == "route" and ref.name not in seen:
                seen.add(ref.name)
                stack.append(specs[ref.name])
    by_runner: dict[str, list[str]] = {}
    for name, runner in (
        Deployment.objects.filter(org=org, deleted_at=None, name__in=reached)
        .order_by("name")
        .values_list("name", "runner")
    ):
        by_runner.setdefault(runner, []).append(name)
    if len(by_runner) > 1:
        generate = ", ".join(by_runner.get(Runner.GENERATE, []))
        pooling = ", ".join(by_runner.get(Runner.POOLING, []))
        raise ValidationError(
            {
                "config": (
                    f"The route sends to text generation deployments ({generate}) and to "
                    f"embedding deployments ({pooling}); a route serves one kind of request."
                )
            }
        )


def _check_name(org: Organisation, name: str, exclude: Route | None) -> str:
    name = (name or "").strip()
    if not ROUTE_NAME_RE.match(name):
        raise ValidationError(
            {"name": "Use 1 to 128 letters, digits and . _ : / -, starting with a letter or digit."}
        )
    others = Route.objects.filter(org=org, name=name)
    if exclude is not None:
        others = others.exclude(pk=exclude.pk)
    if others.exists():
        raise ValidationError({"name": f"A route named {name!r} already exists."})
    _, served = _deployment_names(org)
    if name in served:
        raise ValidationError(
            {"name": f"A deployment already serves the model name {name!r}; choose another name."}
        )
    return name


def _check_policy(policy: str) -> str:
    if policy not in RoutePolicy.values:
        raise ValidationError(
            {"policy": f"Choose one of {', '.join(RoutePolicy.values)} (got {policy!r})."}
        )
    return policy


@transaction.atomic
def route_create(
    *,
    org: Organisation,
    actor: User | None,
    name: str,
    policy: str,
    config: Any,
    cold_start_fallback: str = "",
    description: str = "",
    actor_key: ApiKey | None = None,
) -> Route:
    _lock_org(org)
    route = Route(
        org=org,
        name=_check_name(org, name, None),
        policy=_check_policy(policy),
        config=config,
        cold_start_fallback=(cold_start_fallback or "").strip(),
        description=(description or "").strip()[:200],
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    if route.policy == "auto":  # thresholds from a strong share are calibrated on save
        route.config = auto_config_prepare(
            org=org, route_name=route.name, route_id=None, config=route.config
        )
    _check_graph(org, route)
    _check_auto_order(route)
    route.save()
    audit_record(
        org=org,
        action="route.created",
        actor=actor,
        actor_key=actor_key,
        target=route,
        data={"policy": route.policy, "config": route.config},
    )
    snapshot_bump(keys=False)
    return route


@transaction.atomic
def route_update(
    *,
    route: Route,
    actor: User | None,
    actor_key: ApiKey | None = None,
    **changes: Any,
) -> Route:
    """Change any of name, policy, config, cold_start_fallback, description."""
    allowed = {"name", "policy", "config", "cold_start_fallback", "description"}
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise ValidationError(f"Unknown field(s): {', '.join(unknown)}.")
    org = route.org
    _lock_org(org)
    route = Route.objects.get(pk=route.pk)
    before = {"name": route.name, "policy": route.policy, "config": route.config}
    old_name = route.name
    if "name" in changes:
        route.name = _check_name(org, changes["name"], route)
    if "policy" in changes:
        route.policy = _check_policy(changes["policy"])
    if "config" in changes:
        route.config = changes["config"]
    if "cold_start_fallback" in changes:
        route.cold_start_fallback = (changes["cold_start_fallback"] or "").strip()
    if "description" in changes:
        route.description = (changes["description"] or "").strip()[:200]
    if route.name != old_name:
        _check_not_referenced(route, f"route:{old_name}", "renamed")
    if route.policy == "auto":
        route.config = auto_config_prepare(
            org=org, route_name=route.name, route_id=route.id, config=route.config
        )
    _check_graph(org, route)
    if "config" in changes or "policy" in changes:
        _check_auto_order(route)
    route.updated_at = timezone.now()
    route.save()
    audit_record(
        org=org,
        action="route.updated",
        actor=actor,
        actor_key=actor_key,
        target=route,
        data={
            "before": before,
            "after": {"name": route.name, "policy": route.policy, "config": route.config},
        },
    )
    snapshot_bump(keys=False)
    return route


def _check_auto_order(route: Route) -> None:
    if route.policy == "auto":
        problem = auto_order_problem(route.org, route.config)
        if problem:
            raise ValidationError({"config": problem})


def routes_sending_to(org: Organisation, ref: str, *, exclude: Route | None = None) -> list[str]:
    """Names of the org's routes that can send to ``ref`` (``external:NAME``, ``route:NAME``...),
    their cold-start fallbacks included."""
    users = []
    for other in Route.objects.filter(org=org):
        if exclude is not None and other.pk == exclude.pk:
            continue
        try:
            refs = {str(r) for r in _spec_of(other).references()}
        except RouteConfigError:
            continue
        if ref in refs:
            users.append(other.name)
    return sorted(users)


def _route_specs(org: Organisation) -> dict[str, RouteSpec]:
    specs = {}
    for route in Route.objects.filter(org=org):
        try:
            specs[route.name] = _spec_of(route)
        except RouteConfigError:
            continue  # an older route that no longer validates sends nowhere
    return specs


def routes_reaching(org: Organisation, ref: str) -> list[str]:
    """Names of the org's routes that can send to ``ref``, directly or through other routes
    (cold-start fallbacks included)."""
    specs = _route_specs(org)
    refs = {name: {str(r) for r in spec.references()} for name, spec in specs.items()}
    reached: set[str] = set()
    frontier = {ref}
    while frontier:
        users = {name for name, sent in refs.items() if name not in reached and sent & frontier}
        reached |= users
        frontier = {f"route:{name}" for name in users}
    return sorted(reached)


def routes_check_deployment_runner(org: Organisation, deployment_name: str) -> None:
    """After a deployment's runner changed (inside the change's transaction): every route that
    reaches it must still serve one kind of request. Raises ValidationError on ``runner``."""
    specs = _route_specs(org)
    for name in routes_reaching(org, f"deployment:{deployment_name}"):
        try:
            _check_one_kind_of_work(org, specs[name], specs)
        except ValidationError as error:
            raise ValidationError(
                {"runner": f"Route {name!r} sends requests to this deployment: {error.messages[0]}"}
            ) from None


def _check_not_referenced(route_or_endpoint: Route | ExternalEndpoint, ref: str, verb: str) -> None:
    exclude = route_or_endpoint if isinstance(route_or_endpoint, Route) else None
    users = routes_sending_to(route_or_endpoint.org, ref, exclude=exclude)
    if users:
        raise ValidationError(
            f"{ref} cannot be {verb}: route(s) {', '.join(users)} send requests to it."
        )


@transaction.atomic
def route_delete(*, route: Route, actor: User | None, actor_key: ApiKey | None = None) -> None:
    _lock_org(route.org)
    _check_not_referenced(route, f"route:{route.name}", "deleted")
    audit_record(
        org=route.org,
        action="route.deleted",
        actor=actor,
        actor_key=actor_key,
        target=route,
        data={"policy": route.policy, "config": route.config},
    )
    route.delete()
    snapshot_bump(keys=False)


def _check_endpoint(
    errors: dict[str, str], *, base_url: str, model: str, api_key: str
) -> tuple[str, str]:
    """Check an endpoint's address, model and key into ``errors``; the cleaned URL and model."""
    base_url = (base_url or "").strip().rstrip("/")
    problem = http_url_problem(base_url, not_http="Enter an http(s) URL, up to and including /v1.")
    if problem is not None:
        errors["base_url"] = problem
    else:
        # Keep tenants from pointing the gateway at the platform's own network.
        problem = url_problem(base_url, egress_policy(tuple(settings.GATEWAY_EXTERNAL_ALLOW)))
        if problem is not None:
            errors["base_url"] = problem
    model = (model or "").strip()
    if not model or len(model) > 128:
        errors["model"] = "Enter the model name the endpoint expects (1 to 128 characters)."
    if api_key and (len(api_key) > 500 or any(c.isspace() for c in api_key)):
        errors["api_key"] = "An API key is at most 500 characters, without spaces."
    return base_url, model


@transaction.atomic
def external_endpoint_create(
    *,
    org: Organisation,
    actor: User | None,
    name: str,
    base_url: str,
    model: str,
    api_key: str = "",
    actor_key: ApiKey | None = None,
) -> ExternalEndpoint:
    """Register an OpenAI-compatible endpoint. Its API key is stored encrypted only."""
    errors: dict[str, str] = {}
    name = (name or "").strip()
    if not ENDPOINT_NAME_RE.match(name):
        errors["name"] = "Use 1 to 63 lowercase letters, digits and hyphens."
    elif ExternalEndpoint.objects.filter(org=org, name=name).exists():
        errors["name"] = f"An endpoint named {name!r} already exists."
    base_url, model = _check_endpoint(errors, base_url=base_url, model=model, api_key=api_key)
    if errors:
        raise ValidationError(errors)
    endpoint = ExternalEndpoint.objects.create(
        org=org,
        name=name,
        base_url=base_url,
        model=model,
        api_key_encrypted=secret_encrypt(api_key),
        api_key_hint=api_key[-4:] if len(api_key) >= 12 else "",
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    audit_record(
        org=org,
        action="endpoint.created",
        actor=actor,
        actor_key=actor_key,
        target=endpoint,
        data={"base_url": base_url, "model": model},
    )
    snapshot_bump(keys=False)
    return endpoint


@transaction.atomic
def external_endpoint_update(
    *,
    endpoint: ExternalEndpoint,
    actor: User | None,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    clear_api_key: bool = False,
    actor_key: ApiKey | None = None,
) -> ExternalEndpoint:
    """Change an endpoint's address, model or API key; ``None`` keeps a value as it is.

    The name stays: routes refer to the endpoint as ``external:NAME``. A new ``api_key`` replaces
    the stored one (rotation without touching the routes that use the endpoint);
    ``clear_api_key`` removes it. Routes that use the endpoint send to the new values from the
    next snapshot on.
    """
    _lock_org(endpoint.org)
    errors: dict[str, str] = {}
    new_key = api_key or ""
    if new_key and clear_api_key:
        errors["api_key"] = "Give a new API key or remove the stored one, not both."
    new_url, new_model = _check_endpoint(
        errors,
        base_url=endpoint.base_url if base_url is None else base_url,
        model=endpoint.model if model is None else model,
        api_key=new_key,
    )
    if errors:
        raise ValidationError(errors)
    changed: dict[str, Any] = {}
    if new_url != endpoint.base_url:
        changed["base_url"] = {"before": endpoint.base_url, "after": new_url}
        endpoint.base_url = new_url
    if new_model != endpoint.model:
        changed["model"] = {"before": endpoint.model, "after": new_model}
        endpoint.model = new_model
    if new_key or (clear_api_key and endpoint.api_key_encrypted):
        # The audit says that the key changed, never what it is.
        changed["api_key"] = "replaced" if new_key else "removed"
        endpoint.api_key_encrypted = secret_encrypt(new_key) if new_key else ""
        endpoint.api_key_hint = new_key[-4:] if len(new_key) >= 12 else ""
    if not changed:
        return endpoint
    endpoint.save(update_fields=["base_url", "model", "api_key_encrypted", "api_key_hint"])
    audit_record(
        org=endpoint.org,
        action="endpoint.updated",
        actor=actor,
        actor_key=actor_key,
        target=endpoint,
        data=changed,
    )
    snapshot_bump(keys=False)
    return endpoint


@transaction.atomic
def external_endpoint_delete(
    *, endpoint: ExternalEndpoint, actor: User | None, actor_key: ApiKey | None = None
) -> None:
    _lock_org(endpoint.org)
    _check_not_referenced(endpoint, f"external:{endpoint.name}", "deleted")
    audit_record(
        org=endpoint.org,
        action="endpoint.deleted",
        actor=actor,
        actor_key=actor_key,
        target=endpoint,
        data={"base_url": endpoint.base_url},
    )
    endpoint.delete()
    snapshot_bump(keys=False)
