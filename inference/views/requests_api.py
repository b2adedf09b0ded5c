"""REST endpoints of the request log.

``GET /api/orgs/<org>/requests/`` lists the org's requests newest first (filters, a cursor for
older pages); ``GET /api/orgs/<org>/requests/<request_id>/`` shows one, by the ``x-request-id``
the gateway answered with. Money is integer micro-dollars.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.models import UsageRecord
from console.api.access import OrgAPIView
from console.api.serializers import DayRangeSerializer, org_key_id
from console.permissions import Action
from inference.selectors.refusals import refusal_summary
from inference.selectors.requests import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    CursorError,
    RequestFilters,
    deployment_names,
    request_get,
    request_log,
)


class RequestLogQuery(DayRangeSerializer):
    status = serializers.ChoiceField(
        choices=["ok", "error"],
        required=False,
        help_text="ok: status below 400; error: 400 and above.",
    )
    route = serializers.CharField(required=False, max_length=200, help_text="Model name asked for.")
    model = serializers.CharField(required=False, max_length=200, help_text="Served model.")
    key = serializers.UUIDField(required=False, help_text="An API key's id.")
    request_id = serializers.CharField(required=False, max_length=100)
    deployment = serializers.UUIDField(
        required=False, help_text="A deployment's id: the requests it served."
    )
    before = serializers.CharField(
        required=False, max_length=100, help_text="The `next` value of the previous page."
    )
    limit = serializers.IntegerField(
        min_value=1,
        default=DEFAULT_LIMIT,
        help_text=f"At most {MAX_LIMIT}: a larger limit is served as {MAX_LIMIT}.",
    )

    def validate_key(self, value: uuid.UUID) -> uuid.UUID:
        return org_key_id(self, value)

    def validate_limit(self, value: int) -> int:
        return min(value, MAX_LIMIT)

    def validate_before(self, value: str) -> Cursor:
        try:
            return Cursor.decode(value)
        except CursorError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class KeyRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()


class RequestRecordSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    served_at = serializers.DateTimeField()
    route = serializers.CharField(help_text="The model name the request asked for.")
    target = serializers.CharField(help_text="What served it: deployment:<name>, external:<name>.")
    model = serializers.CharField(help_text="The served model it was rated as.")
    deployment_id = serializers.UUIDField(allow_null=True)
    deployment = serializers.CharField(allow_null=True, help_text="Null once deleted.")
    replica_id = serializers.UUIDField(allow_null=True)
    api_key = KeyRefSerializer(allow_null=True, help_text="Null for the console's try box.")
    status_code = serializers.IntegerField()
    error_code = serializers.CharField(
        help_text="Why it failed, as the error's `code` (e.g. upstream_error, timeout, "
        "overloaded, context_length_exceeded, client_disconnected); empty on success."
    )
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    latency_ms = serializers.IntegerField()
    ttft_ms = serializers.IntegerField(allow_null=True, help_text="Streamed requests only.")
    cost_micros = serializers.IntegerField()
    router_score = serializers.FloatField(allow_null=True, help_text="Auto routes only.")
    router_choice = serializers.CharField()
    baseline_cost_micros = serializers.IntegerField(
        allow_null=True, help_text="Auto routes: the cost at the strongest target."
    )


class RequestPageSerializer(serializers.Serializer):
    requests = RequestRecordSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="Pass as `before` for older requests.")


def record_dict(record: UsageRecord, names: dict[uuid.UUID, str]) -> dict[str, Any]:
    key = record.api_key
    return {
        "request_id": record.request_id,
        "served_at": record.served_at,
        "route": record.route,
        "target": record.target,
        "model": record.model,
        "deployment_id": record.deployment_id,
        "deployment": names.get(record.deployment_id) if record.deployment_id else None,
        "replica_id": record.replica_id,
        "api_key": (
            None if key is None else {"id": key.id, "name": key.name, "prefix": key.prefix}
        ),
        "status_code": record.status_code,
        "error_code": record.error_code,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "cost_micros": record.cost_micros,
        "router_score": record.router_score,
        "router_choice": record.router_choice,
        "baseline_cost_micros": record.baseline_cost_micros,
    }


class RequestListView(OrgAPIView):
    """The org's requests, newest first. Usage is written in batches, so a request shows up a
    few seconds after it finished. Prompts and answers are never stored."""

    actions = {"GET": Action.USAGE_VIEW}

    @extend_schema(
        parameters=[RequestLogQuery],
        responses=RequestPageSerializer,
        operation_id="orgs_requests_list",
        summary="The request log: requests one by one, newest first",
    )
    def get(self, request: Request, org_slug: str) -> Response:
        org = self.access.org
        query = RequestLogQuery(data=request.query_params, context={"org": org})
        query.is_valid(raise_exception=True)
        data = query.validated_data
        filters = RequestFilters(
            status=data.get("status", ""),
            route=data.get("route", ""),
            model=data.get("model", ""),
            key_id=data.get("key"),
            request_id=data.get("request_id", ""),
            deployment_id=data.get("deployment"),
            start=data.get("start"),
            end=data.get("end"),
        )
        page = request_log(org=org, filters=filters, before=data.get("before"), limit=data["limit"])
        body = {
            "requests": [record_dict(r, page.deployment_names) for r in page.records],
            "next": page.next.encode() if page.next else None,
        }
        return Response(RequestPageSerializer(body).data)


class RequestDetailView(OrgAPIView):
    actions = {"GET": Action.USAGE_VIEW}

    @extend_schema(
        responses=RequestRecordSerializer,
        summary="One request by its x-request-id: what served it, tokens, cost, timing",
    )
    def get(self, request: Request, org_slug: str, request_id: str) -> Response:
        org = self.access.org
        record = request_get(org=org, request_id=request_id)
        if record is None:
            raise Http404("No request with this id in this organisation.")
        names = deployment_names(org, [record])
        return Response(RequestRecordSerializer(record_dict(record, names)).data)


class RefusalQuery(DayRangeSerializer):
    key = serializers.UUIDField(required=False, help_text="An API key's id.")

    def validate_key(self, value: uuid.UUID) -> uuid.UUID:
        return org_key_id(self, value)


class RefusalGroupSerializer(serializers.Serializer):
    api_key = KeyRefSerializer()
    status_code = serializers.IntegerField()
    error_code = serializers.CharField(
        help_text="The refusal's `code` (e.g. rate_limit_exceeded, budget_exhausted, "
        "revoked_api_key, invalid_body, model_not_found)."
    )
    count = serializers.IntegerField()
    first_minute = serializers.DateTimeField()
    last_minute = serializers.DateTimeField()


class RefusalSummarySerializer(serializers.Serializer):
    since = serializers.DateTimeField(allow_null=True)
    until = serializers.DateTimeField()
    total = serializers.IntegerField(
        help_text="Every refusal in the range, those of groups not listed included."
    )
    refusals = RefusalGroupSerializer(
        many=True, help_text="The 200 largest groups by key, status and code, most first."
    )


class RefusalListView(OrgAPIView):
    """Requests refused before they reached a model (and so not in the request log), counted by
    key, status and code: over ``start``..``end`` (UTC days), or the last 24 hours. The gateway
    writes its counts every few seconds; requests without a valid key are not counted here."""

    actions = {"GET": Action.USAGE_VIEW}

    @extend_schema(
        parameters=[RefusalQuery],
        responses=RefusalSummarySerializer,
        summary="Refused requests, by key and reason",
    )
    def get(self, request: Request, org_slug: str) -> Response:
        org = self.access.org
        query = RefusalQuery(data=request.query_params, context={"org": org})
        query.is_valid(raise_exception=True)
        data = query.validated_data
        summary = refusal_summary(
            org=org, start=data.get("start"), end=data.get("end"), key_id=data.get("key")
        )
        body = {
            "since": summary.since,
            "until": summary.until,
            "total": summary.total,
            "refusals": [
                {
                    "api_key": {
                        "id": g.api_key.id,
                        "name": g.api_key.name,
                        "prefix": g.api_key.prefix,
                    },
                    "status_code": g.status_code,
                    "error_code": g.error_code,
                    "count": g.count,
                    "first_minute": g.first_minute,
                    "last_minute": g.last_minute,
                }
                for g in summary.groups
            ],
        }
        return Response(RefusalSummarySerializer(body).data)
