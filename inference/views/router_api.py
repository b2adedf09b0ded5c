"""REST endpoints of auto routes: daily savings and the request log.

``GET /api/orgs/<org>/routes/<route_id>/savings/?days=30`` and
``GET /api/orgs/<org>/routes/<route_id>/requests/?limit=50`` (the request log's records, see
``requests_api``). Money is integer micro-dollars.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.access import OrgAPIView
from console.permissions import Action
from inference.models import Route
from inference.selectors.requests import deployment_names
from inference.selectors.router import route_requests, route_savings_daily
from inference.views.requests_api import RequestRecordSerializer, record_dict


class SavingsQuery(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=366, default=30)


ROUTE_REQUESTS_MAX = 500


class RequestsQuery(serializers.Serializer):
    limit = serializers.IntegerField(
        min_value=1,
        default=50,
        help_text=f"At most {ROUTE_REQUESTS_MAX}: a larger limit is served as "
        f"{ROUTE_REQUESTS_MAX}. Older requests are in the request log (`route=`).",
    )

    def validate_limit(self, value: int) -> int:
        return min(value, ROUTE_REQUESTS_MAX)


class SavingsDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    requests = serializers.IntegerField()
    routed_cheaper = serializers.IntegerField()
    cost_micros = serializers.IntegerField()
    baseline_cost_micros = serializers.IntegerField()
    saved_micros = serializers.IntegerField()


class SavingsTotalsSerializer(SavingsDaySerializer):
    day = None  # type: ignore[assignment]  # the same sums, over every day


class RouteSavingsSerializer(serializers.Serializer):
    route = serializers.CharField()
    days = SavingsDaySerializer(many=True, help_text="Newest first; days without traffic left out.")
    totals = SavingsTotalsSerializer(help_text="The days above together.")


class RouteRequestsSerializer(serializers.Serializer):
    route = serializers.CharField()
    requests = RequestRecordSerializer(many=True)


class _RouteView(OrgAPIView):
    actions = {"GET": Action.USAGE_VIEW}

    def _route(self, route_id: str) -> Route:
        return get_object_or_404(Route.objects.filter(org=self.access.org), id=route_id)


class RouteSavingsView(_RouteView):
    @extend_schema(
        parameters=[SavingsQuery],
        responses=RouteSavingsSerializer,
        summary="A route's cost per day against every request at its strongest target",
    )
    def get(self, request: Request, org_slug: str, route_id: str) -> Response:
        route = self._route(route_id)
        query = SavingsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        days = route_savings_daily(
            org=self.access.org, route_name=route.name, days=query.validated_data["days"]
        )
        rows = SavingsDaySerializer(days, many=True).data
        totals = {
            name: sum(getattr(d, name) for d in days)
            for name in ("requests", "routed_cheaper", "cost_micros", "baseline_cost_micros")
        }
        totals["saved_micros"] = totals["baseline_cost_micros"] - totals["cost_micros"]
        return Response({"route": route.name, "days": rows, "totals": totals})


class RouteRequestsView(_RouteView):
    @extend_schema(
        parameters=[RequestsQuery],
        responses=RouteRequestsSerializer,
        summary="A route's latest requests with the router's decision",
    )
    def get(self, request: Request, org_slug: str, route_id: str) -> Response:
        route = self._route(route_id)
        query = RequestsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        org = self.access.org
        records = list(
            route_requests(org=org, route_name=route.name, limit=query.validated_data["limit"])
        )
        names = deployment_names(org, records)
        body = {"route": route.name, "requests": [record_dict(r, names) for r in records]}
        return Response(RouteRequestsSerializer(body).data)
