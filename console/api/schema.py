"""The REST API's OpenAPI schema: each operation says who may call it.

drf-spectacular describes an operation with its method's or view's docstring, falling back to
base classes' docstrings; for the views under ``/api/orgs/<org_slug>/`` that fallback is
``OrgAPIView``'s, which speaks to this code's readers, not to the API's. Here an operation keeps
its own docstring (its method's, or its view class's own) and gains one line from the permission
matrix: the action it needs, the roles that have it and the API key scopes that grant it.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import get_doc

from console.permissions import MATRIX, SCOPE_MATRIX, Action, Role


def permission_line(action: Action) -> str:
    """``Needs keys.manage (Create, edit and revoke API keys): roles ...; API key scopes ...``."""
    roles = [Role(role).label.lower() for role, actions in MATRIX.items() if action in actions]
    scopes = [f"`{scope}`" for scope, actions in SCOPE_MATRIX.items() if action in actions]
    line = f"Needs `{action.value}` ({action.label}): roles {', '.join(roles)}"
    if scopes:
        return f"{line}; API keys with the {' or '.join(scopes)} scope."
    return f"{line}; API keys cannot do this."


class PlatformAutoSchema(AutoSchema):
    def get_description(self) -> str:  # type: ignore[override]
        handler = getattr(self.view, self.method.lower(), None)
        # The view class's own docstring only: an inherited one describes the base class.
        own = self.view.__class__.__dict__.get("__doc__")
        return get_doc(handler) or (get_doc(self.view.__class__) if own else "")

    def get_operation(self, *args: Any, **kwargs: Any) -> Any:
        # Here rather than in get_description, which an explicit extend_schema(description=...)
        # replaces.
        operation = super().get_operation(*args, **kwargs)
        action = getattr(self.view, "actions", {}).get(self.method)
        if operation is not None and action is not None:
            line = permission_line(Action(action))
            description = operation.get("description", "")
            operation["description"] = f"{description}\n\n{line}" if description else line
        return operation


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "fields"],
            "properties": {
                "code": {"type": "string", "description": "What went wrong, for programs."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {}},
                    "description": "On a 400: the request's fields that are wrong, and why.",
                },
            },
        }
    },
}
_ERRORS = {
    "400": "The request is not valid: `fields` names what is wrong. Nothing was changed.",
    "401": "No credentials, or a key that is unknown, revoked, expired or of a suspended "
    "organisation.",
    "403": "Your role or key scope does not allow this, or the organisation is suspended and "
    "this would start or add to its deployments (`org_suspended`); the message says why.",
    "404": "No such organisation, or no such object in it (another tenant's is not found either).",
    "429": "Too many requests: slow down (`Retry-After` says when to try again).",
}


def error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A drf-spectacular postprocessing hook: every operation documents the errors it can answer,
    in the one shape every error has (``console.api.errors``)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for path, methods in result.get("paths", {}).items():
        for method, operation in methods.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = ["401", "429"]
            if "{" in path:
                codes += ["403", "404"]
            elif method != "get":  # creating an organisation is for people, not keys
                codes.append("403")
            has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
            # A delete can be refused too (the last owner; a route another route falls back to).
            if method in ("post", "put", "patch", "delete") or has_query:
                codes.append("400")
            responses = operation["responses"]
            for code in sorted(codes):
                responses.setdefault(code, {"description": _ERRORS[code]})
            # An error a view documents itself (its own words) has the one shape too.
            for code in sorted(c for c in responses if c.startswith("4")):
                responses[code].setdefault(
                    "content",
                    {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                )
    return result
