from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from rest_framework import serializers

from console.days import day_validators
from console.limits import org_rate_limits
from console.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Organisation,
    Scope,
    WebhookDelivery,
    WebhookEndpoint,
)
from console.permissions import Role
from console.services.keys import MAX_KEY_LIMIT, MAX_ROLL_GRACE_HOURS


class OrgSerializer(serializers.ModelSerializer[Organisation]):
    id = serializers.UUIDField(source="public_id", read_only=True)
    suspended = serializers.BooleanField(source="is_suspended", read_only=True)
    rpm_limit = serializers.SerializerMethodField(
        help_text="Requests per minute for all of the organisation's keys together (null: none). "
        "Set by platform staff."
    )
    tpm_limit = serializers.SerializerMethodField(
        help_text="Tokens per minute for all of the organisation's keys together (null: none). "
        "Set by platform staff."
    )

    class Meta:
        model = Organisation
        fields = [
            "id",
            "name",
            "slug",
            "created_at",
            "suspended",
            "suspended_reason",
            "rpm_limit",
            "tpm_limit",
            "require_two_factor",
        ]
        read_only_fields = ["slug", "created_at", "suspended_reason", "require_two_factor"]

    def get_rpm_limit(self, org: Organisation) -> int | None:
        return org_rate_limits(org)[0].per_minute

    def get_tpm_limit(self, org: Organisation) -> int | None:
        return org_rate_limits(org)[1].per_minute


class OrgCreateSerializer(serializers.Serializer[None]):
    name = serializers.CharField(max_length=100)
    slug = serializers.SlugField(max_length=50, required=False, allow_blank=True)


class OrgUpdateSerializer(serializers.Serializer[None]):
    name = serializers.CharField(max_length=100, required=False)
    require_two_factor = serializers.BooleanField(
        required=False,
        help_text="Members must sign in with two-factor authentication to open the "
        "organisation (API keys are not affected). Only someone who has it on may turn it on.",
    )


class MyOrgSerializer(serializers.Serializer[Membership]):
    slug = serializers.CharField(source="org.slug")
    name = serializers.CharField(source="org.name")
    role = serializers.CharField()


class MeSerializer(serializers.Serializer[dict[str, object]]):
    email = serializers.EmailField(allow_null=True)
    key_prefix = serializers.CharField(allow_null=True)
    orgs = MyOrgSerializer(many=True)


class MemberSerializer(serializers.ModelSerializer[Membership]):
    email = serializers.EmailField(source="user.email", read_only=True)
    two_factor = serializers.BooleanField(source="user.has_two_factor", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "role", "two_factor", "created_at"]
        read_only_fields = ["id", "email", "two_factor", "created_at"]


class RoleSerializer(serializers.Serializer[None]):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer[Invitation]):
    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "created_at", "expires_at", "accepted_at", "revoked_at"]
        read_only_fields = ["id", "created_at", "expires_at", "accepted_at", "revoked_at"]
        extra_kwargs = {"role": {"choices": Role.choices}}


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    active = serializers.BooleanField(source="is_active", read_only=True)
    previous_prefix = serializers.SerializerMethodField(
        help_text="After a roll: the replaced secret's prefix, while it still works (else null)."
    )
    previous_expires_at = serializers.SerializerMethodField(
        help_text="After a roll: when the replaced secret stops working (else null)."
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "allowed_models",
            "allowed_ips",
            "rpm_limit",
            "tpm_limit",
            "expires_at",
            "created_at",
            "revoked_at",
            "last_used_at",
            "active",
            "rolled_at",
            "previous_prefix",
            "previous_expires_at",
        ]
        read_only_fields = fields

    def get_previous_prefix(self, key: ApiKey) -> str | None:
        return key.previous_prefix if key.previous_active else None

    def get_previous_expires_at(self, key: ApiKey) -> datetime | None:
        return key.previous_expires_at if key.previous_active else None


class ApiKeyRollSerializer(serializers.Serializer[None]):
    grace_hours = serializers.IntegerField(
        min_value=0,
        max_value=MAX_ROLL_GRACE_HOURS,
        help_text="How long the replaced secret keeps working: 0 (at once, for a leaked key) "
        f"to {MAX_ROLL_GRACE_HOURS} hours.",
    )


class ApiKeyCreateSerializer(serializers.Serializer[None]):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), min_length=1
    )
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list
    )
    allowed_ips = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        default=list,
        help_text="Addresses or networks (CIDR) the key may be used from; empty: anywhere.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    rpm_limit = serializers.IntegerField(
        min_value=1, max_value=MAX_KEY_LIMIT, required=False, allow_null=True, default=None
    )
    tpm_limit = serializers.IntegerField(
        min_value=1, max_value=MAX_KEY_LIMIT, required=False, allow_null=True, default=None
    )


class ApiKeyUpdateSerializer(ApiKeyCreateSerializer):
    """The fields of a key that can change; those left out keep their values."""


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The full key. Shown only once.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


def org_key_id(query: serializers.Serializer[Any], value: uuid.UUID) -> uuid.UUID:
    """A query's ``key``: the id of one of the organisation's keys (``context["org"]``); any
    other id is a 400, not an empty answer."""
    org: Organisation = query.context["org"]
    if not org.api_keys.filter(id=value).exists():
        raise serializers.ValidationError("No API key with this id in this organisation.")
    return value


class DayRangeSerializer(serializers.Serializer[None]):
    """Query parameters for a range of UTC days, both included; a backwards range is refused."""

    start = serializers.DateField(
        required=False, validators=day_validators(), help_text="First UTC day (included)."
    )
    end = serializers.DateField(
        required=False, validators=day_validators(), help_text="Last UTC day (included)."
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise serializers.ValidationError({"start": "The start must not be after the end."})
        return data


class AuditQuerySerializer(DayRangeSerializer):
    action = serializers.CharField(
        required=False, max_length=64, help_text="Events whose action starts with this (key.)."
    )
    actor = serializers.CharField(
        required=False,
        max_length=254,
        help_text="Who acted: an email address, a key's prefix (sk-…) or 'system'.",
    )


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_label", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "data",
            "ip_address",
        ]
        read_only_fields = fields


class WebhookSerializer(serializers.ModelSerializer[WebhookEndpoint]):
    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "events", "created_at"]
        read_only_fields = fields


class WebhookCreateSerializer(serializers.Serializer[None]):
    url = serializers.CharField(max_length=500)
    events = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        default=list,
        help_text="Event types or prefixes to send (deployment., key.revoked); empty: all.",
    )


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(read_only=True, help_text="The signing secret. Shown only once.")

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class WebhookDeliverySerializer(serializers.ModelSerializer[WebhookDelivery]):
    webhook = serializers.UUIDField(source="endpoint_id", read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "webhook",
            "event_type",
            "status",
            "attempts",
            "response_status",
            "error",
            "created_at",
            "next_attempt_at",
            "finished_at",
            "payload",
        ]
        read_only_fields = fields
