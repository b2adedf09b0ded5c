from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Min
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from billing.selectors import (
    forecast_micros,
    month_start,
    month_to_date_spend,
    spend_limit_details,
    usage_totals_since,
)
from console.decorators import member_can, member_check, requires
from console.exports import csv_download
from console.forms import DayRangeForm, OrgCloseForm, OrgRenameForm, apply_service_error
from console.limits import org_rate_limits
from console.models import AuditEvent, Organisation
from console.permissions import Action, role_can
from console.requests import OrgRequest
from console.services.audit import AUDIT_EXPORT_LIMIT, audit_events
from console.services.closing import org_close
from console.services.mail import mail_unsent
from console.services.orgs import org_update
from inference.models import Deployment, ReplicaState, Runner
from inference.selectors.deployments import deployments_for_org
from inference.selectors.refusals import last_day_start, refusals_since


@requires(Action.ORG_VIEW)
def overview(request: OrgRequest, org_slug: str) -> HttpResponse:
    """The dashboard: spend, the last day's traffic and the deployments, each shown to the
    roles that may see them, and a quick start that uses one of the org's model names."""
    org = request.org
    role = request.membership.role
    # The same checks as the pages these sections link to.
    can_view_usage = role_can(role, Action.USAGE_VIEW)
    can_view_billing = role_can(role, Action.BILLING_VIEW)
    can_view_deployments = role_can(role, Action.DEPLOYMENTS_VIEW)
    can_view_routes = role_can(role, Action.ROUTES_VIEW)
    context: dict[str, object] = {
        "member_count": org.memberships.count(),
        "active_key_count": org.api_keys.filter(revoked_at=None).count(),
        "recent_events": org.audit_events.select_related("actor", "actor_key")[:5],
        "api_base_url": settings.SITE_URL + "/v1",
        "can_view_usage": can_view_usage,
        "can_view_billing": can_view_billing,
        "can_view_deployments": can_view_deployments,
        "can_view_routes": can_view_routes,
        "can_deploy": member_can(request, Action.DEPLOYMENTS_MANAGE),
    }
    if can_view_usage:
        context.update(_spend_context(org, with_billing=can_view_billing))
    deployments: list[Deployment] = []
    if can_view_deployments:
        deployments = list(deployments_for_org(org=org).filter(deleted_at=None))
        # (deployment, ready replicas); the selector prefetches the live replicas.
        context["deployments"] = [
            (d, sum(r.state == ReplicaState.READY for r in d.live_replicas))  # type: ignore[attr-defined]
            for d in deployments
        ]
    first_route = None
    if can_view_routes:
        routes = org.routes.aggregate(count=Count("id"), first=Min("name"))
        context["route_count"], first_route = routes["count"], routes["first"]
    context["example_model"] = _example_model(first_route, deployments)
    return render(request, "console/overview.html", context)


def _spend_context(org: Organisation, *, with_billing: bool) -> dict[str, object]:
    now = timezone.now()
    mtd = month_to_date_spend([org.pk], now=now)[org.pk]
    # 24 whole hours and the current one so far: the rollups are hourly.
    traffic_since = last_day_start(now)
    context: dict[str, object] = {
        "mtd": mtd,
        "period_start": month_start(now),
        "traffic_since": traffic_since,
        "traffic": usage_totals_since(org=org, since=traffic_since),
        "refused": refusals_since(org=org, since=traffic_since),
    }
    if with_billing:
        limit = spend_limit_details([org.pk])[org.pk]
        context["limit"] = limit
        context["forecast"] = forecast_micros(org=org, now=now, mtd=mtd)
        if limit.cap_micros:
            context["limit_percent"] = mtd * 100 // limit.cap_micros
    return context


def _example_model(first_route: str | None, deployments: list[Deployment]) -> str:
    """A name the quick start's chat request can use: a route (the names clients are meant to
    call), else a chat deployment's served name; embedding deployments cannot answer a chat."""
    if first_route:
        return first_route
    chat = [d.served_model_name for d in deployments if d.runner == Runner.GENERATE]
    return chat[0] if chat else "your-model"


@requires(Action.ORG_VIEW)
@require_http_methods(["GET", "POST"])
def org_settings(request: OrgRequest, org_slug: str) -> HttpResponse:
    org = request.org
    form = OrgRenameForm(request.POST or None, initial={"name": org.name})
    if request.method == "POST":
        member_check(request, Action.ORG_UPDATE)
        if form.is_valid():
            try:
                org_update(org=org, actor=request.user, name=form.cleaned_data["name"])
            except ValidationError as error:
                apply_service_error(form, error)
            else:
                messages.success(request, "Saved.")
                return redirect("org_settings", org_slug=org.slug)
    # The gateway's limits for the org, set by platform staff: every member's programs live by
    # them, so every member sees them (as over the REST API).
    rpm_limit, tpm_limit = org_rate_limits(org)
    context: dict[str, object] = {
        "form": form,
        "can_rename": member_can(request, Action.ORG_UPDATE),
        "can_close": member_can(request, Action.ORG_CLOSE),
        "close_form": OrgCloseForm(request.user),
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
    }
    return render(request, "console/settings.html", context)


@requires(Action.ORG_CLOSE)
@require_http_methods(["GET", "POST"])
def org_close_view(request: OrgRequest, org_slug: str) -> HttpResponse:
    """Close the organisation for good (owners only, with the slug and their password)."""
    org = request.org
    form = OrgCloseForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with mail_unsent() as unsent:
                closed = org_close(
                    org=org, actor=request.user, confirm=form.cleaned_data["confirm"]
                )
        except ValidationError as error:
            apply_service_error(form, error)
        else:
            messages.success(
                request,
                f"Closed {org.name}: {closed.keys_revoked} API key(s) revoked, "
                f"{closed.deployments_deleted} deployment(s) stopping, "
                f"{closed.members_removed} member(s) removed."
                + (
                    " The subscription ends with this billing period; its invoice covers the "
                    "usage up to now."
                    if closed.subscription_ending
                    else ""
                ),
            )
            if unsent:
                messages.warning(request, "We could not email its members that it was closed.")
            return redirect("home")
    return render(request, "console/org_close.html", {"close_form": form}, status=200)


class AuditFilterForm(DayRangeForm):
    action = forms.CharField(
        required=False,
        max_length=64,
        label="Action",
        widget=forms.TextInput(attrs={"placeholder": "key., member."}),
    )
    actor = forms.CharField(
        required=False,
        max_length=254,
        label="Who",
        widget=forms.TextInput(attrs={"placeholder": "email, sk-… or system"}),
    )
    field_order = ["action", "actor", "start", "end"]


AUDIT_CSV_COLUMNS = [
    "created_at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "target",
    "data",
    "ip_address",
]


def _audit_csv_rows(events: Iterable[AuditEvent]) -> Iterator[list[object]]:
    for e in events:
        yield [
            e.created_at.isoformat(),
            e.actor_label,
            e.action,
            e.target_type,
            e.target_id,
            e.target_repr,
            json.dumps(e.data, sort_keys=True),
            e.ip_address or "",
        ]


@requires(Action.AUDIT_VIEW)
def audit_log(request: OrgRequest, org_slug: str) -> HttpResponseBase:
    """Newest first, 50 a page, filtered by action, who and UTC days; ``?format=csv`` downloads
    the matching events (the newest 100,000)."""
    org = request.org
    params = request.GET.copy()
    export = params.pop("format", [""])[-1] == "csv"
    page_number = params.pop("page", [""])[-1]
    form = AuditFilterForm(params or None)
    # Filters that do not hold show why and nothing else: neither every event nor a file of them.
    invalid = form.is_bound and not form.is_valid()
    filters = {} if invalid else form.cleaned_data if form.is_bound else {}
    events = (
        AuditEvent.objects.none()
        if invalid
        else audit_events(
            org=org,
            action=(filters.get("action") or "").strip(),
            actor=filters.get("actor") or "",
            start=filters.get("start"),
            end=filters.get("end"),
        )
    )
    if export and not invalid:
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        rows = events[:AUDIT_EXPORT_LIMIT].iterator(chunk_size=2000)
        return csv_download(
            f"audit-{org.slug}-{stamp}.csv", AUDIT_CSV_COLUMNS, _audit_csv_rows(rows)
        )
    page = Paginator(events, 50).get_page(page_number)
    context = {"page": page, "form": form, "query": params.urlencode()}
    return render(request, "console/audit.html", context, status=400 if form.errors else 200)
