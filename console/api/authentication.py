from __future__ import annotations

from dataclasses import dataclass, field

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from console.services.keys import KEY_PREFIX, KeyAuth, KeyAuthError, api_key_authenticate


@dataclass(frozen=True)
class KeyPrincipal:
    """Stands in for ``request.user`` when a program authenticates with an API key."""

    auth: KeyAuth
    is_authenticated: bool = field(default=True, init=False)
    is_anonymous: bool = field(default=False, init=False)
    is_staff: bool = field(default=False, init=False)

    @property
    def pk(self) -> str:
        return f"key:{self.auth.key.pk}"


class KeyRefused(exceptions.PermissionDenied):
    """A real key refused here (403, not 401): from outside its allowed networks, or without a
    REST API scope. Its caller is counted like one without a valid credential
    (``console.api.access.AnonymousThrottled``)."""


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sk-...`` with a key of the ``manage`` or ``read`` scope. The scheme
    is taken in any case (RFC 9110), as the gateway takes it."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, KeyAuth] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or not parts[1].startswith(KEY_PREFIX):
            return None
        if parts[0].lower() != self.keyword.lower():
            return None
        try:
            auth = api_key_authenticate(parts[1], client_ip=request.META.get("REMOTE_ADDR"))
        except KeyAuthError as error:
            if error.reason == "ip_not_allowed":
                raise KeyRefused(str(error)) from None
            raise exceptions.AuthenticationFailed(str(error)) from None
        if not {"manage", "read"} & set(auth.scopes):
            raise KeyRefused(
                "This key has no REST API scope; it needs the 'manage' or 'read' scope."
            )
        return KeyPrincipal(auth=auth), auth

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "console.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key (sk-...)"}
