"""The auto-route parts of a route's page: calibration, savings, request log, outcome upload."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from console.decorators import requires
from console.permissions import Action
from console.requests import OrgRequest
from inference.models import Route, RouteScorer
from inference.selectors.router import route_requests, route_savings_daily
from inference.services.router import (
    MAX_UPLOAD_BYTES,
    auto_order_problem,
    route_scorer_remove,
    route_scorer_upload,
)


class OutcomeUploadForm(forms.Form):
    file = forms.FileField(
        help_text="CSV: prompt, then True/False for the cheaper and the stronger model."
    )


def router_context(request: OrgRequest, route: Route) -> dict[str, Any]:
    """Extra context of an auto route's page (empty for other policies)."""
    if route.policy != "auto":
        return {}
    days = route_savings_daily(org=request.org, route_name=route.name, days=30)
    totals = {
        "cost": sum(d.cost_micros for d in days),
        "baseline": sum(d.baseline_cost_micros for d in days),
    }
    totals["saved"] = totals["baseline"] - totals["cost"]
    calibration = route.config.get("calibration") if isinstance(route.config, dict) else None
    return {
        "auto": True,
        "calibration": calibration,
        "thresholds": route.config.get("thresholds") or [route.config.get("threshold")],
        "savings_days": days,
        "savings_totals": totals,
        "request_log": route_requests(org=request.org, route_name=route.name, limit=50),
        "route_scorer": RouteScorer.objects.filter(route=route).first(),
        # Prices can change after the route was saved.
        "order_problem": auto_order_problem(request.org, route.config),
        "upload_form": OutcomeUploadForm(),
    }


@requires(Action.ROUTES_MANAGE)
@require_POST
def route_scorer_upload_view(request: OrgRequest, org_slug: str, route_id: str) -> HttpResponse:
    route = get_object_or_404(Route.objects.filter(org=request.org), id=route_id)
    form = OutcomeUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        # Django's own words: no file chosen, or "The submitted file is empty."
        problems = " ".join(str(e) for e in form.errors.get("file", [])) or "Choose a file."
        messages.error(request, f"Choose an outcome file (CSV) to upload: {problems}")
        return redirect("route_edit", org_slug=org_slug, route_id=route.id)
    upload = form.cleaned_data["file"]
    if upload.size > MAX_UPLOAD_BYTES:
        messages.error(request, f"The file is larger than {MAX_UPLOAD_BYTES} bytes.")
        return redirect("route_edit", org_slug=org_slug, route_id=route.id)
    try:
        scorer = route_scorer_upload(
            route=route, actor=request.user, file_name=upload.name, data=upload.read()
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(
            request, f"{scorer.rows} rows accepted; the route's scorer is being fitted."
        )
    return redirect("route_edit", org_slug=org_slug, route_id=route.id)


@requires(Action.ROUTES_MANAGE)
@require_POST
def route_scorer_remove_view(request: OrgRequest, org_slug: str, route_id: str) -> HttpResponse:
    route = get_object_or_404(Route.objects.filter(org=request.org), id=route_id)
    if route_scorer_remove(route=route, actor=request.user):
        messages.success(request, "The route is scored by the platform's scorer again.")
    else:
        messages.info(request, "The route already uses the platform's scorer.")
    return redirect("route_edit", org_slug=org_slug, route_id=route.id)
