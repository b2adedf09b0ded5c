from __future__ import annotations

import pytest
from django.urls import reverse

from console.models import AuditEvent
from inference.models import Deployment, Replica, ReplicaState
from tests.deployments.factories import make_deployment


def form_data(model_root, **overrides):  # type: ignore[no-untyped-def]
    data = {
        "name": "tiny",
        "served_model_name": "tiny-llama",
        "source": "local",
        "model": str(model_root / "tiny"),
        "revision": "",
        "runner": "generate",
        "engine_args": '{"max_model_len": 512}',
        "gpus_per_replica": "0",
        "min_replicas": "1",
        "max_replicas": "2",
        "target_concurrency": "8",
        "scale_down_delay_s": "300",
    }
    data.update(overrides)
    return data


def test_member_creates_a_deployment_through_the_form(org, member, client_for, model_root):
    client = client_for(member)
    url = reverse("deployment_create", args=[org.slug])
    assert client.get(url).status_code == 200
    response = client.post(url, form_data(model_root))
    deployment = Deployment.objects.get(org=org)
    assert response.status_code == 302
    assert response["Location"] == reverse("deployment_detail", args=[org.slug, deployment.pk])
    assert deployment.engine_args == {"max_model_len": 512}
    assert AuditEvent.objects.filter(action="deployment.created", actor=member).exists()


def test_form_errors_are_shown_beside_their_fields(org, member, client_for, model_root):
    response = client_for(member).post(
        reverse("deployment_create", args=[org.slug]),
        form_data(model_root, engine_args='{"max_model_len": "huge", "bogus": 1}', model="/etc"),
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "max_model_len must be a whole number" in html
    assert "bogus is not an allowed engine argument" in html
    assert "Local models must lie under an allowed directory" in html
    assert html.count('class="field has-error"') == 2
    assert not Deployment.objects.exists()


@pytest.mark.parametrize(
    ("engine_args", "message"),
    [
        ("{oops", "Not valid JSON"),
        ("[" * 100_000, "This JSON is nested too deeply."),
        ('{"seed": 1' + "0" * 5000 + "}", "A number in this JSON has too many digits."),
    ],
)
def test_malformed_json_is_an_error_on_engine_args(
    org, member, client_for, model_root, engine_args, message
):
    response = client_for(member).post(
        reverse("deployment_create", args=[org.slug]),
        form_data(model_root, engine_args=engine_args),
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Deployment.objects.exists()


def test_viewer_sees_the_list_and_detail_but_not_the_buttons(
    org, owner, viewer, client_for, model_root
):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    client = client_for(viewer)
    listing = client.get(reverse("deployment_list", args=[org.slug]))
    assert listing.status_code == 200
    assert b"tiny-llama" in listing.content
    assert b"Deploy a model</a>" not in listing.content
    detail = client.get(reverse("deployment_detail", args=[org.slug, deployment.pk]))
    assert detail.status_code == 200
    assert b">Scale</button>" not in detail.content
    assert (
        client.post(reverse("deployment_pause", args=[org.slug, deployment.pk])).status_code == 403
    )


def test_a_failed_deployment_shows_its_cause_in_the_list_and_its_log_on_the_page(
    org, owner, client_for, model_root
):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    cause = (
        "A replica failed and will not be restarted: The process exited with code 1: TypeError: "
        "--tool-call-parser llama3_json cannot be used with the tokenizer of 'tiny'."
    )
    Deployment.objects.filter(pk=deployment.pk).update(
        state="failed", state_reason=cause + '\n  File "x.py", line 9, in start\nTypeError: ...'
    )
    client = client_for(owner)
    listing = client.get(reverse("deployment_list", args=[org.slug])).content.decode()
    assert "cannot be used with the tokenizer of &#x27;tiny&#x27;." in listing
    assert "x.py" not in listing
    detail = client.get(reverse("deployment_detail", args=[org.slug, deployment.pk]))
    assert "x.py" in detail.content.decode()
    # Retrying without a change: resuming a deployment that is not paused clears the failure.
    retry = reverse("deployment_resume", args=[org.slug, deployment.pk])
    assert f'action="{retry}"' in detail.content.decode()


def test_outsider_gets_404_for_the_deployment(org, owner, outsider, client_for, model_root):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    client = client_for(outsider)
    assert (
        client.get(reverse("deployment_detail", args=[org.slug, deployment.pk])).status_code == 404
    )
    other_org = outsider.memberships.get().org
    url = reverse("deployment_detail", args=[other_org.slug, deployment.pk])
    assert client.get(url).status_code == 404


def test_detail_shows_replicas_progress_metrics_and_the_log(
    org, owner, client_for, model_root, tmp_path
):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    log = tmp_path / "replica.log"
    log.write_text("=== start\nINFO Starting to load model\nINFO Warming up model\n")
    Replica.objects.create(
        deployment=deployment,
        state=ReplicaState.READY,
        host="127.0.0.1",
        port=18001,
        metrics={
            "running": 3,
            "waiting": 1,
            "kv_cache_usage": 0.25,
            "generation_tokens_per_s": 41.5,
        },
        log_path=str(log),
    )
    Replica.objects.create(
        deployment=deployment, state=ReplicaState.STARTING, progress="loading", port=18002
    )
    client = client_for(owner)
    html = client.get(reverse("deployment_detail", args=[org.slug, deployment.pk])).content.decode()
    assert "127.0.0.1:18001" in html
    assert "3 / 1" in html
    assert "25%" in html
    assert "41.5 out" in html
    assert "loading" in html
    assert "Warming up model" in html

    # The htmx poll gets only the status fragment.
    fragment = client.get(
        reverse("deployment_detail", args=[org.slug, deployment.pk]), HTTP_HX_REQUEST="true"
    ).content.decode()
    assert fragment.lstrip().startswith('<div id="status"')
    assert "<html" not in fragment


def test_scale_pause_resume_and_delete_from_the_page(org, member, client_for, model_root):
    deployment = make_deployment(org=org, actor=member, model_root=model_root)
    client = client_for(member)
    args = [org.slug, deployment.pk]
    response = client.post(
        reverse("deployment_scale", args=args), {"min_replicas": "0", "max_replicas": "2"}
    )
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert (deployment.min_replicas, deployment.max_replicas) == (0, 2)

    bad = client.post(
        reverse("deployment_scale", args=args), {"min_replicas": "3", "max_replicas": "1"}
    )
    assert bad.status_code == 400
    assert "max_replicas must be at least min_replicas" in bad.content.decode()
    zero = client.post(
        reverse("deployment_scale", args=args), {"min_replicas": "0", "max_replicas": "0"}
    )
    assert zero.status_code == 400
    assert "min_replicas 0 the deployment scales to zero" in zero.content.decode()

    client.post(reverse("deployment_pause", args=args))
    deployment.refresh_from_db()
    assert deployment.paused
    client.post(reverse("deployment_resume", args=args))
    deployment.refresh_from_db()
    assert not deployment.paused
    response = client.post(reverse("deployment_delete", args=args))
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.deleted_at is not None
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {
        "deployment.scaled",
        "deployment.paused",
        "deployment.resumed",
        "deployment.deleted",
    } <= actions


def test_edit_prefills_and_saves(org, member, client_for, model_root):
    deployment = make_deployment(org=org, actor=member, model_root=model_root)
    client = client_for(member)
    url = reverse("deployment_edit", args=[org.slug, deployment.pk])
    page = client.get(url).content.decode()
    assert "max_model_len" in page
    response = client.post(url, form_data(model_root, engine_args='{"max_model_len": 256}'))
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.engine_args == {"max_model_len": 256}
    assert deployment.spec_version == 2


def test_logs_fragment_for_a_chosen_replica(org, owner, client_for, model_root, tmp_path):
    deployment = make_deployment(org=org, actor=owner, model_root=model_root)
    log = tmp_path / "r.log"
    log.write_text("hello from the engine\n")
    replica = Replica.objects.create(deployment=deployment, log_path=str(log))
    response = client_for(owner).get(
        reverse("deployment_logs", args=[org.slug, deployment.pk]) + f"?replica={replica.pk}"
    )
    assert response.status_code == 200
    assert b"hello from the engine" in response.content
    # The console cannot read a Kubernetes pod's output: it says where the log is instead.
    pod = Replica.objects.create(deployment=deployment, backend="kubernetes", handle="tiny-7f9c-x2")
    response = client_for(owner).get(
        reverse("deployment_logs", args=[org.slug, deployment.pk]) + f"?replica={pod.pk}"
    )
    assert "kubectl logs tiny-7f9c-x2" in response.content.decode()
    assert "nothing logged yet" not in response.content.decode()


def test_scaling_with_htmx_keeps_the_form_out_of_the_polled_status(
    org, member, client_for, model_root
):
    deployment = make_deployment(org=org, actor=member, model_root=model_root)
    client = client_for(member)
    url = reverse("deployment_scale", args=[org.slug, deployment.pk])
    htmx = {"HTTP_HX_REQUEST": "true"}
    bad = client.post(url, {"min_replicas": "1", "max_replicas": "77"}, **htmx)
    assert bad.status_code == 400
    body = bad.content.decode()
    assert body.lstrip().startswith('<div class="card" id="controls">')
    assert 'value="77"' in body and 'role="alert"' in body  # what was typed, and why not
    # The poll that follows swaps the status only: no form in it to reset or wipe the error.
    poll = client.get(reverse("deployment_detail", args=[org.slug, deployment.pk]), **htmx)
    assert 'id="status"' in poll.content.decode()
    assert "/scale/" not in poll.content.decode() and "<form" not in poll.content.decode()
    good = client.post(url, {"min_replicas": "0", "max_replicas": "3"}, **htmx)
    assert good.status_code == 200 and good["HX-Trigger"] == "deployment-changed"
    assert 'value="3"' in good.content.decode() and 'role="alert"' not in good.content.decode()
    deployment.refresh_from_db()
    assert (deployment.min_replicas, deployment.max_replicas) == (0, 3)
    page = client.get(reverse("deployment_detail", args=[org.slug, deployment.pk])).content
    assert b"deployment-changed from:body" in page and b'id="controls"' in page
