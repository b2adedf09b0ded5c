"""Resolves the organisation from the URL and checks membership before any view runs, gives a
console address that only takes a form's submission a page of its own when it is opened, and
tells the audit log which client a request came from."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from console.models import Membership
from console.services.audit import client_address
from console.services.two_factor import two_factor_missing_message


class ClientAddress:
    """Audit events recorded while a request is answered (console, REST API, admin) carry the
    client's address. It is the connection's (REMOTE_ADDR), as for keys' network limits: behind a
    proxy, the server takes it from ``X-Forwarded-For`` only for trusted proxies (uvicorn's
    ``--forwarded-allow-ips``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = client_address.set(_address(request.META.get("REMOTE_ADDR")))
        try:
            return self.get_response(request)
        finally:
            client_address.reset(token)


def _address(text: str | None) -> str | None:
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:  # a Unix socket's peer, or nothing
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    return str(address)


class OrgMiddleware:
    """For every URL with an ``org_slug``, load the org through the user's own memberships.

    An org the user does not belong to is indistinguishable from one that does not exist (404).
    Role checks happen in the view with ``requires``; this only establishes membership.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        slug = view_kwargs.get("org_slug")
        if slug is None or request.path_info.startswith("/api/"):  # the API resolves its own
            return None
        if not request.user.is_authenticated:
            return None  # the view's login_required redirects to the login page
        membership = (
            Membership.objects.select_related("org")
            .filter(user=request.user, org__slug=slug, org__closed_at=None)
            .first()
        )
        if membership is None:
            raise Http404("No such organisation")
        if membership.org.require_two_factor and not request.user.has_two_factor:
            raise PermissionDenied(two_factor_missing_message(membership.org))
        request.org = membership.org  # type: ignore[attr-defined]
        request.membership = membership  # type: ignore[attr-defined]
        return None


class FormOnlyAddressPage:
    """A console address that only takes a form's POST (creating a key, revoking one) and is
    opened in the browser (a reload, a bookmark, a pasted link) answers 405 with a page that says
    so and leads back, instead of the empty body Django's ``require_POST`` gives. The REST API,
    the admin and htmx requests keep the plain 405."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code == 405
            and request.method == "GET"
            and not response.content
            and not request.path_info.startswith(("/api/", "/admin/"))
            and "HX-Request" not in request.headers
        ):
            page = render(request, "405.html", {"org": getattr(request, "org", None)}, status=405)
            page["Allow"] = response.get("Allow", "")
            return page
        return response
