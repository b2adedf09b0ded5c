"""Org resolution and the role/scope check for REST endpoints, in one place."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.http import Http404
from rest_framework import exceptions
from rest_framework.pagination import BasePagination, LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from console.api.authentication import KeyPrincipal, KeyRefused
from console.models import ApiKey, Membership, Organisation, User
from console.permissions import (
    UNCONFIRMED_EMAIL_MESSAGE,
    Action,
    needs_confirmed_email,
    role_can,
    scopes_can,
)
from console.services.two_factor import two_factor_missing_message

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class OrgAccess:
    """Who is acting in which org: a member (by session) or an API key (by its scopes)."""

    def __init__(
        self,
        org: Organisation,
        membership: Membership | None = None,
        key: ApiKey | None = None,
    ) -> None:
        self.org = org
        self.membership = membership
        self.key = key

    @property
    def user(self) -> User | None:
        return self.membership.user if self.membership else None

    def can(self, action: Action) -> bool:
        if self.membership is not None:
            return role_can(self.membership.role, action)
        return self.key is not None and scopes_can(list(self.key.scopes), action)


def resolve_org(request: Request, slug: str) -> OrgAccess:
    """The org named in the URL, if the caller belongs to it; otherwise 404."""
    principal = request.user
    if isinstance(principal, KeyPrincipal):
        if principal.auth.org.slug != slug:
            raise Http404
        if request.method not in SAFE_METHODS and "manage" not in principal.auth.scopes:
            raise exceptions.PermissionDenied("This key has the 'read' scope: GET only.")
        return OrgAccess(principal.auth.org, key=principal.auth.key)
    membership = (
        Membership.objects.select_related("org", "user")
        .filter(user_id=str(principal.pk), org__slug=slug, org__closed_at=None)
        .first()
    )
    if membership is None:
        raise Http404
    if membership.org.require_two_factor and not membership.user.has_two_factor:
        raise exceptions.PermissionDenied(two_factor_missing_message(membership.org))
    return OrgAccess(membership.org, membership=membership)


class AnonymousThrottled:
    """For a DRF view: a caller with no credential, or a bad one, is counted by the throttles
    (the anonymous rate, per client address) before it is told 401, and told 429 once over. So
    is a key refused here although it exists (403: from outside its allowed networks, or without
    a REST API scope), which authenticates nothing either.

    DRF authenticates and checks permissions before it throttles, so the anonymous rate would
    never apply to views that need a caller: guessing keys would go unchecked. Only refused
    requests take this path; the others pay nothing more."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        try:
            super().initial(request, *args, **kwargs)  # type: ignore[misc]
        except (exceptions.NotAuthenticated, exceptions.AuthenticationFailed, KeyRefused):
            self.check_throttles(request)  # type: ignore[attr-defined]
            raise


class PlatformAPIView(AnonymousThrottled, APIView):
    """Base of the REST API's views."""


class OrgAPIView(PlatformAPIView):
    """Base for ``/api/orgs/<org_slug>/...`` endpoints. ``actions`` maps HTTP method to Action."""

    actions: dict[str, Action] = {}
    access: OrgAccess

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.access = resolve_org(request, kwargs["org_slug"])
        method = request.method or "GET"
        if method == "OPTIONS":
            return  # what the endpoint takes, for anyone who may see the org (DRF's metadata)
        action = self.actions.get("GET" if method == "HEAD" else method)
        if action is None and getattr(self, method.lower(), None) is None:
            raise exceptions.MethodNotAllowed(method)  # not a 403: nobody may, whatever the role
        if action is None or not self.access.can(action):
            raise exceptions.PermissionDenied("Your role or key scope does not allow this.")
        user = self.access.user
        if user is not None and user.email_verified_at is None and needs_confirmed_email(action):
            raise exceptions.PermissionDenied(UNCONFIRMED_EMAIL_MESSAGE.format(email=user.email))


class Pages(LimitOffsetPagination):
    """``limit`` and ``offset`` as whole numbers; anything else is a 400 that names the parameter
    (DRF would quietly serve the first page of the default size instead)."""

    max_limit = 500  # a larger ``limit`` is served as 500

    def get_limit(self, request: Request) -> int | None:
        limit = _whole_number(request, self.limit_query_param, least=1)
        return self.default_limit if limit is None else min(limit, self.max_limit or limit)

    def get_offset(self, request: Request) -> int:
        return _whole_number(request, self.offset_query_param, least=0) or 0


_CURSOR_RE = re.compile(r"([0-9]{1,18})_([0-9a-f]{32})")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class NewestFirstPages(BasePagination):
    """Pages of a log that grows while it is read (rows with ``created_at`` and a UUID id), newest
    first: ``limit`` as for ``Pages``, and ``before``, a cursor on (created_at, id) that the
    ``next`` link carries. Offsets would shift by one for every row written between two pages,
    repeating a row on the next; a cursor does not move. The answer is ``{"next", "results"}``."""

    default_limit = 50
    max_limit = 500  # a larger ``limit`` is served as 500
    cursor_query_param = "before"

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: APIView | None = None
    ) -> list[Any]:
        self.request = request
        if request.query_params.get("offset"):
            raise exceptions.ValidationError(
                {"offset": ["This list pages by cursor: follow the `next` link of a page."]}
            )
        limit = _whole_number(request, "limit", least=1)
        limit = self.default_limit if limit is None else min(limit, self.max_limit)
        raw = request.query_params.get(self.cursor_query_param)
        if raw:
            created_at, pk = self._decode(raw)
            queryset = queryset.filter(
                Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=pk)
            )
        rows = list(queryset.order_by("-created_at", "-pk")[: limit + 1])
        self.next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            micros = (last.created_at - EPOCH) // timedelta(microseconds=1)
            self.next_cursor = f"{micros}_{last.pk.hex}"
        return rows[:limit]

    def _decode(self, raw: str) -> tuple[datetime, uuid.UUID]:
        match = _CURSOR_RE.fullmatch(raw)
        if match is not None:
            try:
                return EPOCH + timedelta(microseconds=int(match[1])), uuid.UUID(match[2])
            except OverflowError:  # past the last date Python can hold: never one of ours
                pass
        raise exceptions.ValidationError(
            {self.cursor_query_param: ["Not a cursor of this list: follow the `next` link."]}
        )

    def get_next_link(self) -> str | None:
        if self.next_cursor is None:
            return None
        url = self.request.build_absolute_uri()
        return replace_query_param(url, self.cursor_query_param, self.next_cursor)

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self.get_next_link(), "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["next", "results"],
            "properties": {
                "next": {
                    "type": "string",
                    "nullable": True,
                    "format": "uri",
                    "description": "The next, older page (null after the oldest).",
                },
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        return [
            {
                "name": "limit",
                "required": False,
                "in": "query",
                "description": f"Rows a page: {self.default_limit} by default, at most "
                f"{self.max_limit} (a larger limit is served as {self.max_limit}).",
                "schema": {"type": "integer", "minimum": 1},
            },
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Where the page starts; set by the previous page's `next` link.",
                "schema": {"type": "string"},
            },
        ]


def _whole_number(request: Request, name: str, *, least: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < least:
        raise exceptions.ValidationError({name: [f"Must be a whole number, at least {least}."]})
    return int(raw)


class Paginated:
    """For a view whose GET lists: ``limit`` (50 by default, at most 500) and ``offset`` pick the
    page, and the answer is ``{"count", "next", "previous", "results"}``. The OpenAPI schema says
    so too (drf-spectacular reads ``pagination_class`` on views that answer a list)."""

    pagination_class: type[BasePagination] = Pages

    def page(self, request: Request, queryset: Any, serializer: type[Serializer]) -> Response:
        paginator = self.pagination_class()
        rows = paginator.paginate_queryset(queryset, request, view=self)  # type: ignore[arg-type]
        return paginator.get_paginated_response(serializer(rows, many=True).data)
