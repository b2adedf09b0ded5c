"""Console pages for deployments: list, detail (live state, replicas, metrics, logs), forms."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.decorators import member_can, requires
from console.forms import apply_service_error
from console.permissions import Action
from console.requests import OrgRequest
from inference.models import Deployment
from inference.selectors.deployments import (
    deployments_for_org,
    replica_log_note,
    replica_log_tail,
    replicas_for_deployment,
)
from inference.services.deployments import (
    deployment_create,
    deployment_delete,
    deployment_pause,
    deployment_resume,
    deployment_scale,
    deployment_update,
    org_deployment_usage,
)
from inference.views.deployment_forms import DeploymentForm, ScaleForm

# States in which something is still changing: the page polls faster then.
SETTLING = {"pending", "starting", "degraded", "deleting"}


def _deployment(request: OrgRequest, deployment_id: str) -> Deployment:
    return get_object_or_404(Deployment.objects.filter(org=request.org), id=deployment_id)


def _can_manage(request: OrgRequest) -> bool:
    return member_can(request, Action.DEPLOYMENTS_MANAGE)


@requires(Action.DEPLOYMENTS_VIEW)
@require_GET
def deployment_list(request: OrgRequest, org_slug: str) -> HttpResponse:
    deployments = list(deployments_for_org(org=request.org))
    context = {
        "deployments": deployments,
        "can_manage": _can_manage(request),
        "usage": org_deployment_usage(org=request.org),
        "settling": any(d.state in SETTLING for d in deployments),
    }
    template = "inference/deployments.html"
    if request.htmx:
        template += "#deployment-table"
    return render(request, template, context)


def _detail_context(request: OrgRequest, deployment: Deployment) -> dict[str, Any]:
    replicas = replicas_for_deployment(deployment=deployment)
    chosen = request.GET.get("replica")
    log_replica = next((r for r in replicas if str(r.pk) == chosen), None) or (
        replicas[0] if replicas else None
    )
    return {
        "deployment": deployment,
        "replicas": replicas,
        "log_replica": log_replica,
        "log_lines": replica_log_tail(replica=log_replica, lines=60) if log_replica else [],
        "log_note": replica_log_note(replica=log_replica) if log_replica else "",
        "can_manage": _can_manage(request),
        "scale_form": ScaleForm(
            initial={
                "min_replicas": deployment.min_replicas,
                "max_replicas": deployment.max_replicas,
            }
        ),
        "settling": deployment.state in SETTLING,
    }


@requires(Action.DEPLOYMENTS_VIEW)
@require_GET
def deployment_detail(request: OrgRequest, org_slug: str, deployment_id: str) -> HttpResponse:
    deployment = _deployment(request, deployment_id)
    template = "inference/deployment_detail.html"
    if request.htmx:
        template += "#status"
    return render(request, template, _detail_context(request, deployment))


@requires(Action.DEPLOYMENTS_VIEW)
@require_GET
def deployment_logs(request: OrgRequest, org_slug: str, deployment_id: str) -> HttpResponse:
    deployment = _deployment(request, deployment_id)
    return render(
        request, "inference/deployment_detail.html#logs", _detail_context(request, deployment)
    )


@requires(Action.DEPLOYMENTS_MANAGE)
@require_http_methods(["GET", "POST"])
def deployment_create_view(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = DeploymentForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                deployment = deployment_create(
                    org=request.org, actor=request.user, **form.cleaned_data
                )
            except ValidationError as error:
                apply_service_error(form, error)
            else:
                messages.success(request, f"Deploying {deployment.name}.")
                return redirect("deployment_detail", org_slug=org_slug, deployment_id=deployment.pk)
        return render(request, "inference/deployment_form.html", {"form": form}, status=400)
    return render(request, "inference/deployment_form.html", {"form": form})


@requires(Action.DEPLOYMENTS_MANAGE)
@require_http_methods(["GET", "POST"])
def deployment_edit(request: OrgRequest, org_slug: str, deployment_id: str) -> HttpResponse:
    deployment = _deployment(request, deployment_id)
    form = DeploymentForm(request.POST or None, initial=DeploymentForm.initial_from(deployment))
    context = {"form": form, "deployment": deployment}
    if request.method == "POST":
        if form.is_valid():
            try:
                deployment_update(deployment=deployment, actor=request.user, **form.cleaned_data)
            except ValidationError as error:
                apply_service_error(form, error)
            else:
                messages.success(request, "Saved.")
                return redirect("deployment_detail", org_slug=org_slug, deployment_id=deployment.pk)
        return render(request, "inference/deployment_form.html", context, status=400)
    return render(request, "inference/deployment_form.html", context)


def _back(request: OrgRequest, deployment: Deployment) -> HttpResponse:
    if request.htmx:
        return render(
            request, "inference/deployment_detail.html#status", _detail_context(request, deployment)
        )
    return redirect("deployment_detail", org_slug=request.org.slug, deployment_id=deployment.pk)


@requires(Action.DEPLOYMENTS_MANAGE)
@require_POST
def deployment_scale_view(request: OrgRequest, org_slug: str, deployment_id: str) -> HttpResponse:
    deployment = _deployment(request, deployment_id)
    form = ScaleForm(request.POST)
    if form.is_valid():
        try:
            deployment = deployment_scale(
                deployment=deployment, actor=request.user, **form.cleaned_data
            )
        except ValidationError as error:
            apply_service_error(form, error)
    template = "inference/deployment_detail.html"
    if form.errors:
        context = _detail_context(request, deployment)
        context["scale_form"] = form  # what was typed, with its errors
        return render(
            request, template + "#controls" if request.htmx else template, context, status=400
        )
    if request.htmx:
        # The form with the saved bounds; the polled status refreshes at once on the event.
        response = render(request, template + "#controls", _detail_context(request, deployment))
        response["HX-Trigger"] = "deployment-changed"
        return response
    return _back(request, deployment)


def _simple_action(service: Any, done: str) -> Any:
    @requires(Action.DEPLOYMENTS_MANAGE)
    @require_POST
    def view(request: OrgRequest, org_slug: str, deployment_id: str) -> HttpResponse:
        deployment = _deployment(request, deployment_id)
        try:
            deployment = service(deployment=deployment, actor=request.user)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, done)
        return _back(request, deployment)

    return view


deployment_pause_view = _simple_action(deployment_pause, "Paused: replicas drain and stop.")
deployment_resume_view = _simple_action(deployment_resume, "Resumed: replicas start.")


@requires(Action.DEPLOYMENTS_MANAGE)
@require_POST
def deployment_delete_view(request: OrgRequest, org_slug: str, deployment_id: str) -> HttpResponse:
    deployment = _deployment(request, deployment_id)
    try:
        deployment_delete(deployment=deployment, actor=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Deleting {deployment.name}: its replicas drain and stop.")
    return redirect("deployment_list", org_slug=org_slug)
