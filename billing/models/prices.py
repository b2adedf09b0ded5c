"""Prices and plans. Staff edit both in the Django admin.

Prices are versioned: a change is a new row with a later ``effective_from``, and a usage record is
rated at the row in force when the request was served. Rows that are already in force are never
edited, so yesterday's invoice can always be recomputed.
"""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from console.models import Organisation


class PriceUnit(models.TextChoices):
    TOKENS = "tokens", "Tokens (per million)"
    GPU_SECOND = "gpu_second", "GPU-seconds of replica uptime (dedicated)"
    REPLICA_SECOND = "replica_second", "Replica-seconds of uptime (dedicated, CPU)"


class Price(models.Model):
    """One version of a price for a model or a deployment, in integer micro-dollars.

    Scope, most specific first: a deployment (``deployment_id``), an org's model, the platform's
    model (``org`` empty), and the platform fallback (``org`` and ``model`` empty) that rates any
    model without a price of its own.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        Organisation,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="prices",
        help_text="Empty for the platform's price; set for a price negotiated with one org.",
    )
    model = models.CharField(
        max_length=200,
        blank=True,
        help_text="The served model name. Empty (with no org and no deployment) is the fallback.",
    )
    # A plain UUID, not a foreign key: billing does not depend on the inference app.
    deployment_id = models.UUIDField(
        null=True, blank=True, help_text="Set to price one deployment (e.g. dedicated hosting)."
    )
    unit = models.CharField(max_length=16, choices=PriceUnit.choices, default=PriceUnit.TOKENS)
    input_micros_per_million = models.BigIntegerField(
        default=0, help_text="Micro-dollars per million input (prompt) tokens."
    )
    output_micros_per_million = models.BigIntegerField(
        default=0, help_text="Micro-dollars per million output (completion) tokens."
    )
    cached_input_micros_per_million = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Micro-dollars per million cached input tokens; empty means the input price.",
    )
    micros_per_unit_hour = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="For GPU-second and replica-second prices: micro-dollars per GPU-hour or "
        "replica-hour, charged by the second.",
    )
    effective_from = models.DateTimeField(default=timezone.now, db_index=True)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(input_micros_per_million__gte=0)
                & models.Q(output_micros_per_million__gte=0)
                & (
                    models.Q(cached_input_micros_per_million__isnull=True)
                    | models.Q(cached_input_micros_per_million__gte=0)
                )
                & (
                    models.Q(micros_per_unit_hour__isnull=True)
                    | models.Q(micros_per_unit_hour__gte=0)
                ),
                name="price_amounts_not_negative",
            )
        ]

    def __str__(self) -> str:
        scope = self.model or "fallback"
        if self.deployment_id:
            scope = f"deployment {self.deployment_id}"
        if self.org_id:
            scope = f"{scope} for org {self.org_id}"
        return f"{scope} from {self.effective_from:%Y-%m-%d %H:%M}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.unit == PriceUnit.TOKENS:
            if self.micros_per_unit_hour is not None:
                errors["micros_per_unit_hour"] = "Token prices are set per million tokens."
        else:
            if self.micros_per_unit_hour is None:
                errors["micros_per_unit_hour"] = "Set the price per GPU-hour or replica-hour."
            if not self.deployment_id and not self.model:
                errors["deployment_id"] = "Uptime prices apply to a deployment or a model."
        if self.deployment_id and self.org_id is None:
            errors["org"] = "A deployment's price belongs to the org that owns the deployment."
        if self.org_id is not None and not self.model and not self.deployment_id:
            errors["model"] = "An org's price names a model or a deployment."
        if errors:
            raise ValidationError(errors)


class PlanKind(models.TextChoices):
    FREE = "free", "Free (monthly credit, then refused)"
    PAYG = "payg", "Pay as you go (payment method required)"


class Plan(models.Model):
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=PlanKind.choices)
    monthly_credit_micros = models.BigIntegerField(
        default=0,
        help_text="Free plan: usage up to this many micro-dollars a month, then requests get 402.",
    )
    requires_payment_method = models.BooleanField(default=False)
    is_default = models.BooleanField(
        default=False, help_text="The plan a new organisation starts on."
    )
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["kind", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(monthly_credit_micros__gte=0), name="plan_credit_not_negative"
            ),
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="plan_single_default",
            ),
        ]

    def __str__(self) -> str:
        return self.name
