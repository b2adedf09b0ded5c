"""A route's own scorer head, fitted on an outcome file the tenant uploaded.

The uploaded file is kept (it is small and the tenant's own) until the fit is done; the fitted
head is a small JSON document (``inference.scorer.head.HeadWeights``) the gateway loads for that
route alone. ``reference_scores`` are the fitted head's scores of the file's prompts: the
distribution a threshold is calibrated on until the route has traffic of its own.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from console.models import Organisation, User
from inference.models.routes import Route


class ScorerState(models.TextChoices):
    PENDING = "pending", "Fitting"
    READY = "ready", "In use"
    FAILED = "failed", "Failed"


class RouteScorer(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="route_scorers")
    route = models.OneToOneField(Route, on_delete=models.CASCADE, related_name="scorer")
    state = models.CharField(max_length=8, choices=ScorerState.choices, default="pending")
    file_name = models.CharField(max_length=200, blank=True)
    rows = models.PositiveIntegerField(default=0)
    weak_model = models.CharField(max_length=200, blank=True)
    strong_model = models.CharField(max_length=200, blank=True)
    upload = models.TextField(blank=True, help_text="The outcome file, until it is fitted.")
    head_json = models.TextField(blank=True)
    reference_scores = models.JSONField(default=list, blank=True)
    error = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    fitted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"scorer of {self.route_id} ({self.state})"
