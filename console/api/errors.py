"""One JSON error shape for the REST API: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from console.services.orgs import OrgSuspendedError


def _flatten(detail: Any) -> str:
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    if isinstance(detail, dict):
        return " ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    return str(detail)


def _messages(detail: Any) -> list[str]:
    """A field's errors as a flat list of messages, whatever their nesting: a list field's items
    come as ``{0: [...]}``, a nested object's as ``{"name": [...]}``, and a service's check may
    give a bare string."""
    if isinstance(detail, list):
        return [message for item in detail for message in _messages(item)]
    if isinstance(detail, dict):
        return [
            f"{'item ' if str(key).isdigit() else ''}{key}: {message}"
            for key, value in detail.items()
            for message in _messages(value)
        ]
    return [str(detail)]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OrgSuspendedError):
        # Not a fault in the request: the organisation may not do this now.
        exc = exceptions.PermissionDenied(" ".join(exc.messages), code="org_suspended")
    elif isinstance(exc, DjangoValidationError):
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, Http404):
        # A view's own words ("No budget is set.") are kept; get_object_or_404's name a model
        # class, which says nothing to a client.
        said = str(exc)
        exc = exceptions.NotFound(
            None if said.endswith("matches the given query.") else said or None
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = getattr(exc, "default_code", "error")
    fields: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError) and isinstance(response.data, dict):
        fields = {k: _messages(v) for k, v in response.data.items() if k != "non_field_errors"}
        # What concerns no one field is said first and as it is; each field's errors after it.
        general = _messages(response.data.get("non_field_errors", []))
        message = " ".join(
            [*general, *(f"{name}: {' '.join(errors)}" for name, errors in fields.items())]
        )
    elif isinstance(response.data, dict) and "detail" in response.data:
        message = str(response.data["detail"])
        code = getattr(response.data["detail"], "code", code)
    else:
        message = _flatten(response.data)
    if isinstance(exc, exceptions.ParseError):
        code = "malformed_json"
    response.data = {"error": {"code": code, "message": message, "fields": fields}}
    if response.status_code == status.HTTP_400_BAD_REQUEST and not message:
        response.data["error"]["message"] = "Invalid request."
    return response


def _error(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "message": message, "fields": {}}}, status=status_code
    )


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 for an address no view answers: the REST API's error shape under /api/, the
    console's page elsewhere."""
    if request.path.startswith("/api/"):
        return _error(404, "not_found", f"No API endpoint at {request.path}.")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return _error(500, "server_error", "The server failed to answer; please try again.")
    return defaults.server_error(request)
