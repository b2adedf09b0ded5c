"""A suspended organisation keeps and may cut what it runs, but cannot start or add replicas."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from console.models import AuditEvent
from console.services.orgs import OrgSuspendedError, org_reactivate, org_suspend
from inference.models import Deployment, Replica, ReplicaState
from inference.orchestrator.scaling import deployment_desired_replicas
from inference.services.deployments import (
    deployment_delete,
    deployment_pause,
    deployment_resume,
    deployment_scale,
    deployment_signal_demand,
    deployment_update,
)
from tests.deployments.factories import make_deployment
from tests.deployments.test_api import api, body
from tests.deployments.test_views import form_data

SUSPENDED = "This organisation is suspended: unpaid invoices."


@pytest.fixture
def running(org, owner, model_root) -> Deployment:  # type: ignore[no-untyped-def]
    """A deployment of ``org`` with replicas wanted (1 to 2 of 1 GPU), made before the org was
    suspended."""
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    org_suspend(org=org, reason="unpaid invoices")
    deployment.refresh_from_db()
    return deployment


def _deployment_events() -> list[str]:
    """The deployments' audit events, oldest first."""
    events = AuditEvent.objects.filter(action__startswith="deployment.").order_by("created_at")
    return list(events.values_list("action", flat=True))


def _settings(deployment: Deployment) -> tuple[object, ...]:
    deployment.refresh_from_db()
    return (
        deployment.min_replicas,
        deployment.max_replicas,
        deployment.desired_replicas,
        deployment.gpus_per_replica,
        deployment.engine_args,
        deployment.spec_version,
        deployment.paused,
        deployment.updated_at,
    )


# Services


def test_no_deployment_can_be_created(org, owner, model_root):
    org_suspend(org=org, reason="unpaid invoices")
    with pytest.raises(OrgSuspendedError) as caught:
        make_deployment(org=org, actor=owner, model_root=model_root)
    assert caught.value.messages[0].startswith(SUSPENDED + " No deployment can be created")
    assert not Deployment.objects.exists() and _deployment_events() == []
    org_reactivate(org=org)
    assert make_deployment(org=org, actor=owner, model_root=model_root).desired_replicas == 1


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"min_replicas": 2}, "min_replicas cannot be raised"),
        ({"max_replicas": 3}, "max_replicas cannot be raised"),
        ({"gpus_per_replica": 2}, "gpus_per_replica cannot be raised"),
        ({"min_replicas": 2, "max_replicas": 4}, "min_replicas and max_replicas cannot be raised"),
        ({"engine_args": {"max_model_len": 256}}, "engine_args cannot be changed on a running"),
        ({"gpus_per_replica": 0}, "gpus_per_replica cannot be changed on a running"),
    ],
)
def test_an_update_that_would_start_or_add_replicas_is_refused(owner, running, changes, named):
    before = _settings(running)
    with pytest.raises(OrgSuspendedError) as caught:
        deployment_update(deployment=running, actor=owner, **changes)
    message = caught.value.messages[0]
    assert message.startswith(SUSPENDED) and named in message
    assert "Pausing, scaling down and deleting deployments still work." in message
    assert _settings(running) == before
    assert _deployment_events() == ["deployment.created"]


@pytest.mark.parametrize(
    ("low", "high", "named"),
    [
        (2, 2, "min_replicas cannot be raised"),
        (1, 3, "max_replicas cannot be raised"),
        (0, 3, "max_replicas cannot be raised"),
        (2, 3, "min_replicas and max_replicas cannot be raised"),
    ],
)
def test_scaling_up_is_refused(owner, running, low, high, named):
    before = _settings(running)
    with pytest.raises(OrgSuspendedError) as caught:
        deployment_scale(deployment=running, actor=owner, min_replicas=low, max_replicas=high)
    assert caught.value.messages[0].startswith(f"{SUSPENDED} {named} while it is suspended.")
    assert _settings(running) == before
    assert _deployment_events() == ["deployment.created"]


def test_a_paused_deployment_cannot_be_resumed(owner, running):
    deployment_pause(deployment=running, actor=owner)
    before = _settings(running)
    with pytest.raises(OrgSuspendedError, match="cannot be resumed or retried"):
        deployment_resume(deployment=running, actor=owner)
    assert _settings(running) == before and running.paused
    assert "deployment.resumed" not in _deployment_events()


def test_a_failed_deployment_is_not_retried_by_resume_or_any_change(owner, running):
    failed = Replica.objects.create(
        deployment=running, state=ReplicaState.FAILED, spec_version=running.spec_version
    )
    with pytest.raises(OrgSuspendedError, match="cannot be resumed or retried"):
        deployment_resume(deployment=running, actor=owner)
    # Changes that cut or keep the use are made, but leave the failure as it is.
    deployment_scale(deployment=running, actor=owner, min_replicas=0, max_replicas=1)
    deployment_update(deployment=running, actor=owner, name="renamed")
    failed.refresh_from_db()
    assert failed.state == ReplicaState.FAILED
    assert "deployment.resumed" not in _deployment_events()


def test_cutting_costs_stays_allowed(owner, running):
    deployment_scale(deployment=running, actor=owner, min_replicas=0, max_replicas=1)
    running.refresh_from_db()
    assert (running.min_replicas, running.max_replicas, running.desired_replicas) == (0, 1, 1)
    deployment_update(deployment=running, actor=owner, target_concurrency=4, name="smaller")
    deployment_pause(deployment=running, actor=owner)
    running.refresh_from_db()
    assert running.paused
    # Paused, nothing runs: its model and GPUs may change (lower or the same), ready for later.
    deployment_update(deployment=running, actor=owner, engine_args={}, gpus_per_replica=0)
    running.refresh_from_db()
    assert (running.gpus_per_replica, running.spec_version) == (0, 2)
    deployment_delete(deployment=running, actor=owner)
    running.refresh_from_db()
    assert running.deleted_at is not None
    assert _deployment_events() == [
        "deployment.created",
        "deployment.scaled",
        "deployment.updated",
        "deployment.paused",
        "deployment.updated",
        "deployment.deleted",
    ]


def test_after_reactivation_growth_and_resume_work_again(org, owner, running):
    deployment_pause(deployment=running, actor=owner)
    org_reactivate(org=org)
    deployment_resume(deployment=running, actor=owner)
    deployment_scale(deployment=running, actor=owner, min_replicas=2, max_replicas=3)
    running.refresh_from_db()
    assert (running.paused, running.min_replicas, running.max_replicas) == (False, 2, 3)


# The orchestrator


def _fresh(deployment: Deployment) -> Deployment:
    """The row and its org as the orchestrator reads them."""
    return Deployment.objects.select_related("org").get(pk=deployment.pk)


def _quiet(deployment: Deployment, said: str) -> None:
    pass


def test_a_request_does_not_wake_a_suspended_organisations_deployment(org, owner, model_root):
    sleeping = make_deployment(org=org, actor=owner, model_root=model_root, min_replicas=0)
    Deployment.objects.filter(pk=sleeping.pk).update(desired_replicas=0)
    org_suspend(org=org, reason="unpaid invoices")
    deployment_signal_demand(deployment_id=sleeping.pk)
    assert Deployment.objects.get(pk=sleeping.pk).demand_at is None
    # Nor does a request that signalled just before the suspension.
    Deployment.objects.filter(pk=sleeping.pk).update(demand_at=timezone.now())
    sleeping = _fresh(sleeping)
    said: list[str] = []
    desired = deployment_desired_replicas(
        deployment=sleeping, load=[], demand_ttl_s=300, say=lambda d, s: said.append(s)
    )
    assert desired == 0 and said == []
    org_reactivate(org=org)
    desired = deployment_desired_replicas(
        deployment=_fresh(sleeping), load=[], demand_ttl_s=300, say=_quiet
    )
    assert desired == 1
    assert Deployment.objects.get(pk=sleeping.pk).desired_replicas == 1


def test_load_does_not_scale_a_suspended_organisations_deployment_up(owner, running):
    said: list[str] = []
    running = _fresh(running)
    # 20 requests at 8 per replica would want 2 (the maximum); it keeps its 1.
    assert (
        deployment_desired_replicas(
            deployment=running, load=[20], demand_ttl_s=300, say=lambda d, s: said.append(s)
        )
        == 1
    )
    assert said == [] and Deployment.objects.get(pk=running.pk).desired_replicas == 1
    # Scaling down still happens after the delay.
    deployment_scale(deployment=running, actor=owner, min_replicas=0, max_replicas=2)
    Deployment.objects.filter(pk=running.pk).update(
        low_load_since=timezone.now() - timedelta(seconds=running.scale_down_delay_s + 1)
    )
    running = _fresh(running)
    assert running.desired_replicas == 1
    assert (
        deployment_desired_replicas(deployment=running, load=[0], demand_ttl_s=300, say=_quiet) == 0
    )


# Console


def test_console_refuses_to_create_and_says_why(org, member, client_for, model_root):
    org_suspend(org=org, reason="unpaid invoices")
    response = client_for(member).post(
        reverse("deployment_create", args=[org.slug]), form_data(model_root)
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert f'<div class="errors" role="alert"><ul class="errorlist nonfield"><li>{SUSPENDED}' in (
        html
    )
    assert not Deployment.objects.exists() and _deployment_events() == []


def test_console_edit_that_raises_max_replicas_is_refused_above_the_form(
    org, member, client_for, model_root
):
    deployment = make_deployment(org=org, actor=member, model_root=model_root, gpus_per_replica=0)
    org_suspend(org=org, reason="unpaid invoices")
    url = reverse("deployment_edit", args=[org.slug, deployment.pk])
    response = client_for(member).post(url, form_data(model_root, max_replicas="3"))
    assert response.status_code == 400
    html = response.content.decode()
    assert SUSPENDED in html and "max_replicas cannot be raised" in html
    deployment.refresh_from_db()
    assert deployment.max_replicas == 2 and _deployment_events() == ["deployment.created"]
    # Lowering it is saved.
    response = client_for(member).post(url, form_data(model_root, max_replicas="1"))
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.max_replicas == 1


@pytest.mark.parametrize("htmx", [False, True])
def test_console_scale_up_is_refused_in_the_scale_form(org, member, client_for, running, htmx):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    url = reverse("deployment_scale", args=[org.slug, running.pk])
    client = client_for(member)
    response = client.post(url, {"min_replicas": "1", "max_replicas": "3"}, **headers)
    assert response.status_code == 400
    html = response.content.decode()
    assert f'<span class="errors" role="alert">{SUSPENDED}' in html
    assert 'value="3"' in html  # what was typed stays
    running.refresh_from_db()
    assert running.max_replicas == 2
    down = client.post(url, {"min_replicas": "0", "max_replicas": "1"}, **headers)
    assert down.status_code == (200 if htmx else 302)
    running.refresh_from_db()
    assert (running.min_replicas, running.max_replicas) == (0, 1)


def test_console_resume_is_refused_with_a_message_and_pause_and_delete_work(
    org, member, client_for, running
):
    client = client_for(member)
    args = [org.slug, running.pk]
    assert client.post(reverse("deployment_pause", args=args)).status_code == 302
    running.refresh_from_db()
    assert running.paused
    page = client.post(reverse("deployment_resume", args=args), follow=True)
    assert page.status_code == 200
    html = page.content.decode()
    assert SUSPENDED in html and "cannot be resumed" in html
    # The banner says what the suspension allows.
    assert "deployments cannot be created, resumed or grown; they can still be paused" in html
    running.refresh_from_db()
    assert running.paused
    assert client.post(reverse("deployment_delete", args=args)).status_code == 302
    running.refresh_from_db()
    assert running.deleted_at is not None
    assert _deployment_events() == [
        "deployment.created",
        "deployment.paused",
        "deployment.deleted",
    ]


def test_the_page_of_a_sleeping_deployment_does_not_promise_a_start(
    org, member, client_for, running
):
    Deployment.objects.filter(pk=running.pk).update(state="idle", desired_replicas=0)
    page = client_for(member).get(reverse("deployment_detail", args=[org.slug, running.pk]))
    html = page.content.decode()
    assert "while the organisation is suspended, requests do not start one" in html
    assert "the next request starts one" not in html


# REST API


def _refused(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "org_suspended" and error["fields"] == {}
    assert error["message"].startswith(SUSPENDED)
    return str(error["message"])


def test_rest_refuses_to_create(org, owner, client_for, model_root):
    org_suspend(org=org, reason="unpaid invoices")
    response = client_for(owner).post(api(org), body(model_root), content_type="application/json")
    assert "No deployment can be created" in _refused(response)
    assert not Deployment.objects.exists() and _deployment_events() == []


def test_rest_refuses_growth_and_resume(org, owner, client_for, running):
    client = client_for(owner)
    one = api(org) + f"{running.pk}/"
    before = _settings(running)
    json = "application/json"
    assert "max_replicas" in _refused(client.patch(one, {"max_replicas": 4}, content_type=json))
    assert "gpus_per_replica" in _refused(
        client.patch(one, {"gpus_per_replica": 2}, content_type=json)
    )
    assert "engine_args" in _refused(
        client.patch(one, {"engine_args": {"max_model_len": 256}}, content_type=json)
    )
    assert "min_replicas" in _refused(
        client.post(one + "scale/", {"replicas": 2}, content_type=json)
    )
    assert _settings(running) == before
    Deployment.objects.filter(pk=running.pk).update(paused=True)
    assert "cannot be resumed" in _refused(client.post(one + "resume/"))
    assert Deployment.objects.get(pk=running.pk).paused
    assert _deployment_events() == ["deployment.created"]


def test_rest_still_pauses_scales_down_and_deletes(org, owner, client_for, running):
    client = client_for(owner)
    one = api(org) + f"{running.pk}/"
    json = "application/json"
    scaled = client.post(one + "scale/", {"replicas": 1}, content_type=json)
    assert scaled.status_code == 200 and scaled.json()["max_replicas"] == 1
    patched = client.patch(one, {"min_replicas": 0}, content_type=json)
    assert patched.status_code == 200 and patched.json()["min_replicas"] == 0
    assert client.post(one + "pause/").json()["paused"] is True
    deleted = client.delete(one)
    assert deleted.status_code == 202 and deleted.json()["deleting"] is True


def test_the_schema_documents_the_refusal(owner, client_for):
    schema = client_for(owner).get("/api/schema/?format=json").json()
    create = schema["paths"]["/api/orgs/{org_slug}/deployments/"]["post"]
    assert "org_suspended" in create["responses"]["403"]["description"]
