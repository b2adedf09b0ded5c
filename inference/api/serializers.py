from __future__ import annotations

from typing import Any

from rest_framework import serializers

from inference.engine_args import ALLOWED
from inference.models import Deployment, ModelSource, Replica, Runner
from inference.services.deployments import NO_REPLICAS_MESSAGE, NUMBER_RANGES


class ReplicaSerializer(serializers.ModelSerializer[Replica]):
    class Meta:
        model = Replica
        fields = [
            "id",
            "state",
            "progress",
            "host",
            "port",
            "gpus",
            "started_at",
            "ready_at",
            "stopped_at",
            "restart_count",
            "last_error",
            "metrics",
        ]
        read_only_fields = fields


class DeploymentSerializer(serializers.ModelSerializer[Deployment]):
    deleting = serializers.BooleanField(source="is_deleting", read_only=True)
    replicas = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "served_model_name",
            "source",
            "model",
            "revision",
            "engine",
            "runner",
            "engine_args",
            "gpus_per_replica",
            "min_replicas",
            "max_replicas",
            "desired_replicas",
            "target_concurrency",
            "scale_down_delay_s",
            "paused",
            "state",
            "state_reason",
            "deleting",
            "created_at",
            "updated_at",
            "replicas",
        ]
        read_only_fields = fields

    def get_replicas(self, deployment: Deployment) -> list[dict[str, Any]]:
        replicas = self.context.get("replicas")
        if replicas is None:
            replicas = getattr(deployment, "live_replicas", [])
        return list(ReplicaSerializer(replicas, many=True).data)


ENGINE_ARGS_HELP = "Allowed keys: " + ", ".join(sorted(ALLOWED)) + "."


def _ranged(field: str, **kwargs: Any) -> serializers.IntegerField:
    """An optional whole number with the range the deployment service allows for ``field``."""
    low, high = NUMBER_RANGES[field]
    return serializers.IntegerField(required=False, min_value=low, max_value=high, **kwargs)


class DeploymentWriteSerializer(serializers.Serializer[None]):
    """Types only; the service checks values, names, paths and quotas."""

    name = serializers.CharField(max_length=63)
    served_model_name = serializers.CharField(max_length=128, required=False, allow_blank=True)
    source = serializers.ChoiceField(choices=ModelSource.choices)  # type: ignore[assignment]
    model = serializers.CharField(max_length=500)
    revision = serializers.CharField(max_length=100, required=False, allow_blank=True)
    runner = serializers.ChoiceField(choices=Runner.choices, required=False)
    engine_args = serializers.DictField(required=False, help_text=ENGINE_ARGS_HELP)
    gpus_per_replica = _ranged("gpus_per_replica")
    min_replicas = _ranged("min_replicas")
    max_replicas = _ranged(
        "max_replicas",
        error_messages={"min_value": NO_REPLICAS_MESSAGE.format(field="max_replicas")},
    )
    target_concurrency = _ranged("target_concurrency")
    scale_down_delay_s = _ranged("scale_down_delay_s")


class ScaleSerializer(serializers.Serializer[None]):
    replicas = _ranged(
        "max_replicas",
        help_text="Pin the count: the same as min_replicas = max_replicas.",
        error_messages={"min_value": NO_REPLICAS_MESSAGE.format(field="replicas")},
    )
    min_replicas = _ranged("min_replicas")
    max_replicas = _ranged(
        "max_replicas",
        error_messages={"min_value": NO_REPLICAS_MESSAGE.format(field="max_replicas")},
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "replicas" in attrs:
            if "min_replicas" in attrs or "max_replicas" in attrs:
                raise serializers.ValidationError(
                    "Give either replicas, or min_replicas and max_replicas."
                )
            return {"min_replicas": attrs["replicas"], "max_replicas": attrs["replicas"]}
        missing = {"min_replicas", "max_replicas"} - set(attrs)
        if missing:
            raise serializers.ValidationError(
                {field: "Required unless replicas is given." for field in sorted(missing)}
            )
        return attrs


class LogQuerySerializer(serializers.Serializer[None]):
    replica = serializers.UUIDField(required=False, help_text="A replica id; default the newest.")
    lines = serializers.IntegerField(
        required=False, default=100, min_value=1, max_value=1000, help_text="How many lines."
    )


class LogTailSerializer(serializers.Serializer[None]):
    replica = serializers.UUIDField(allow_null=True)
    lines = serializers.ListField(child=serializers.CharField())
    note = serializers.CharField(
        allow_blank=True,
        help_text="Where the log is, when the platform cannot read it (a Kubernetes pod).",
    )
