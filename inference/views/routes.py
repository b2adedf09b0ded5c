"""The routes page: routes and external endpoints, their forms, and the "try it" box."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from console.decorators import member_can, member_check, requires
from console.forms import apply_service_error
from console.permissions import Action
from console.requests import OrgRequest
from inference.gateway.console_try import TryResult, route_try
from inference.models import Deployment, ExternalEndpoint, Route, Runner
from inference.services.routes import (
    external_endpoint_create,
    external_endpoint_delete,
    external_endpoint_update,
    route_create,
    route_delete,
    route_update,
    routes_sending_to,
)
from inference.views.route_forms import EndpointEditForm, EndpointForm, RouteForm, TryForm
from inference.views.router import router_context

PAGE = "inference/routes.html"


def _models(request: OrgRequest) -> tuple[list[str], list[str]]:
    """The org's model names (its routes and its deployments' served names), and those of them
    the try box can use: a chat completion, which embedding deployments cannot answer."""
    org = request.org
    routes = set(Route.objects.filter(org=org).values_list("name", flat=True))
    deployments = list(
        Deployment.objects.filter(org=org, deleted_at=None).values_list(
            "served_model_name", "runner"
        )
    )
    every = routes | {served for served, _ in deployments}
    chat = routes | {served for served, runner in deployments if runner == Runner.GENERATE}
    return sorted(every), sorted(chat)


def _context(request: OrgRequest, **extra: Any) -> dict[str, Any]:
    org = request.org
    models, chat_models = _models(request)
    context: dict[str, Any] = {
        "routes": Route.objects.filter(org=org),
        "endpoints": ExternalEndpoint.objects.filter(org=org),
        "deployments": Deployment.objects.filter(org=org, deleted_at=None).order_by("name"),
        "can_manage": member_can(request, Action.ROUTES_MANAGE),
        "route_form": RouteForm(initial={"policy": "single"}),
        "endpoint_form": EndpointForm(),
        "try_form": TryForm(models=chat_models),
        "models": models,
        "chat_models": chat_models,
    }
    context.update(extra)
    return context


@requires(Action.ROUTES_VIEW)
def route_list(request: OrgRequest, org_slug: str) -> HttpResponse:
    return render(request, PAGE, _context(request))


@requires(Action.ROUTES_MANAGE)
@require_POST
def route_new(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = RouteForm(request.POST)
    if form.is_valid():
        try:
            route = route_create(org=request.org, actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            messages.success(request, f"Route “{route.name}” created.")
            return redirect("route_list", org_slug=org_slug)
    return render(
        request, PAGE, _context(request, route_form=form, open_route_form=True), status=400
    )


@requires(Action.ROUTES_VIEW)
@require_http_methods(["GET", "POST"])
def route_edit(request: OrgRequest, org_slug: str, route_id: str) -> HttpResponse:
    route = get_object_or_404(Route.objects.filter(org=request.org), id=route_id)
    initial: dict[str, Any] = {
        "name": route.name,
        "description": route.description,
        "policy": route.policy,
        "config": json.dumps(route.config, indent=2),
        "cold_start_fallback": route.cold_start_fallback,
    }
    if route.policy == "auto" and isinstance(route.config, dict):
        # The trade-off the route was saved with, shown in its own field.
        initial["max_strong_percent"] = route.config.get("max_strong_percent")
        initial["threshold"] = route.config.get("threshold")
    form = RouteForm(request.POST or None, initial=initial)
    can_manage = member_can(request, Action.ROUTES_MANAGE)
    status = 200
    if request.method == "POST":
        member_check(request, Action.ROUTES_MANAGE)
        if form.is_valid():
            try:
                route = route_update(route=route, actor=request.user, **form.cleaned_data)
            except ValidationError as error:
                apply_service_error(form, error)
            else:
                messages.success(request, f"Route “{route.name}” saved.")
                return redirect("route_list", org_slug=org_slug)
        status = 400
    context = {"route": route, "form": form, "can_manage": can_manage}
    context.update(router_context(request, route))
    return render(request, "inference/route_edit.html", context, status=status)


@requires(Action.ROUTES_MANAGE)
@require_POST
def route_remove(request: OrgRequest, org_slug: str, route_id: str) -> HttpResponse:
    route = get_object_or_404(Route.objects.filter(org=request.org), id=route_id)
    try:
        route_delete(route=route, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Route “{route.name}” deleted.")
    return redirect("route_list", org_slug=org_slug)


@requires(Action.ROUTES_MANAGE)
@require_POST
def endpoint_new(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = EndpointForm(request.POST)
    if form.is_valid():
        try:
            endpoint = external_endpoint_create(
                org=request.org, actor=request.user, **form.cleaned_data
            )
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            messages.success(request, f"Endpoint “{endpoint.name}” added.")
            return redirect("route_list", org_slug=org_slug)
    context = _context(request, endpoint_form=form, open_endpoint_form=True)
    return render(request, PAGE, context, status=400)


@requires(Action.ROUTES_MANAGE)
@require_http_methods(["GET", "POST"])
def endpoint_edit(request: OrgRequest, org_slug: str, endpoint_id: str) -> HttpResponse:
    """Change an endpoint's address, model or key; its name, which routes use, stays."""
    endpoint = get_object_or_404(ExternalEndpoint.objects.filter(org=request.org), id=endpoint_id)
    initial = {"base_url": endpoint.base_url, "model": endpoint.model}
    form = EndpointEditForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                external_endpoint_update(
                    endpoint=endpoint,
                    actor=request.user,
                    base_url=data["base_url"],
                    model=data["model"],
                    api_key=data["api_key"] or None,
                    clear_api_key=data["clear_api_key"],
                )
            except ValidationError as error:
                apply_service_error(form, error)
            else:
                messages.success(request, f"Endpoint “{endpoint.name}” saved.")
                return redirect("route_list", org_slug=org_slug)
        status = 400
        endpoint.refresh_from_db()  # the page shows what is stored, not the refused values
    users = routes_sending_to(request.org, f"external:{endpoint.name}")
    context = {"endpoint": endpoint, "form": form, "routes_using": users}
    return render(request, "inference/endpoint_edit.html", context, status=status)


@requires(Action.ROUTES_MANAGE)
@require_POST
def endpoint_remove(request: OrgRequest, org_slug: str, endpoint_id: str) -> HttpResponse:
    endpoint = get_object_or_404(ExternalEndpoint.objects.filter(org=request.org), id=endpoint_id)
    try:
        external_endpoint_delete(endpoint=endpoint, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Endpoint “{endpoint.name}” deleted.")
    return redirect("route_list", org_slug=org_slug)


@requires(Action.ROUTES_MANAGE)
@require_POST
def route_try_view(request: OrgRequest, org_slug: str) -> HttpResponse:
    """Send a prompt through a route or deployment as the org; show who answered and the cost."""
    form = TryForm(request.POST, models=_models(request)[1])
    result: TryResult | None = None
    if form.is_valid():
        result = route_try(
            org=request.org,
            model=form.cleaned_data["model"],
            prompt=form.cleaned_data["prompt"],
            max_tokens=form.cleaned_data["max_tokens"],
        )
    context = _context(request, try_form=form, try_result=result)
    template = PAGE + "#try-box" if request.htmx else PAGE
    return render(request, template, context, status=200 if form.is_valid() else 400)
