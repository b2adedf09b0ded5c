"""Request types for views, so that ``request.org`` and friends are checked by mypy."""

from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails

from console.models import Membership, Organisation, User


class AuthedRequest(HttpRequest):
    user: User
    htmx: HtmxDetails


class OrgRequest(AuthedRequest):
    """A request to an org URL: OrgMiddleware has checked membership and set these."""

    org: Organisation
    membership: Membership
