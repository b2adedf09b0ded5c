"""The usage ledger: one record per request, uptime of dedicated replicas, and hourly rollups.

Every money column is an integer number of micro-dollars (1 USD = 1,000,000).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from console.models import ApiKey, Organisation


class UsageRecord(models.Model):
    """One served request, with the engine's token counts and its cost at the price in force."""

    request_id = models.CharField(max_length=100, unique=True)
    org = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    route = models.CharField(max_length=200, blank=True, help_text="The model name asked for.")
    target = models.CharField(max_length=200, blank=True)
    deployment_id = models.UUIDField(null=True, blank=True)
    replica_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=200, help_text="The served model that was rated.")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(default=200)
    error_code = models.CharField(
        max_length=40,
        blank=True,
        help_text="Why it failed, in OpenAI's error `code` terms (never the prompt or answer).",
    )
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    cost_micros = models.BigIntegerField(default=0)
    price_id = models.UUIDField(null=True, blank=True, help_text="The price version applied.")
    router_score = models.FloatField(null=True, blank=True)
    router_choice = models.CharField(max_length=100, blank=True)
    baseline_cost_micros = models.BigIntegerField(null=True, blank=True)
    served_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-served_at"]
        indexes = [
            models.Index(fields=["org", "served_at"], name="usage_org_served"),
            # A route's requests, newest first: the request log filtered by the model asked
            # for, a route's page (requests, savings) and the auto router's calibration.
            models.Index(fields=["org", "route", "served_at"], name="usage_org_route_served"),
            # A served model's and a deployment's requests, newest first: the request log's
            # other filters (a deployment's page links to its requests).
            models.Index(fields=["org", "model", "served_at"], name="usage_org_model_served"),
            models.Index(fields=["deployment_id", "served_at"], name="usage_deployment_served"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.cost_micros}µ$"


class UptimeRecord(models.Model):
    """Seconds of a dedicated replica's uptime within one hour, rated per GPU- or replica-second.

    One report (``event_id``) gives a record per hour it covers, and more than one in an hour
    where another price came into force during the report: ``part`` counts them."""

    event_id = models.CharField(max_length=100)
    hour = models.DateTimeField()
    part = models.PositiveSmallIntegerField(
        default=0, help_text="0, or 1, 2 … for the parts after a price change within the hour."
    )
    org = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="uptime_records")
    deployment_id = models.UUIDField()
    replica_id = models.UUIDField()
    model = models.CharField(max_length=200)
    gpus = models.PositiveSmallIntegerField(default=0, help_text="0 for a CPU replica.")
    seconds = models.PositiveIntegerField()
    cost_micros = models.BigIntegerField(default=0)
    price_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-hour"]
        constraints = [
            models.UniqueConstraint(
                fields=["event_id", "hour", "part"], name="uptime_unique_event_hour_part"
            )
        ]
        indexes = [models.Index(fields=["org", "hour"], name="uptime_org_hour")]

    def __str__(self) -> str:
        return f"replica {self.replica_id} {self.seconds}s at {self.hour:%Y-%m-%d %H}:00"


class RollupSource(models.TextChoices):
    TOKENS = "tokens", "Tokens (per request)"
    UPTIME = "uptime", "Dedicated uptime"


class UsageRollup(models.Model):
    """Usage of one org, hour, source, model, route and key.

    The primary key is derived from those dimensions, so recomputing an hour writes the very same
    rows again: a rollup run can be repeated any number of times.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="usage_rollups")
    hour = models.DateTimeField()
    source = models.CharField(max_length=8, choices=RollupSource.choices)
    model = models.CharField(max_length=200)
    route = models.CharField(max_length=200, blank=True)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_rollups"
    )
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    resource_seconds = models.BigIntegerField(
        default=0, help_text="GPU-seconds (or replica-seconds for CPU replicas) of uptime."
    )
    cost_micros = models.BigIntegerField(default=0)
    baseline_cost_micros = models.BigIntegerField(default=0)
    # Requests per latency bucket (billing.rollups.LATENCY_BUCKETS_MS), for p50 and p95.
    latency_histogram = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-hour", "model"]
        indexes = [
            # The month's spend per org and per key (the console, the REST API, the gateways'
            # budget snapshot) is read from this index alone, without visiting the rows.
            models.Index(
                fields=["org", "hour", "api_key", "cost_micros"], name="rollup_org_hour_spend"
            ),
            # The routes and models an org has used (the usage and request log filters) are
            # found by stepping through these from one value to the next.
            models.Index(fields=["org", "route"], name="rollup_org_route"),
            models.Index(fields=["org", "model"], name="rollup_org_model"),
            # Every org's latest hours: the platform's last day, the admin's list.
            models.Index(fields=["hour"], name="rollup_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.org_id} {self.hour:%Y-%m-%d %H}:00 {self.model} {self.cost_micros}µ$"

    @staticmethod
    def key_for(
        *,
        org_id: int,
        hour_iso: str,
        source: str,
        model: str,
        route: str,
        api_key_id: uuid.UUID | str | None,
    ) -> uuid.UUID:
        name = "\x1f".join([str(org_id), hour_iso, source, model, route, str(api_key_id or "")])
        return uuid.uuid5(uuid.NAMESPACE_URL, "rollup:" + name)


class RollupCursor(models.Model):
    """Where the incremental rollup got to: records created before ``created_before`` are in."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    created_before = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"rolled up through {self.created_before}"
