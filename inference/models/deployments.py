"""Deployments (what a tenant asked to run) and replicas (what the orchestrator runs for it).

A deployment is desired state, written by services on behalf of people and programs. Replicas are
observed state, written by the orchestrator. Gateways read ready replicas from their snapshot,
which ``console.snapshot.snapshot_bump()`` tells them to refresh.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from console.models import Organisation, User


class ModelSource(models.TextChoices):
    HUGGINGFACE = "huggingface", "Hugging Face repository"
    LOCAL = "local", "Local directory"


class Runner(models.TextChoices):
    GENERATE = "generate", "Text generation (chat and completions)"
    POOLING = "pooling", "Pooling (embeddings)"


class DeploymentState(models.TextChoices):
    PENDING = "pending", "Pending"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    DEGRADED = "degraded", "Degraded"
    IDLE = "idle", "Scaled to zero"
    PAUSED = "paused", "Paused"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"


class ReplicaState(models.TextChoices):
    PENDING = "pending", "Pending"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


# Replicas in these states hold (or are about to hold) a process and a port.
LIVE_REPLICA_STATES = (
    ReplicaState.PENDING,
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.DRAINING,
)


def reason_headline(reason: str) -> str:
    """A state reason's first line (the rest, if any, is the engine's last log lines)."""
    return (reason.strip().splitlines() or [""])[0]


class Deployment(models.Model):
    """One model served under one name in one org, with its scaling policy."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=63)
    served_model_name = models.CharField(
        max_length=128, help_text="The name clients pass as `model`."
    )
    source = models.CharField(max_length=16, choices=ModelSource.choices)
    model = models.CharField(
        max_length=500, help_text="A Hugging Face repository id, or an absolute local directory."
    )
    revision = models.CharField(max_length=100, blank=True)
    engine = models.CharField(max_length=16, default="vllm")
    runner = models.CharField(max_length=16, choices=Runner.choices, default=Runner.GENERATE)
    engine_args = models.JSONField(default=dict, blank=True)
    gpus_per_replica = models.PositiveSmallIntegerField(default=1)
    min_replicas = models.PositiveSmallIntegerField(default=1)
    max_replicas = models.PositiveSmallIntegerField(default=1)
    desired_replicas = models.PositiveSmallIntegerField(default=0)
    target_concurrency = models.PositiveIntegerField(default=8)
    scale_down_delay_s = models.PositiveIntegerField(default=300)
    paused = models.BooleanField(default=False)
    state = models.CharField(
        max_length=16, choices=DeploymentState.choices, default=DeploymentState.PENDING
    )
    state_reason = models.TextField(blank=True)
    # Written by gateways when a request finds no ready replica; starts one from zero.
    demand_at = models.DateTimeField(null=True, blank=True)
    # Since when measured load has allowed fewer replicas (the scale-down delay counts from it).
    low_load_since = models.DateTimeField(null=True, blank=True)
    # Bumped by every change that needs new processes (model, engine arguments, GPUs);
    # replicas started for an older version are replaced.
    spec_version = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "name"],
                condition=Q(deleted_at__isnull=True),
                name="deployment_unique_org_name",
            ),
            models.UniqueConstraint(
                fields=["org", "served_model_name"],
                condition=Q(deleted_at__isnull=True),
                name="deployment_unique_org_served_name",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def state_summary(self) -> str:
        """The state reason's first line: what happened and why, without the log lines."""
        return reason_headline(self.state_reason)

    @property
    def is_deleting(self) -> bool:
        return self.deleted_at is not None


class Replica(models.Model):
    """One running engine server for a deployment."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    backend = models.CharField(max_length=16, default="local")
    # What the backend needs to find the replica again (a process id, a pod name): opaque here.
    handle = models.CharField(max_length=200, blank=True)
    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    gpus = models.JSONField(default=list, blank=True)
    spec_version = models.PositiveIntegerField(default=1)
    state = models.CharField(
        max_length=16, choices=ReplicaState.choices, default=ReplicaState.PENDING
    )
    # Start-up phase read from the engine's log: launching, downloading, loading, warming up.
    progress = models.CharField(max_length=32, blank=True)
    log_path = models.CharField(max_length=500, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Uptime up to this moment has been handed to the ledger (dedicated per-second billing).
    uptime_reported_until = models.DateTimeField(null=True, blank=True)
    restart_count = models.PositiveIntegerField(default=0)
    # Crashes since the replica was last ready; the deployment fails when it reaches the limit.
    crash_streak = models.PositiveIntegerField(default=0)
    next_start_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # The latest reading of the engine's /metrics (requests running and waiting, KV cache, rates).
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["state"], name="replica_state_idx")]

    def __str__(self) -> str:
        return f"{self.deployment.name} replica {str(self.id)[:8]}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_REPLICA_STATES
