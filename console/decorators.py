from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from console.permissions import (
    UNCONFIRMED_EMAIL_MESSAGE,
    Action,
    needs_confirmed_email,
    role_can,
)


def member_can(request: HttpRequest, action: Action) -> bool:
    """Whether the signed-in member may do ``action`` here (what ``member_check`` enforces): for
    pages that offer a change only to those who may make it."""
    membership = getattr(request, "membership", None)
    if membership is None or not role_can(membership.role, action):
        return False
    if needs_confirmed_email(action):
        return getattr(request.user, "email_verified_at", None) is not None
    return True


def member_check(request: HttpRequest, action: Action) -> None:
    """Raise PermissionDenied unless the signed-in member may do ``action`` here: their role
    allows it and, for a change, their email address is confirmed."""
    membership = getattr(request, "membership", None)
    if membership is None:  # pragma: no cover - the middleware guarantees it
        raise PermissionDenied
    if not role_can(membership.role, action):
        raise PermissionDenied(f"Your role ({membership.role}) cannot do this.")
    user = request.user
    if needs_confirmed_email(action) and getattr(user, "email_verified_at", 1) is None:
        raise PermissionDenied(UNCONFIRMED_EMAIL_MESSAGE.format(email=getattr(user, "email", "")))


def requires(
    action: Action,
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Console views: the user must be signed in (redirect), a member (404) and allowed (403);
    changes also need a confirmed email address (403 saying so)."""

    def decorator(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            member_check(request, action)
            return view(request, *args, **kwargs)

        wrapped.required_action = action  # type: ignore[attr-defined]
        return wrapped

    return decorator
