from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from billing.forms import MAX_RANGE_DAYS
from billing.selectors import DIMENSIONS
from billing.services.accounts import MAX_BUDGET_MICROS
from console.api.serializers import org_key_id
from console.days import day_validators


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateField(
        required=False,
        validators=day_validators(),
        help_text="First UTC day (default: 29 days ago).",
    )
    end = serializers.DateField(
        required=False,
        validators=day_validators(),
        help_text="Last UTC day, inclusive (default: today).",
    )
    group_by = serializers.CharField(
        required=False,
        default="day",
        help_text="Comma-separated dimensions among day, model, route and key.",
    )
    key = serializers.UUIDField(required=False, help_text="Only this API key's usage.")
    route = serializers.CharField(required=False, max_length=200)
    model = serializers.CharField(required=False, max_length=200)

    def validate_key(self, value: uuid.UUID) -> uuid.UUID:
        return org_key_id(self, value)

    def validate_group_by(self, value: str) -> list[str]:
        dims = [d.strip() for d in value.split(",") if d.strip()]
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown:
            raise serializers.ValidationError(
                f"Unknown dimension(s) {', '.join(unknown)}; use {', '.join(DIMENSIONS)}."
            )
        return dims

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("end") or timezone.now().date()
        start = attrs.get("start") or end - timedelta(days=29)
        if start > end:
            raise serializers.ValidationError({"start": "The start must not be after the end."})
        if (end - start).days >= MAX_RANGE_DAYS:
            raise serializers.ValidationError({"start": f"Choose at most {MAX_RANGE_DAYS} days."})
        attrs["start"], attrs["end"] = start, end
        return attrs


class UsageRowSerializer(serializers.Serializer):
    day = serializers.DateField(required=False, allow_null=True)
    model = serializers.CharField(required=False)
    route = serializers.CharField(required=False)
    key_id = serializers.UUIDField(required=False, allow_null=True)
    key_name = serializers.CharField(required=False)
    requests = serializers.IntegerField()
    failed_requests = serializers.IntegerField(help_text="Requests answered with 4xx or 5xx.")
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    resource_seconds = serializers.IntegerField(help_text="GPU-seconds of dedicated uptime.")
    cost_micros = serializers.IntegerField(help_text="Cost in micro-dollars (integer).")
    cost_usd = serializers.CharField(help_text="The same cost as an exact decimal string.")
    baseline_cost_micros = serializers.IntegerField(
        help_text="What the requests would have cost at their routes' strongest targets "
        "(a request not sent cheaper counts at its own cost); minus cost_micros, the savings."
    )
    latency_p50_ms = serializers.IntegerField(allow_null=True)
    latency_p95_ms = serializers.IntegerField(allow_null=True)


class UsageResponseSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    group_by = serializers.ListField(child=serializers.CharField())
    rows_count = serializers.IntegerField(help_text="The rows of every page.")
    next = serializers.URLField(
        allow_null=True, help_text="The next page of rows (null after the last)."
    )
    previous = serializers.URLField(
        allow_null=True, help_text="The previous page of rows (null on the first)."
    )
    rows = UsageRowSerializer(
        many=True, help_text="In the order of the dimensions (usage without a key first)."
    )
    totals = UsageRowSerializer(help_text="Of every page.")


class BudgetSerializer(serializers.Serializer):
    amount_micros = serializers.IntegerField(
        min_value=1,
        max_value=MAX_BUDGET_MICROS,
        allow_null=True,
        help_text="Monthly budget in micro-dollars; null removes it.",
    )
    hard_limit = serializers.BooleanField(
        default=True, help_text="Refuse requests (402) once the budget is reached."
    )


BILLING_ONLY = "Present only to those who may see billing (`billing.view`)."


class KeySpendSerializer(serializers.Serializer):
    key_id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    month_to_date_micros = serializers.IntegerField()
    budget_micros = serializers.IntegerField(
        allow_null=True, required=False, help_text=f"The key's monthly budget. {BILLING_ONLY}"
    )


class SpendSerializer(serializers.Serializer):
    period_start = serializers.DateTimeField()
    plan = serializers.CharField(required=False, help_text=BILLING_ONLY)
    month_to_date_micros = serializers.IntegerField()
    forecast_micros = serializers.IntegerField(required=False, help_text=BILLING_ONLY)
    limit_micros = serializers.IntegerField(
        allow_null=True,
        required=False,
        help_text=f"The hard cap this month (null: none). {BILLING_ONLY}",
    )
    limit_reason = serializers.CharField(allow_blank=True, required=False, help_text=BILLING_ONLY)
    budget = BudgetSerializer(allow_null=True, required=False, help_text=BILLING_ONLY)
    keys_count = serializers.IntegerField(help_text="The organisation's active keys, all pages.")
    next = serializers.URLField(
        allow_null=True, help_text="The next page of keys (null after the last)."
    )
    previous = serializers.URLField(
        allow_null=True, help_text="The previous page of keys (null on the first)."
    )
    keys = KeySpendSerializer(
        many=True, help_text="A page of the active keys, newest first (`limit`, `offset`)."
    )
