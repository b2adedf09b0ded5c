from __future__ import annotations

from console.models import AuditEvent
from console.services.keys import api_key_create
from inference.models import Deployment, Replica, ReplicaState


def api(org) -> str:  # type: ignore[no-untyped-def]
    return f"/api/orgs/{org.slug}/deployments/"


def body(model_root, **overrides):  # type: ignore[no-untyped-def]
    data = {
        "name": "tiny",
        "served_model_name": "tiny-llama",
        "source": "local",
        "model": str(model_root / "tiny"),
        "engine_args": {"max_model_len": 512},
        "gpus_per_replica": 0,
        "min_replicas": 0,
        "max_replicas": 2,
    }
    data.update(overrides)
    return data


def test_create_list_detail_with_a_manage_key(org, owner, client, model_root):
    secret = api_key_create(org=org, actor=owner, name="ci", scopes=["manage"]).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    created = client.post(api(org), body(model_root), content_type="application/json", **auth)
    assert created.status_code == 201, created.content
    data = created.json()
    assert data["state"] == "pending"
    assert data["engine_args"] == {"max_model_len": 512}
    assert data["replicas"] == []
    event = AuditEvent.objects.get(action="deployment.created")
    assert event.actor_key is not None

    Replica.objects.create(
        deployment_id=data["id"], state=ReplicaState.READY, host="127.0.0.1", port=18001
    )
    listing = client.get(api(org), **auth).json()
    assert listing["count"] == 1
    assert listing["results"][0]["replicas"][0]["port"] == 18001
    detail = client.get(api(org) + data["id"] + "/", **auth).json()
    assert detail["replicas"][0]["state"] == "ready"


def test_bad_engine_arguments_get_400_naming_the_field(org, owner, client_for, model_root):
    response = client_for(owner).post(
        api(org),
        body(model_root, engine_args={"max_num_seqs": 0, "enable_lora": True}),
        content_type="application/json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "engine_args" in error["fields"]
    assert "max_num_seqs" in error["message"]
    assert "enable_lora is not an allowed engine argument" in error["message"]
    assert not Deployment.objects.exists()


def test_quota_refusal_is_clear(org, owner, client_for, model_root):
    org.max_replicas = 1
    org.save()
    response = client_for(owner).post(api(org), body(model_root), content_type="application/json")
    assert response.status_code == 400
    assert "may run 1 replicas in all" in response.json()["error"]["fields"]["max_replicas"][0]


def test_patch_scale_pause_resume_delete(org, owner, client_for, model_root):
    client = client_for(owner)
    created = client.post(api(org), body(model_root), content_type="application/json").json()
    one = api(org) + created["id"] + "/"
    patched = client.patch(one, {"target_concurrency": 4}, content_type="application/json")
    assert patched.json()["target_concurrency"] == 4
    scaled = client.post(one + "scale/", {"replicas": 2}, content_type="application/json")
    assert (scaled.json()["min_replicas"], scaled.json()["max_replicas"]) == (2, 2)
    both = client.post(
        one + "scale/", {"replicas": 1, "min_replicas": 1}, content_type="application/json"
    )
    assert both.status_code == 400
    for zero in [{"replicas": 0}, {"min_replicas": 0, "max_replicas": 0}]:
        refused = client.post(one + "scale/", zero, content_type="application/json")
        assert refused.status_code == 400
        ((field, (message,)),) = refused.json()["error"]["fields"].items()
        assert field in zero and "min_replicas 0" in message and "Pause" in message
    assert client.post(one + "pause/").json()["paused"] is True
    assert client.post(one + "resume/").json()["paused"] is False
    deleted = client.delete(one)
    assert deleted.status_code == 202 and deleted.json()["deleting"] is True
    assert client.get(one).json()["deleting"] is True
    # Asking again (a retry after a lost answer) is answered alike, and recorded once.
    again = client.delete(one)
    assert again.status_code == 202 and again.json() == client.get(one).json()
    assert AuditEvent.objects.filter(action="deployment.deleted").count() == 1
    refused = client.patch(one, {"target_concurrency": 2}, content_type="application/json")
    assert refused.status_code == 400


def test_logs_endpoint_returns_the_tail(org, owner, client_for, model_root, tmp_path):
    client = client_for(owner)
    created = client.post(api(org), body(model_root), content_type="application/json").json()
    log = tmp_path / "r.log"
    log.write_text("line one\nline two\n")
    Replica.objects.create(deployment_id=created["id"], log_path=str(log))
    response = client.get(api(org) + created["id"] + "/logs/?lines=1")
    assert response.json()["lines"] == ["line two"]
    assert response.json()["note"] == ""


def test_logs_endpoint_names_the_pod_of_a_kubernetes_replica(org, owner, client_for, model_root):
    client = client_for(owner)
    created = client.post(api(org), body(model_root), content_type="application/json").json()
    Replica.objects.create(deployment_id=created["id"], backend="kubernetes", handle="tiny-7f9c-x2")
    answer = client.get(api(org) + created["id"] + "/logs/").json()
    assert answer["lines"] == []
    assert "kubectl logs tiny-7f9c-x2" in answer["note"]


def test_read_key_cannot_create(org, owner, client, model_root):
    secret = api_key_create(org=org, actor=owner, name="r", scopes=["read"]).secret
    response = client.post(
        api(org),
        body(model_root),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 403


def test_the_schema_documents_the_endpoints(client, owner, client_for):
    schema = client_for(owner).get("/api/schema/?format=json").json()
    paths = schema["paths"]
    base = "/api/orgs/{org_slug}/deployments/"
    for suffix in ["", "{deployment_id}/", "{deployment_id}/scale/", "{deployment_id}/logs/"]:
        assert base + suffix in paths


def test_numbers_out_of_range_are_refused_and_their_ranges_published(
    org, owner, client_for, model_root
):
    client = client_for(owner)
    for field, value in [
        ("min_replicas", 65),
        ("max_replicas", -1),
        ("gpus_per_replica", 2**40),
        ("target_concurrency", 0),
        ("scale_down_delay_s", 86_401),
    ]:
        response = client.post(
            api(org), body(model_root, **{field: value}), content_type="application/json"
        )
        assert response.status_code == 400, field
        assert list(response.json()["error"]["fields"]) == [field]
    assert not Deployment.objects.exists()
    schema = client.get("/api/schema/?format=json").json()["components"]["schemas"]
    write = schema["DeploymentWriteRequest"]["properties"]
    assert (write["max_replicas"]["minimum"], write["max_replicas"]["maximum"]) == (1, 64)
    assert (write["target_concurrency"]["minimum"], write["target_concurrency"]["maximum"]) == (
        1,
        10_000,
    )
    scale = schema["ScaleRequest"]["properties"]
    assert (scale["replicas"]["minimum"], scale["replicas"]["maximum"]) == (1, 64)


def test_a_deleting_deployment_and_its_successor_of_one_name_each_come_once(
    org, owner, client_for, model_root
):
    """The list is in name order; one being deleted frees its name, so two can share it and
    only their ids tell pages apart."""
    client = client_for(owner)
    first = client.post(api(org), body(model_root), content_type="application/json").json()
    client.delete(api(org) + first["id"] + "/")
    second = client.post(api(org), body(model_root), content_type="application/json").json()
    # The successor gets the smaller id: the order rows were written in is not the ids'.
    Deployment.objects.filter(pk=second["id"]).update(id="00000000-0000-0000-0000-000000000001")
    pages = [client.get(api(org) + f"?limit=1&offset={n}").json() for n in (0, 1)]
    assert [p["results"][0]["id"] for p in pages] == [
        "00000000-0000-0000-0000-000000000001",
        first["id"],
    ]
