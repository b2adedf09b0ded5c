from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from console.models import AuditEvent
from console.snapshot import snapshot_version
from inference.models import Deployment, Replica, ReplicaState, Route
from inference.services.deployments import (
    deployment_create,
    deployment_delete,
    deployment_pause,
    deployment_resume,
    deployment_scale,
    deployment_signal_demand,
    deployment_update,
)
from tests.deployments.factories import make_deployment


def errors_of(call, **kwargs):  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as caught:
        call(**kwargs)
    return caught.value.message_dict


def test_create_records_audit_and_tells_gateways(
    org, owner, model_root, django_capture_on_commit_callbacks
):
    before = snapshot_version()
    with django_capture_on_commit_callbacks(execute=True):
        deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    assert deployment.desired_replicas == 1
    assert deployment.state == "pending"
    assert snapshot_version() > before
    event = AuditEvent.objects.get(action="deployment.created")
    assert event.target_id == str(deployment.pk)
    assert event.actor == owner


def test_served_name_defaults_to_the_name(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root, served_model_name="")
    assert deployment.served_model_name == "tiny"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "Not A Slug"}, "name"),
        ({"served_model_name": "bad name with spaces"}, "served_model_name"),
        ({"source": "ftp"}, "source"),
        ({"source": "huggingface", "model": "no-slash"}, "model"),
        ({"source": "huggingface", "model": "org/m", "revision": "; rm -rf /"}, "revision"),
        ({"model": "/etc"}, "model"),
        ({"model": "relative/path"}, "model"),
        ({"engine_args": {"max_model_len": "big"}}, "engine_args"),
        ({"engine_args": {"tensor_parallel_size": 2}}, "engine_args"),
        ({"gpus_per_replica": 9}, "gpus_per_replica"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"target_concurrency": 0}, "target_concurrency"),
        ({"scale_down_delay_s": -5}, "scale_down_delay_s"),
    ],
)
def test_bad_input_names_the_field_and_creates_nothing(org, owner, model_root, overrides, field):
    errors = errors_of(make_deployment, org=org, actor=owner, model_root=model_root, **overrides)
    assert field in errors
    assert not Deployment.objects.exists()
    assert not AuditEvent.objects.filter(action="deployment.created").exists()


@pytest.mark.parametrize("gpus", [0, 1])
def test_tensor_parallel_size_must_equal_gpus_per_replica(org, owner, model_root, gpus):
    # A CPU replica (no GPUs) spreads over nothing: any tensor_parallel_size is a mistake.
    errors = errors_of(
        make_deployment,
        org=org,
        actor=owner,
        model_root=model_root,
        gpus_per_replica=gpus,
        engine_args={"tensor_parallel_size": 2},
    )
    assert errors["engine_args"] == [
        f"tensor_parallel_size (2) must equal gpus_per_replica ({gpus})."
    ]
    deployment = make_deployment(
        org=org,
        actor=owner,
        model_root=model_root,
        gpus_per_replica=2,
        engine_args={"tensor_parallel_size": 2},
    )
    assert deployment.engine_args == {"tensor_parallel_size": 2}


def test_path_tricks_cannot_leave_the_model_roots(org, owner, model_root):
    errors = errors_of(
        make_deployment,
        org=org,
        actor=owner,
        model_root=model_root,
        model=str(model_root / ".." / ".." / "etc"),
    )
    assert "model" in errors


def test_huggingface_source_with_revision(org, owner, model_root):
    deployment = make_deployment(
        org=org,
        actor=owner,
        model_root=model_root,
        source="huggingface",
        model="Qwen/Qwen2.5-0.5B-Instruct",
        revision="main",
    )
    assert deployment.revision == "main"


def test_runner_in_engine_args_becomes_the_runner_field(org, owner, model_root):
    deployment = make_deployment(
        org=org, actor=owner, model_root=model_root, engine_args={"runner": "pooling"}
    )
    assert deployment.runner == "pooling"
    assert "runner" not in deployment.engine_args
    # Given the same way twice is fine, and so is changing it through the engine arguments.
    deployment = deployment_update(
        deployment=deployment, actor=owner, runner="pooling", engine_args={"runner": "pooling"}
    )
    deployment = deployment_update(
        deployment=deployment, actor=owner, engine_args={"runner": "generate"}
    )
    assert deployment.runner == "generate"


def test_a_runner_that_the_engine_arguments_contradict_is_refused(org, owner, model_root):
    errors = errors_of(
        make_deployment,
        org=org,
        actor=owner,
        model_root=model_root,
        runner="generate",
        engine_args={"runner": "pooling"},
    )
    message = "runner is “generate” but engine_args sets runner “pooling”; set it once."
    assert errors["runner"] == [message]
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    errors = errors_of(
        deployment_update,
        deployment=deployment,
        actor=owner,
        runner="generate",
        engine_args={"runner": "pooling"},
    )
    assert errors["runner"] == [message]


def test_names_are_unique_in_an_org_but_not_across_orgs(org, owner, outsider, model_root):
    make_deployment(org=org, actor=owner, model_root=model_root)
    errors = errors_of(
        make_deployment, org=org, actor=owner, model_root=model_root, served_model_name="x"
    )
    assert "name" in errors
    errors = errors_of(make_deployment, org=org, actor=owner, model_root=model_root, name="other")
    assert "served_model_name" in errors
    other_org = outsider.memberships.get().org
    make_deployment(org=other_org, actor=outsider, model_root=model_root)


def test_replica_quota_counts_every_deployment_at_its_maximum(org, owner, model_root):
    org.max_replicas = 3
    org.save()
    make_deployment(org=org, actor=owner, model_root=model_root, max_replicas=2)
    errors = errors_of(
        make_deployment,
        org=org,
        actor=owner,
        model_root=model_root,
        name="second",
        served_model_name="second",
        max_replicas=2,
    )
    assert "at most 1 are left" in errors["max_replicas"][0]


def test_gpu_quota_counts_gpus_per_replica_times_replicas(org, owner, model_root):
    org.max_gpus = 4
    org.save()
    errors = errors_of(
        make_deployment,
        org=org,
        actor=owner,
        model_root=model_root,
        gpus_per_replica=2,
        engine_args={"tensor_parallel_size": 2},
        max_replicas=3,
    )
    assert "4 GPUs in all" in errors["gpus_per_replica"][0]


def test_over_a_lowered_quota_only_changes_that_add_to_the_use_are_refused(org, owner, model_root):
    org.max_replicas, org.max_gpus = 8, 8
    org.save()
    deployment = make_deployment(
        org=org, actor=owner, model_root=model_root, gpus_per_replica=1, max_replicas=4
    )
    org.max_replicas, org.max_gpus = 2, 2  # staff lower the quotas under what it uses
    org.save()
    # Fixing the engine arguments, or shrinking, keeps the org's use or lowers it.
    deployment = deployment_update(
        deployment=deployment, actor=owner, engine_args={"max_model_len": 256}
    )
    deployment = deployment_scale(
        deployment=deployment, actor=owner, min_replicas=1, max_replicas=3
    )
    assert (deployment.max_replicas, deployment.engine_args) == (3, {"max_model_len": 256})
    # Growing is refused while the org is over its quota, on either count.
    errors = errors_of(
        deployment_scale, deployment=deployment, actor=owner, min_replicas=1, max_replicas=4
    )
    assert "may run 2 replicas in all" in errors["max_replicas"][0]
    errors = errors_of(
        deployment_update, deployment=deployment, actor=owner, max_replicas=1, gpus_per_replica=4
    )
    assert "may use 2 GPUs in all" in errors["gpus_per_replica"][0]


def test_editing_the_model_replaces_replicas_but_scaling_does_not(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    assert deployment.spec_version == 1
    deployment = deployment_update(
        deployment=deployment, actor=owner, engine_args={"max_model_len": 256}
    )
    assert deployment.spec_version == 2
    deployment = deployment_update(deployment=deployment, actor=owner, target_concurrency=4)
    assert deployment.spec_version == 2
    deployment = deployment_scale(
        deployment=deployment, actor=owner, min_replicas=2, max_replicas=2
    )
    assert (deployment.spec_version, deployment.desired_replicas) == (2, 2)
    actions = list(
        AuditEvent.objects.filter(action__startswith="deployment.").values_list("action", flat=True)
    )
    assert sorted(actions) == [
        "deployment.created",
        "deployment.scaled",
        "deployment.updated",
        "deployment.updated",
    ]


def test_update_refuses_unknown_fields_and_changes_nothing(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    errors = errors_of(deployment_update, deployment=deployment, actor=owner, org_id=5)
    assert "org_id" in errors
    errors = errors_of(deployment_update, deployment=deployment, actor=owner, max_replicas=0)
    assert "max_replicas" in errors
    deployment.refresh_from_db()
    assert deployment.max_replicas == 2


def test_scale_within_quota(org, owner, model_root):
    org.max_replicas = 2
    org.save()
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    errors = errors_of(
        deployment_scale, deployment=deployment, actor=owner, min_replicas=3, max_replicas=3
    )
    assert "max_replicas" in errors
    deployment = deployment_scale(
        deployment=deployment, actor=owner, min_replicas=0, max_replicas=1
    )
    assert (deployment.min_replicas, deployment.max_replicas) == (0, 1)


def test_a_deployment_allowed_no_replicas_is_refused_naming_scale_to_zero_and_pause(
    org, owner, model_root
):
    # Nothing would ever start it, yet it would look asleep until the next request.
    errors = errors_of(
        make_deployment, org=org, actor=owner, model_root=model_root, min_replicas=0, max_replicas=0
    )
    (message,) = errors["max_replicas"]
    assert "at least 1" in message and "min_replicas 0" in message and "Pause" in message
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    for call, kwargs in [(deployment_scale, {"min_replicas": 0}), (deployment_update, {})]:
        errors = errors_of(call, deployment=deployment, actor=owner, max_replicas=0, **kwargs)
        assert errors["max_replicas"] == [message]
    deployment.refresh_from_db()
    assert deployment.max_replicas == 2


def test_rows_allowed_no_replicas_are_migrated_to_paused_with_one(org, owner, model_root):
    from django.apps import apps

    migration = importlib.import_module("inference.migrations.0006_deployment_max_replicas_zero")
    pinned = make_deployment(org=org, actor=owner, model_root=model_root, min_replicas=0)
    Deployment.objects.filter(pk=pinned.pk).update(max_replicas=0, desired_replicas=0)
    other = make_deployment(
        org=org, actor=owner, model_root=model_root, name="other", served_model_name="other"
    )
    migration.pause_deployments_allowed_no_replicas(apps, None)
    pinned.refresh_from_db()
    assert (pinned.paused, pinned.min_replicas, pinned.max_replicas) == (True, 0, 1)
    other.refresh_from_db()
    assert (other.paused, other.max_replicas) == (False, 2)


def test_pause_and_resume(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    deployment = deployment_pause(deployment=deployment, actor=owner)
    assert deployment.paused
    deployment = deployment_resume(deployment=deployment, actor=owner)
    assert not deployment.paused
    assert deployment.desired_replicas == deployment.min_replicas


def test_changes_clear_a_failure_so_the_orchestrator_retries(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    failed = Replica.objects.create(deployment=deployment, state=ReplicaState.FAILED)
    deployment_scale(deployment=deployment, actor=owner, min_replicas=1, max_replicas=1)
    failed.refresh_from_db()
    assert failed.state == ReplicaState.STOPPED


def test_resume_clears_the_failure_of_a_deployment_that_is_not_paused(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    failed = Replica.objects.create(
        deployment=deployment, state=ReplicaState.FAILED, spec_version=deployment.spec_version
    )
    Deployment.objects.filter(pk=deployment.pk).update(state="failed")
    before = deployment.updated_at
    deployment = deployment_resume(deployment=deployment, actor=owner)
    failed.refresh_from_db()
    assert failed.state == ReplicaState.STOPPED
    assert deployment.updated_at > before  # the orchestrator wakes at once
    assert AuditEvent.objects.filter(action="deployment.resumed").count() == 1
    # With nothing to resume or retry it is a no-op, and says nothing.
    deployment_resume(deployment=deployment, actor=owner)
    assert AuditEvent.objects.filter(action="deployment.resumed").count() == 1


def test_delete_frees_the_names_and_leaves_stopping_to_the_orchestrator(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    deployment_delete(deployment=deployment, actor=owner)
    deployment.refresh_from_db()
    assert deployment.deleted_at is not None
    # A second delete changes and records nothing more.
    deployment_delete(deployment=deployment, actor=owner)
    assert Deployment.objects.get(pk=deployment.pk).deleted_at == deployment.deleted_at
    assert AuditEvent.objects.filter(action="deployment.deleted").count() == 1
    with pytest.raises(ValidationError, match="being deleted"):
        deployment_pause(deployment=deployment, actor=owner)
    again = make_deployment(org=org, actor=owner, model_root=model_root)
    assert again.pk != deployment.pk


def test_demand_signal_is_one_cheap_conditional_update(
    org, owner, model_root, django_assert_num_queries
):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    with django_assert_num_queries(1):
        deployment_signal_demand(deployment_id=deployment.pk)
    deployment.refresh_from_db()
    first = deployment.demand_at
    assert first is not None
    # Within a second, further signals change nothing (a burst costs no writes).
    deployment_signal_demand(deployment_id=deployment.pk)
    deployment.refresh_from_db()
    assert deployment.demand_at == first
    Deployment.objects.filter(pk=deployment.pk).update(
        demand_at=timezone.now() - timedelta(seconds=5)
    )
    deployment_signal_demand(deployment_id=deployment.pk)
    deployment.refresh_from_db()
    assert deployment.demand_at > first - timedelta(seconds=5)


def test_demand_signal_ignores_paused_and_unknown_deployments(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    deployment_pause(deployment=deployment, actor=owner)
    deployment_signal_demand(deployment_id=deployment.pk)
    deployment.refresh_from_db()
    assert deployment.demand_at is None
    deployment_signal_demand(deployment_id="00000000-0000-0000-0000-000000000000")


def test_create_needs_keyword_arguments(org, owner):
    with pytest.raises(TypeError):
        deployment_create(org, owner)  # type: ignore[misc]


def _route_to(org, owner, name: str, target: str):  # type: ignore[no-untyped-def]
    from inference.services.routes import route_create

    return route_create(org=org, actor=owner, name=name, policy="single", config={"target": target})


def test_a_deployment_routes_send_to_cannot_be_renamed_or_deleted(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    _route_to(org, owner, "chat", "deployment:tiny")
    from inference.services.routes import route_create

    # Through another route as well: "outer" reaches tiny only through "chat".
    route_create(
        org=org,
        actor=owner,
        name="outer",
        policy="fallback",
        config={"targets": ["route:chat"]},
    )
    events = AuditEvent.objects.count()
    errors = errors_of(deployment_update, deployment=deployment, actor=owner, name="tiny-2")
    assert errors["name"] == [
        "Route(s) chat send requests to “tiny”; point them elsewhere before renaming it."
    ]
    with pytest.raises(ValidationError, match=r"Route\(s\) chat send requests to “tiny”"):
        deployment_delete(deployment=deployment, actor=owner)
    deployment.refresh_from_db()
    assert deployment.name == "tiny" and deployment.deleted_at is None
    assert AuditEvent.objects.count() == events
    # Other edits still go through, and once no route sends to it, it may go.
    deployment_update(deployment=deployment, actor=owner, max_replicas=3)
    Route.objects.filter(org=org).delete()
    deployment_update(deployment=deployment, actor=owner, name="tiny-2")
    deployment_delete(deployment=deployment, actor=owner)


def test_changing_the_runner_under_a_route_that_mixes_kinds_is_refused(org, owner, model_root):
    chat = make_deployment(org=org, actor=owner, model_root=model_root)
    other = make_deployment(
        org=org, actor=owner, model_root=model_root, name="other", served_model_name="other"
    )
    from inference.services.routes import route_create

    route_create(
        org=org,
        actor=owner,
        name="chat",
        policy="fallback",
        config={"targets": ["deployment:tiny", "deployment:other"]},
    )
    errors = errors_of(deployment_update, deployment=other, actor=owner, runner="pooling")
    assert errors["runner"] == [
        "Route 'chat' sends requests to this deployment: The route sends to text generation "
        "deployments (tiny) and to embedding deployments (other); a route serves one kind of "
        "request."
    ]
    other.refresh_from_db()
    assert other.runner == "generate" and other.spec_version == 1
    # A deployment no route sends to changes kind freely.
    deployment_update(deployment=chat, actor=owner, max_replicas=2)
    third = make_deployment(
        org=org, actor=owner, model_root=model_root, name="third", served_model_name="third"
    )
    assert deployment_update(deployment=third, actor=owner, runner="pooling").runner == "pooling"


def test_a_served_model_name_cannot_take_a_routes_name(org, owner, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    _route_to(org, owner, "chat", "deployment:tiny")
    errors = errors_of(
        deployment_update, deployment=deployment, actor=owner, served_model_name="chat"
    )
    assert errors["served_model_name"] == ["A route is named “chat”; choose another model name."]
    with pytest.raises(ValidationError, match="A route is named “chat”"):
        make_deployment(
            org=org, actor=owner, model_root=model_root, name="two", served_model_name="chat"
        )
    deployment.refresh_from_db()
    assert deployment.served_model_name == "tiny-llama"
