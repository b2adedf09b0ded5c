from __future__ import annotations

from typing import Any, cast

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response

from console.api.access import (
    AnonymousThrottled,
    NewestFirstPages,
    OrgAccess,
    OrgAPIView,
    Paginated,
    PlatformAPIView,
)
from console.api.authentication import KeyPrincipal
from console.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeyRollSerializer,
    ApiKeySerializer,
    ApiKeyUpdateSerializer,
    AuditEventSerializer,
    AuditQuerySerializer,
    InvitationSerializer,
    MemberSerializer,
    MeSerializer,
    OrgCreateSerializer,
    OrgSerializer,
    OrgUpdateSerializer,
    RoleSerializer,
    WebhookCreatedSerializer,
    WebhookCreateSerializer,
    WebhookDeliverySerializer,
    WebhookSerializer,
)
from console.models import Organisation, User, WebhookDelivery, WebhookEndpoint
from console.permissions import Action
from console.services.audit import audit_events
from console.services.keys import (
    CreatedKey,
    api_key_create,
    api_key_revoke,
    api_key_roll,
    api_key_update,
)
from console.services.members import (
    invitation_create,
    invitation_revoke,
    membership_change_role,
    membership_remove,
)
from console.services.orgs import org_create, org_update
from console.services.two_factor import org_two_factor_require
from console.services.webhooks import (
    delivery_resend,
    webhook_create,
    webhook_delete,
    webhook_test,
)


def _with_secret(created: CreatedKey, code: int) -> Response:
    """A key and its full secret: the one answer that holds it, never to be cached."""
    body = dict(ApiKeySerializer(created.key).data)
    body["key"] = created.secret
    response = Response(body, status=code)
    response["Cache-Control"] = "no-store"
    return response


class SchemaView(AnonymousThrottled, SpectacularAPIView):
    """The OpenAPI schema, open to all; a bad credential is throttled as everywhere else."""


class SchemaDocsView(AnonymousThrottled, SpectacularSwaggerView):
    """The schema's browsable page."""


class MeView(PlatformAPIView):
    @extend_schema(responses=MeSerializer, summary="The caller and the orgs it can act in")
    def get(self, request: Request) -> Response:
        principal = request.user
        if isinstance(principal, KeyPrincipal):
            auth = principal.auth
            me: dict[str, Any] = {
                "email": None,
                "key_prefix": auth.key.prefix,
                "orgs": [{"org": auth.org, "role": "key:" + ",".join(auth.scopes)}],
            }
        else:
            user = cast(User, principal)
            me = {
                "email": user.email,
                "key_prefix": None,
                "orgs": user.memberships.filter(org__closed_at=None).select_related("org"),
            }
        return Response(MeSerializer(me).data)


class OrgListView(Paginated, PlatformAPIView):
    @extend_schema(
        responses=OrgSerializer(many=True), summary="Organisations the caller can act in"
    )
    def get(self, request: Request) -> Response:
        if isinstance(request.user, KeyPrincipal):
            orgs = Organisation.objects.filter(pk=request.user.auth.org.pk)
        else:
            user = cast(User, request.user)
            orgs = Organisation.objects.filter(memberships__user=user, closed_at=None)
        return self.page(request, orgs.order_by("name", "id"), OrgSerializer)

    @extend_schema(
        request=OrgCreateSerializer,
        responses={201: OrgSerializer},
        summary="Create an organisation",
    )
    def post(self, request: Request) -> Response:
        if isinstance(request.user, KeyPrincipal):
            raise exceptions.PermissionDenied("Organisations are created by people, not keys.")
        data = OrgCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = org_create(
            name=data.validated_data["name"],
            slug=data.validated_data.get("slug") or None,
            owner=request.user,  # type: ignore[arg-type]
        )
        return Response(OrgSerializer(org).data, status=status.HTTP_201_CREATED)


class OrgDetailView(OrgAPIView):
    actions = {"GET": Action.ORG_VIEW, "PATCH": Action.ORG_UPDATE}

    @extend_schema(responses=OrgSerializer)
    def get(self, request: Request, org_slug: str) -> Response:
        return Response(OrgSerializer(self.access.org).data)

    @extend_schema(request=OrgUpdateSerializer, responses=OrgSerializer)
    def patch(self, request: Request, org_slug: str) -> Response:
        data = OrgUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = self.access.org
        actor = cast(User, self.access.user)  # keys lack this action
        if "require_two_factor" in data.validated_data:
            org = org_two_factor_require(
                org=org, actor=actor, required=data.validated_data["require_two_factor"]
            )
        if "name" in data.validated_data:
            org = org_update(org=org, actor=actor, name=data.validated_data["name"])
        return Response(OrgSerializer(org).data)


class MemberListView(Paginated, OrgAPIView):
    actions = {"GET": Action.MEMBERS_VIEW}

    @extend_schema(responses=MemberSerializer(many=True))
    def get(self, request: Request, org_slug: str) -> Response:
        members = self.access.org.memberships.select_related("user").order_by("created_at", "id")
        return self.page(request, members, MemberSerializer)


class MemberDetailView(OrgAPIView):
    actions = {
        "GET": Action.MEMBERS_VIEW,
        "PATCH": Action.MEMBERS_CHANGE_ROLE,
        "DELETE": Action.MEMBERS_REMOVE,
    }

    def _member(self, member_id: str) -> Any:
        return get_object_or_404(self.access.org.memberships.select_related("user"), id=member_id)

    @extend_schema(responses=MemberSerializer)
    def get(self, request: Request, org_slug: str, member_id: str) -> Response:
        return Response(MemberSerializer(self._member(member_id)).data)

    @extend_schema(request=RoleSerializer, responses=MemberSerializer)
    def patch(self, request: Request, org_slug: str, member_id: str) -> Response:
        membership = self._member(member_id)
        data = RoleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        assert self.access.membership is not None  # keys lack this action
        membership_change_role(
            membership=membership, actor=self.access.membership, role=data.validated_data["role"]
        )
        return Response(MemberSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, org_slug: str, member_id: str) -> Response:
        membership = self._member(member_id)
        assert self.access.membership is not None
        membership_remove(membership=membership, actor=self.access.membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationListView(Paginated, OrgAPIView):
    actions = {"GET": Action.MEMBERS_VIEW, "POST": Action.MEMBERS_INVITE}

    @extend_schema(responses=InvitationSerializer(many=True))
    def get(self, request: Request, org_slug: str) -> Response:
        pending = self.access.org.invitations.filter(
            accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()
        )
        return self.page(request, pending.order_by("-created_at", "-id"), InvitationSerializer)

    @extend_schema(request=InvitationSerializer, responses={201: InvitationSerializer})
    def post(self, request: Request, org_slug: str) -> Response:
        data = InvitationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        created = invitation_create(
            org=self.access.org,
            actor=self.access.user,
            actor_key=self.access.key,
            email=data.validated_data["email"],
            role=data.validated_data["role"],
        )
        return Response(
            InvitationSerializer(created.invitation).data, status=status.HTTP_201_CREATED
        )


class InvitationDetailView(OrgAPIView):
    actions = {"GET": Action.MEMBERS_VIEW, "DELETE": Action.MEMBERS_INVITE}

    @extend_schema(responses=InvitationSerializer)
    def get(self, request: Request, org_slug: str, invitation_id: str) -> Response:
        invitation = get_object_or_404(self.access.org.invitations, id=invitation_id)
        return Response(InvitationSerializer(invitation).data)

    @extend_schema(responses={204: None}, summary="Revoke a pending invitation")
    def delete(self, request: Request, org_slug: str, invitation_id: str) -> Response:
        invitation = get_object_or_404(self.access.org.invitations, id=invitation_id)
        invitation_revoke(invitation=invitation, actor=self.access.user, actor_key=self.access.key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class KeyListView(Paginated, OrgAPIView):
    actions = {"GET": Action.KEYS_VIEW, "POST": Action.KEYS_MANAGE}

    @extend_schema(responses=ApiKeySerializer(many=True))
    def get(self, request: Request, org_slug: str) -> Response:
        keys = self.access.org.api_keys.order_by("-created_at", "-id")
        return self.page(request, keys, ApiKeySerializer)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer},
        summary="Create a key; the response holds the full key, the only time it is shown",
    )
    def post(self, request: Request, org_slug: str) -> Response:
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        created = api_key_create(
            org=self.access.org,
            actor=self.access.user,
            actor_key=self.access.key,
            **data.validated_data,
        )
        return _with_secret(created, status.HTTP_201_CREATED)


class KeyDetailView(OrgAPIView):
    actions = {"GET": Action.KEYS_VIEW, "PATCH": Action.KEYS_MANAGE}

    @extend_schema(responses=ApiKeySerializer)
    def get(self, request: Request, org_slug: str, key_id: str) -> Response:
        key = get_object_or_404(self.access.org.api_keys, id=key_id)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        request=ApiKeyUpdateSerializer,
        responses=ApiKeySerializer,
        summary="Change a key's name, scopes, allowed models, limits or expiry",
        description=(
            "Fields left out keep their values; `null` removes a limit or the expiry, an empty "
            "`allowed_models` allows every model. Scopes can be removed but not added. The key "
            "itself does not change, and gateways apply the change within about two seconds. "
            "A revoked key cannot be changed."
        ),
    )
    def patch(self, request: Request, org_slug: str, key_id: str) -> Response:
        key = get_object_or_404(self.access.org.api_keys, id=key_id)
        data = ApiKeyUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        key = api_key_update(
            key=key, actor=self.access.user, actor_key=self.access.key, **data.validated_data
        )
        return Response(ApiKeySerializer(key).data)


class KeyRollView(OrgAPIView):
    actions = {"POST": Action.KEYS_MANAGE}

    @extend_schema(
        request=ApiKeyRollSerializer,
        responses=ApiKeyCreatedSerializer,
        summary="Give a key a new secret (shown once); the old one works for grace_hours",
    )
    def post(self, request: Request, org_slug: str, key_id: str) -> Response:
        key = get_object_or_404(self.access.org.api_keys, id=key_id)
        data = ApiKeyRollSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rolled = api_key_roll(
            key=key,
            actor=self.access.user,
            actor_key=self.access.key,
            grace_hours=data.validated_data["grace_hours"],
        )
        return _with_secret(rolled, status.HTTP_200_OK)


class KeyRevokeView(OrgAPIView):
    actions = {"POST": Action.KEYS_MANAGE}

    @extend_schema(request=None, responses=ApiKeySerializer, summary="Revoke a key at once")
    def post(self, request: Request, org_slug: str, key_id: str) -> Response:
        key = get_object_or_404(self.access.org.api_keys, id=key_id)
        key = api_key_revoke(key=key, actor=self.access.user, actor_key=self.access.key)
        return Response(ApiKeySerializer(key).data)


class AuditListView(Paginated, OrgAPIView):
    """The audit log, newest first, a page at a time: follow each page's `next` link (a cursor,
    so that events written meanwhile neither repeat nor hide one)."""

    actions = {"GET": Action.AUDIT_VIEW}
    pagination_class = NewestFirstPages

    @extend_schema(parameters=[AuditQuerySerializer], responses=AuditEventSerializer(many=True))
    def get(self, request: Request, org_slug: str) -> Response:
        query = AuditQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        events = audit_events(org=self.access.org, **query.validated_data)
        return self.page(request, events, AuditEventSerializer)


class WebhookListView(Paginated, OrgAPIView):
    actions = {"GET": Action.WEBHOOKS_MANAGE, "POST": Action.WEBHOOKS_MANAGE}

    @extend_schema(responses=WebhookSerializer(many=True))
    def get(self, request: Request, org_slug: str) -> Response:
        endpoints = WebhookEndpoint.objects.filter(org=self.access.org, disabled_at=None)
        return self.page(request, endpoints.order_by("created_at", "id"), WebhookSerializer)

    @extend_schema(
        request=WebhookCreateSerializer,
        responses={201: WebhookCreatedSerializer},
        summary="Add a webhook; the response holds its signing secret, the only time it is shown",
    )
    def post(self, request: Request, org_slug: str) -> Response:
        data = WebhookCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint, secret = webhook_create(
            org=self.access.org,
            actor=self.access.user,
            actor_key=self.access.key,
            **data.validated_data,
        )
        body = dict(WebhookSerializer(endpoint).data)
        body["secret"] = secret
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


def _webhook(access: OrgAccess, webhook_id: str) -> WebhookEndpoint:
    return get_object_or_404(WebhookEndpoint, org=access.org, id=webhook_id, disabled_at=None)


class WebhookDetailView(OrgAPIView):
    actions = {"GET": Action.WEBHOOKS_MANAGE, "DELETE": Action.WEBHOOKS_MANAGE}

    @extend_schema(responses=WebhookSerializer)
    def get(self, request: Request, org_slug: str, webhook_id: str) -> Response:
        return Response(WebhookSerializer(_webhook(self.access, webhook_id)).data)

    @extend_schema(responses={204: None}, summary="Delete a webhook; pending deliveries stop")
    def delete(self, request: Request, org_slug: str, webhook_id: str) -> Response:
        endpoint = _webhook(self.access, webhook_id)
        webhook_delete(endpoint=endpoint, actor=self.access.user, actor_key=self.access.key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookTestView(OrgAPIView):
    actions = {"POST": Action.WEBHOOKS_MANAGE}

    @extend_schema(
        request=None,
        responses={202: WebhookDeliverySerializer},
        summary="Send a webhook.test event to this webhook",
    )
    def post(self, request: Request, org_slug: str, webhook_id: str) -> Response:
        delivery = webhook_test(endpoint=_webhook(self.access, webhook_id))
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


class WebhookDeliveryListView(Paginated, OrgAPIView):
    actions = {"GET": Action.WEBHOOKS_MANAGE}

    @extend_schema(responses=WebhookDeliverySerializer(many=True))
    def get(self, request: Request, org_slug: str) -> Response:
        deliveries = WebhookDelivery.objects.filter(endpoint__org=self.access.org).order_by(
            "-created_at", "-id"
        )
        return self.page(request, deliveries, WebhookDeliverySerializer)


class WebhookDeliveryResendView(OrgAPIView):
    actions = {"POST": Action.WEBHOOKS_MANAGE}

    @extend_schema(
        request=None,
        responses={202: WebhookDeliverySerializer},
        summary="Send a failed delivery again, with a fresh set of attempts",
    )
    def post(self, request: Request, org_slug: str, delivery_id: str) -> Response:
        delivery = get_object_or_404(
            WebhookDelivery.objects.select_related("endpoint"),
            endpoint__org=self.access.org,
            id=delivery_id,
        )
        delivery = delivery_resend(delivery=delivery)
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
