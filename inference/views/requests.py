"""The request log in the console: an org's requests one by one, and one request in full."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from django import forms
from django.http import Http404, HttpResponse, QueryDict
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone

from billing.models import UsageRecord
from billing.money import micros_to_decimal
from billing.selectors import usage_routes
from console.decorators import requires
from console.exports import csv_download
from console.forms import DayRangeForm, key_filter_field
from console.models import Organisation
from console.permissions import Action
from console.requests import OrgRequest
from inference.models import Deployment, Route
from inference.selectors.refusals import RefusalSummary, refusal_summary
from inference.selectors.requests import (
    EXPORT_LIMIT,
    Cursor,
    CursorError,
    RequestFilters,
    RequestPage,
    request_export,
    request_get,
    request_log,
)

# What each error code on a usage record means, for the request's page.
ERROR_HELP = {
    "upstream_error": "The model server failed (a 5xx, a dropped connection or a broken stream) "
    "and no other target or replica could take over.",
    "timeout": "The model server took longer than the gateway's timeout.",
    "overloaded": "Every target was overloaded (the engines answered 429 or 503).",
    "no_capacity": "No replica could take the request (none ready, all ejected or paused).",
    "cold_start": "The deployment was scaled to zero and no replica was ready in time.",
    "context_length_exceeded": "The prompt plus max_tokens did not fit any target's context "
    "length.",
    "client_disconnected": "The client went away before the answer ended; what was generated "
    "until then is metered.",
    "upstream_rejected": "The model server refused the request as invalid (its own 4xx, "
    "passed to the client unchanged).",
}
STATUS_CHOICES = [("", "All"), ("ok", "Succeeded"), ("error", "Failed (4xx/5xx)")]


class RequestFilterForm(DayRangeForm):
    request_id = forms.CharField(
        required=False,
        max_length=100,
        label="Request id",
        widget=forms.TextInput(attrs={"placeholder": "req-…", "size": 38}),
    )
    status = forms.ChoiceField(required=False, choices=STATUS_CHOICES)
    route = forms.CharField(
        required=False,
        max_length=200,
        label="Model asked for",
        widget=forms.TextInput(attrs={"list": "route-names", "placeholder": "All"}),
    )
    key = forms.ChoiceField(required=False, label="API key")
    deployment = forms.UUIDField(required=False, widget=forms.HiddenInput)
    field_order = ["request_id", "status", "route", "key", "start", "end", "deployment"]

    def __init__(self, *args: Any, org: Organisation, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["key"] = key_filter_field(org)
        # Suggestions for the model field: names with traffic, routes and deployments.
        names = set(usage_routes(org))
        names.update(Route.objects.filter(org=org).values_list("name", flat=True))
        names.update(Deployment.objects.filter(org=org).values_list("served_model_name", flat=True))
        self.route_names = sorted(n for n in names if n)

    def filters(self) -> RequestFilters:
        if not self.is_bound or not self.is_valid():
            return RequestFilters()
        data = self.cleaned_data
        return RequestFilters(
            status=data.get("status") or "",
            route=(data.get("route") or "").strip(),
            key_id=uuid.UUID(data["key"]) if data.get("key") else None,
            request_id=(data.get("request_id") or "").strip(),
            deployment_id=data.get("deployment"),
            start=data.get("start"),
            end=data.get("end"),
        )


def _without(params: QueryDict, name: str) -> str:
    rest = params.copy()
    rest.pop(name, None)
    return rest.urlencode()


CSV_COLUMNS = [
    "served_at",
    "request_id",
    "route",
    "target",
    "model",
    "deployment_id",
    "replica_id",
    "api_key_name",
    "api_key_prefix",
    "status_code",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "latency_ms",
    "ttft_ms",
    "cost_micros",
    "cost_usd",
    "router_score",
    "router_choice",
    "baseline_cost_micros",
]


def _csv_rows(records: Iterable[UsageRecord]) -> Iterator[list[object]]:
    for r in records:
        key = r.api_key
        yield [
            r.served_at.isoformat(),
            r.request_id,
            r.route,
            r.target,
            r.model,
            r.deployment_id or "",
            r.replica_id or "",
            key.name if key else "",
            key.prefix if key else "",
            r.status_code,
            r.error_code,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_tokens,
            r.latency_ms,
            "" if r.ttft_ms is None else r.ttft_ms,
            r.cost_micros,
            micros_to_decimal(r.cost_micros),
            "" if r.router_score is None else r.router_score,
            r.router_choice,
            "" if r.baseline_cost_micros is None else r.baseline_cost_micros,
        ]


@requires(Action.USAGE_VIEW)
def request_list(request: OrgRequest, org_slug: str) -> HttpResponseBase:
    """Newest first, 50 a page; ``?before=`` (the link under the table) shows older ones."""
    org = request.org
    params = request.GET.copy()
    before_value = params.pop("before", [""])[-1]
    export = params.pop("format", [""])[-1] == "csv"
    form = RequestFilterForm(params or None, org=org)
    filters = form.filters()
    # Filters that do not hold show why and nothing else: neither every request nor a file of them.
    invalid = form.is_bound and not form.is_valid()
    if export and not invalid:
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        return csv_download(
            f"requests-{org.slug}-{stamp}.csv",
            CSV_COLUMNS,
            _csv_rows(request_export(org=org, filters=filters)),
        )
    before = None
    cursor_error = ""
    if before_value:
        try:
            before = Cursor.decode(before_value)
        except CursorError:
            cursor_error = "That page link is not valid any more: showing the newest requests."
    page = (
        RequestPage([], None, {})
        if invalid
        else request_log(org=org, filters=filters, before=before)
    )
    deployment = None
    if filters.deployment_id is not None:
        deployment = Deployment.objects.filter(org=org, id=filters.deployment_id).first()
    older = None
    if page.next is not None:
        query = params.copy()
        query["before"] = page.next.encode()
        older = query.urlencode()
    context = {
        "form": form,
        "filters": filters,
        "page": page,
        "rows": page.records,
        "older_query": older,
        "filter_query": params.urlencode(),
        "export_limit": EXPORT_LIMIT,
        "paged": before is not None,
        "cursor_error": cursor_error,
        "deployment": deployment,
        "without_deployment": _without(params, "deployment"),
        "refusals": None if invalid else _refusals(org, filters),
        "invalid": invalid,
    }
    template = "inference/requests.html"
    return render(
        request,
        template + "#requests-panel" if request.htmx else template,
        context,
        status=400 if invalid else 200,
    )


def _refusals(org: Organisation, filters: RequestFilters) -> RefusalSummary | None:
    """Refused requests for the same key and days, unless the filters ask for something a refusal
    does not have (a success, a model, a deployment, one request)."""
    if filters.status == "ok" or filters.route or filters.deployment_id or filters.request_id:
        return None
    return refusal_summary(org=org, start=filters.start, end=filters.end, key_id=filters.key_id)


@requires(Action.USAGE_VIEW)
def request_detail(request: OrgRequest, org_slug: str, request_id: str) -> HttpResponse:
    org = request.org
    record = request_get(org=org, request_id=request_id)
    if record is None:
        raise Http404("No request with this id in this organisation.")
    deployment = None
    if record.deployment_id is not None:
        deployment = Deployment.objects.filter(org=org, id=record.deployment_id).first()
    route = Route.objects.filter(org=org, name=record.route).first() if record.route else None
    saved = None
    if record.baseline_cost_micros is not None:
        saved = record.baseline_cost_micros - record.cost_micros
    context = {
        "record": record,
        "deployment": deployment,
        "route_obj": route,
        "saved_micros": saved,
        "error_help": ERROR_HELP.get(record.error_code, ""),
    }
    return render(request, "inference/request_detail.html", context)
