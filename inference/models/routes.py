"""Routes (a tenant's public model names with a routing policy) and external endpoints.

A route's ``config`` is validated by ``inference.routing.config`` before it is saved; the gateway
reads routes from its snapshot, never per request. An external endpoint's API key is stored only
encrypted (``inference.routing.secrets``); the plain key lives in gateway memory alone.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from console.models import Organisation, User


class RoutePolicy(models.TextChoices):
    SINGLE = "single", "Single target"
    WEIGHTED = "weighted", "Weighted split (canary, A/B)"
    FALLBACK = "fallback", "Fallback chain"
    CONDITIONAL = "conditional", "Conditional rules"
    AUTO = "auto", "Auto (cheapest model that is good enough)"


class Route(models.Model):
    """A public model name in an org and how requests for it choose a target."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="routes")
    name = models.CharField(max_length=128, help_text="The name clients pass as `model`.")
    description = models.CharField(max_length=200, blank=True)
    policy = models.CharField(max_length=16, choices=RoutePolicy.choices)
    config = models.JSONField(default=dict)
    # Used while a deployment target is scaled to zero and its first replica starts.
    cold_start_fallback = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["org", "name"], name="route_unique_org_name")
        ]

    def __str__(self) -> str:
        return self.name


class ExternalEndpoint(models.Model):
    """An OpenAI-compatible API outside the platform that routes may send requests to."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="external_endpoints"
    )
    name = models.CharField(max_length=63)
    base_url = models.URLField(max_length=300, help_text="Up to and including /v1.")
    model = models.CharField(max_length=128, help_text="The model name the endpoint expects.")
    api_key_encrypted = models.TextField(blank=True)
    api_key_hint = models.CharField(max_length=8, blank=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["org", "name"], name="external_unique_org_name")
        ]

    def __str__(self) -> str:
        return self.name
