"""Resolves the organisation from the URL and checks membership before any view runs, gives a
console address that only takes a form's submission a page of its own when it is opened, sends
the whole page to sign-in when a panel's request finds the session ended, and tells the audit
log which client a request came from."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme

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
            # Leaving needs no second factor: it only gives up access, which a password alone
            # may do anyway (deleting the account). The refusal offers it.
            match = request.resolver_match
            if match is None or match.url_name != "org_leave":
                return render(
                    request,
                    "403.html",
                    {
                        "exception": two_factor_missing_message(membership.org),
                        "leave_membership": membership,
                    },
                    status=403,
                )
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


class HtmxSignIn:
    """A panel's request (htmx: a poll, a form) made after the session ended is redirected to
    sign-in like any other, but htmx follows that redirect itself and would swap the whole
    sign-in page into the panel. The browser is sent to sign-in instead (``HX-Redirect``), to
    come back afterwards to the page it was on rather than to the panel's own address."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code not in (301, 302, 303) or "HX-Request" not in request.headers:
            return response
        login = resolve_url(settings.LOGIN_URL)
        if urlsplit(response.get("Location", "")).path != login:
            return response
        target = login
        current = request.headers.get("HX-Current-URL", "")
        if current and url_has_allowed_host_and_scheme(
            current, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            parts = urlsplit(current)
            page = parts.path + (f"?{parts.query}" if parts.query else "")
            target = f"{login}?{urlencode({'next': page})}"
        redirect = HttpResponse(status=200)
        redirect["HX-Redirect"] = target
        return redirect
