"""REST endpoints for routes and external endpoints, under /api/orgs/<org_slug>/."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.access import OrgAPIView, Paginated
from console.permissions import Action
from inference.models import ExternalEndpoint, Route, RoutePolicy
from inference.services.routes import (
    external_endpoint_create,
    external_endpoint_delete,
    external_endpoint_update,
    route_create,
    route_delete,
    route_update,
)


class RouteSerializer(serializers.ModelSerializer[Route]):
    policy = serializers.ChoiceField(choices=RoutePolicy.choices)
    config = serializers.JSONField()

    class Meta:
        model = Route
        fields = [
            "id",
            "name",
            "description",
            "policy",
            "config",
            "cold_start_fallback",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        extra_kwargs = {
            "description": {"required": False},
            "cold_start_fallback": {"required": False},
        }


class EndpointSerializer(serializers.ModelSerializer[ExternalEndpoint]):
    api_key = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=500
    )

    class Meta:
        model = ExternalEndpoint
        fields = ["id", "name", "base_url", "model", "api_key", "api_key_hint", "created_at"]
        read_only_fields = ["id", "api_key_hint", "created_at"]


def _validated(serializer: serializers.Serializer, data: Any, *, partial: bool = False) -> dict:
    checked = serializer.__class__(data=data, partial=partial)
    checked.is_valid(raise_exception=True)
    return dict(checked.validated_data)


class RouteListView(Paginated, OrgAPIView):
    actions = {"GET": Action.ROUTES_VIEW, "POST": Action.ROUTES_MANAGE}

    @extend_schema(responses=RouteSerializer(many=True), summary="The org's routes")
    def get(self, request: Request, org_slug: str) -> Response:
        return self.page(request, Route.objects.filter(org=self.access.org), RouteSerializer)

    @extend_schema(request=RouteSerializer, responses={201: RouteSerializer})
    def post(self, request: Request, org_slug: str) -> Response:
        data = _validated(RouteSerializer(), request.data)
        route = route_create(
            org=self.access.org, actor=self.access.user, actor_key=self.access.key, **data
        )
        return Response(RouteSerializer(route).data, status=status.HTTP_201_CREATED)


class RouteDetailView(OrgAPIView):
    actions = {
        "GET": Action.ROUTES_VIEW,
        "PATCH": Action.ROUTES_MANAGE,
        "DELETE": Action.ROUTES_MANAGE,
    }

    def _route(self, route_id: str) -> Route:
        return get_object_or_404(Route.objects.filter(org=self.access.org), id=route_id)

    @extend_schema(responses=RouteSerializer)
    def get(self, request: Request, org_slug: str, route_id: str) -> Response:
        return Response(RouteSerializer(self._route(route_id)).data)

    @extend_schema(request=RouteSerializer, responses=RouteSerializer)
    def patch(self, request: Request, org_slug: str, route_id: str) -> Response:
        route = self._route(route_id)
        data = _validated(RouteSerializer(), request.data, partial=True)
        route = route_update(route=route, actor=self.access.user, actor_key=self.access.key, **data)
        return Response(RouteSerializer(route).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, org_slug: str, route_id: str) -> Response:
        route_delete(route=self._route(route_id), actor=self.access.user, actor_key=self.access.key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointListView(Paginated, OrgAPIView):
    actions = {"GET": Action.ROUTES_VIEW, "POST": Action.ROUTES_MANAGE}

    @extend_schema(responses=EndpointSerializer(many=True), summary="External endpoints")
    def get(self, request: Request, org_slug: str) -> Response:
        return self.page(
            request, ExternalEndpoint.objects.filter(org=self.access.org), EndpointSerializer
        )

    @extend_schema(request=EndpointSerializer, responses={201: EndpointSerializer})
    def post(self, request: Request, org_slug: str) -> Response:
        data = _validated(EndpointSerializer(), request.data)
        endpoint = external_endpoint_create(
            org=self.access.org, actor=self.access.user, actor_key=self.access.key, **data
        )
        return Response(EndpointSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class EndpointDetailView(OrgAPIView):
    actions = {
        "GET": Action.ROUTES_VIEW,
        "PATCH": Action.ROUTES_MANAGE,
        "DELETE": Action.ROUTES_MANAGE,
    }

    def _endpoint(self, endpoint_id: str) -> ExternalEndpoint:
        return get_object_or_404(
            ExternalEndpoint.objects.filter(org=self.access.org), id=endpoint_id
        )

    @extend_schema(responses=EndpointSerializer)
    def get(self, request: Request, org_slug: str, endpoint_id: str) -> Response:
        return Response(EndpointSerializer(self._endpoint(endpoint_id)).data)

    @extend_schema(
        request=EndpointSerializer,
        responses=EndpointSerializer,
        summary="Change an endpoint's base URL, model or API key",
        description=(
            "Fields left out keep their values. `api_key` replaces the stored key; an empty "
            "`api_key` removes it. The name cannot change: routes refer to the endpoint by it."
        ),
    )
    def patch(self, request: Request, org_slug: str, endpoint_id: str) -> Response:
        endpoint = self._endpoint(endpoint_id)
        data = _validated(EndpointSerializer(), request.data, partial=True)
        if "name" in data and data["name"] != endpoint.name:
            raise serializers.ValidationError(
                {"name": "The name cannot change: routes refer to the endpoint as external:NAME."}
            )
        api_key = data.get("api_key")
        endpoint = external_endpoint_update(
            endpoint=endpoint,
            actor=self.access.user,
            actor_key=self.access.key,
            base_url=data.get("base_url"),
            model=data.get("model"),
            api_key=api_key or None,
            clear_api_key=api_key == "",
        )
        return Response(EndpointSerializer(endpoint).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, org_slug: str, endpoint_id: str) -> Response:
        external_endpoint_delete(
            endpoint=self._endpoint(endpoint_id),
            actor=self.access.user,
            actor_key=self.access.key,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
