"""The routes page, its forms and "try it" box, and the routes REST API."""

from __future__ import annotations

import json

import pytest

from billing.models import UsageRecord
from billing.money import format_dollars
from console.models import AuditEvent
from console.services.keys import api_key_create
from inference.models import ExternalEndpoint, Route
from inference.routing.secrets import secret_decrypt
from inference.services.routes import external_endpoint_create, route_create
from tests.gateway.conftest import make_deployment

SINGLE = {"target": "deployment:tiny"}


@pytest.fixture
def tiny(org, engine):  # type: ignore[no-untyped-def]
    _, server = engine
    return make_deployment(org, "tiny", [server.port])


def test_developer_creates_a_route_and_it_is_audited(client_for, member, org, tiny):
    page = client_for(member)
    response = page.post(
        f"/o/{org.slug}/routes/new/",
        {"name": "chat", "policy": "single", "config": json.dumps(SINGLE)},
    )
    assert response.status_code == 302
    route = Route.objects.get(org=org, name="chat")
    assert route.config == SINGLE
    event = AuditEvent.objects.get(action="route.created")
    assert event.target_id == str(route.id)
    listing = page.get(f"/o/{org.slug}/routes/").content.decode()
    assert 'data-route="chat"' in listing


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("{not json", "not valid JSON"),
        ('{"target": ' + "[" * 100_000, "nested too deeply"),
        ('{"target": "deployment:missing"}', "deployment:missing does not exist"),
        ('{"target": "tiny"}', "kind:name"),
    ],
)
def test_bad_route_forms_show_the_error_and_save_nothing(
    client_for, owner, org, tiny, config, error
):
    response = client_for(owner).post(
        f"/o/{org.slug}/routes/new/", {"name": "chat", "policy": "single", "config": config}
    )
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not Route.objects.exists()


def test_route_name_cannot_shadow_a_deployment(client_for, owner, org, tiny):
    response = client_for(owner).post(
        f"/o/{org.slug}/routes/new/",
        {"name": "tiny", "policy": "single", "config": json.dumps(SINGLE)},
    )
    assert response.status_code == 400
    assert "already serves the model name" in response.content.decode()


def test_viewer_sees_routes_but_no_forms(client_for, viewer, owner, org, tiny):
    route_create(org=org, actor=owner, name="chat", policy="single", config=SINGLE)
    page = client_for(viewer).get(f"/o/{org.slug}/routes/").content.decode()
    assert 'data-route="chat"' in page
    assert "New route" not in page
    assert "Try it" not in page


def test_edit_changes_the_route_and_rejects_a_cycle(client_for, owner, org, tiny):
    first = route_create(org=org, actor=owner, name="a", policy="single", config=SINGLE)
    route_create(org=org, actor=owner, name="b", policy="single", config={"target": "route:a"})
    page = client_for(owner)
    cycle = page.post(
        f"/o/{org.slug}/routes/{first.id}/",
        {"name": "a", "policy": "single", "config": '{"target": "route:b"}'},
    )
    assert cycle.status_code == 400
    assert "cycle: a -&gt; b -&gt; a" in cycle.content.decode()
    fallback = {"targets": ["deployment:tiny"], "max_attempts": 1}
    saved = page.post(
        f"/o/{org.slug}/routes/{first.id}/",
        {"name": "a", "policy": "fallback", "config": json.dumps(fallback)},
    )
    assert saved.status_code == 302
    first.refresh_from_db()
    assert (first.policy, first.config) == ("fallback", fallback)
    assert AuditEvent.objects.filter(action="route.updated").count() == 1


def test_a_route_cannot_mix_chat_and_embedding_deployments(client_for, owner, org, tiny):
    make_deployment(org, "minilm", [1], served="all-minilm", runner="pooling")
    route_create(
        org=org, actor=owner, name="embed", policy="single", config={"target": "deployment:minilm"}
    )
    mixed = {"targets": ["deployment:tiny", "route:embed"], "max_attempts": 2}
    response = client_for(owner).post(
        f"/o/{org.slug}/routes/new/",
        {"name": "mixed", "policy": "fallback", "config": json.dumps(mixed)},
    )
    assert response.status_code == 400
    assert (
        "text generation deployments (tiny) and to embedding deployments (minilm)"
        in response.content.decode()
    )
    assert not Route.objects.filter(name="mixed").exists()
    same_kind = {"targets": ["deployment:minilm", "route:embed"], "max_attempts": 2}
    route_create(org=org, actor=owner, name="embeddings", policy="fallback", config=same_kind)


def test_a_route_in_use_cannot_be_deleted(client_for, owner, org, tiny):
    target = route_create(org=org, actor=owner, name="a", policy="single", config=SINGLE)
    route_create(org=org, actor=owner, name="b", policy="single", config={"target": "route:a"})
    response = client_for(owner).post(f"/o/{org.slug}/routes/{target.id}/delete/", follow=True)
    assert "route(s) b send requests to it" in response.content.decode()
    assert Route.objects.filter(pk=target.pk).exists()


def test_try_it_shows_which_target_answered_and_what_it_cost(client_for, owner, org, tiny, engine):
    route_create(org=org, actor=owner, name="chat", policy="single", config=SINGLE)
    response = client_for(owner).post(
        f"/o/{org.slug}/routes/try/",
        {"model": "chat", "prompt": "hello there", "max_tokens": 3},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "hello from the" in html
    assert "deployment:tiny" in html
    record = UsageRecord.objects.get()
    assert record.api_key_id is None
    assert (record.route, record.target) == ("chat", "deployment:tiny")
    assert format_dollars(record.cost_micros) in html
    assert record.cost_micros > 0


def test_try_it_reports_a_failing_target(client_for, owner, org, engine):
    fake, server = engine
    make_deployment(org, "tiny", [server.port])
    fake.script.append(500)
    html = (
        client_for(owner)
        .post(f"/o/{org.slug}/routes/try/", {"model": "tiny", "prompt": "x", "max_tokens": 3})
        .content.decode()
    )
    assert "HTTP 502" in html
    assert "scripted failure 500" in html


def test_try_it_refuses_a_suspended_organisation_as_the_gateway_does(
    client_for, owner, org, tiny, engine
):
    from console.services.orgs import org_suspend

    fake, _ = engine
    org_suspend(org=org, reason="unpaid invoices")
    html = (
        client_for(owner)
        .post(f"/o/{org.slug}/routes/try/", {"model": "tiny", "prompt": "x", "max_tokens": 3})
        .content.decode()
    )
    assert "HTTP 402: This organisation is suspended: unpaid invoices." in html
    assert not UsageRecord.objects.exists() and not fake.requests


def test_try_it_offers_only_models_that_can_chat(client_for, owner, org, tiny):
    make_deployment(org, "minilm", [1], served="all-minilm", runner="pooling")
    page = client_for(owner).get(f"/o/{org.slug}/routes/").content.decode()
    options = page[page.index('id="try-box"') :]
    assert '<option value="tiny"' in options
    assert '<option value="all-minilm"' not in options
    # Still listed where the page names every model programs can call.
    assert "all-minilm" in page[: page.index('id="try-box"')]
    response = client_for(owner).post(
        f"/o/{org.slug}/routes/try/", {"model": "all-minilm", "prompt": "x", "max_tokens": 3}
    )
    assert response.status_code == 400
    assert "all-minilm is not one of the available choices" in response.content.decode()
    assert not UsageRecord.objects.exists()


def test_api_creates_lists_updates_and_deletes_routes(client, org, owner, tiny):
    secret = api_key_create(org=org, actor=owner, name="ci", scopes=["manage"]).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    base = f"/api/orgs/{org.slug}/routes/"
    created = client.post(
        base,
        {"name": "chat", "policy": "single", "config": SINGLE},
        content_type="application/json",
        **auth,
    )
    assert created.status_code == 201, created.json()
    route_id = created.json()["id"]
    assert client.get(base, **auth).json()["results"][0]["name"] == "chat"
    bad = client.patch(
        base + f"{route_id}/",
        {"config": {"target": "deployment:nope"}},
        content_type="application/json",
        **auth,
    )
    assert bad.status_code == 400
    assert "deployment:nope does not exist" in bad.json()["error"]["message"]
    renamed = client.patch(
        base + f"{route_id}/", {"name": "chat2"}, content_type="application/json", **auth
    )
    assert renamed.json()["name"] == "chat2"
    assert client.delete(base + f"{route_id}/", **auth).status_code == 204
    assert not Route.objects.exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"route.created", "route.updated", "route.deleted"} <= actions


def test_api_endpoint_key_is_stored_encrypted_and_never_returned(client, org, owner):
    secret = api_key_create(org=org, actor=owner, name="ci", scopes=["manage"]).secret
    response = client.post(
        f"/api/orgs/{org.slug}/endpoints/",
        {
            "name": "partner",
            "base_url": "https://api.example.com/v1",
            "model": "big",
            "api_key": "sk-partner-0123456789",
        },
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 201
    assert "api_key" not in response.json()
    assert response.json()["api_key_hint"] == "6789"
    stored = ExternalEndpoint.objects.get()
    assert "sk-partner" not in stored.api_key_encrypted
    assert secret_decrypt(stored.api_key_encrypted) == "sk-partner-0123456789"


@pytest.fixture
def partner(org, owner):  # type: ignore[no-untyped-def]
    endpoint = external_endpoint_create(
        org=org,
        actor=owner,
        name="partner",
        base_url="https://api.example.com/v1",
        model="big",
        api_key="sk-partner-old-0000",
    )
    route_create(
        org=org, actor=owner, name="chat", policy="single", config={"target": "external:partner"}
    )
    return endpoint


def test_an_endpoint_in_use_is_edited_in_place_and_its_key_rotated(
    client_for, member, org, partner
):
    page = client_for(member)
    url = f"/o/{org.slug}/routes/endpoints/{partner.id}/"
    assert f'href="{url}"' in page.get(f"/o/{org.slug}/routes/").content.decode()
    form = page.get(url).content.decode()
    assert "<code>chat</code>" in form  # the routes that will follow the change
    assert "…0000" in form and "sk-partner-old" not in form

    response = page.post(
        url,
        {"base_url": "https://api.example.org/v1/", "model": "bigger", "api_key": "sk-new-1234567"},
    )
    assert response.status_code == 302
    partner.refresh_from_db()
    assert (partner.base_url, partner.model) == ("https://api.example.org/v1", "bigger")
    assert secret_decrypt(partner.api_key_encrypted) == "sk-new-1234567"
    assert partner.api_key_hint == "4567"
    event = AuditEvent.objects.get(action="endpoint.updated")
    assert event.data["api_key"] == "replaced"
    assert event.data["model"] == {"before": "big", "after": "bigger"}
    assert "sk-new" not in json.dumps(event.data)

    # An empty key field keeps the stored key; the box removes it.
    page.post(url, {"base_url": partner.base_url, "model": "bigger", "api_key": ""})
    partner.refresh_from_db()
    assert secret_decrypt(partner.api_key_encrypted) == "sk-new-1234567"
    assert AuditEvent.objects.filter(action="endpoint.updated").count() == 1  # nothing changed
    page.post(url, {"base_url": partner.base_url, "model": "bigger", "clear_api_key": "on"})
    partner.refresh_from_db()
    assert (partner.api_key_encrypted, partner.api_key_hint) == ("", "")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"base_url": "ftp://x", "model": "m"}, "http(s) URL"),
        ({"base_url": "http://127.0.0.1:9/v1", "model": "m"}, "GATEWAY_EXTERNAL_ALLOW"),
        ({"base_url": "https://api.example.com/v1", "model": ""}, "required"),
        (
            {
                "base_url": "https://api.example.com/v1",
                "model": "m",
                "api_key": "sk-new-key-1",
                "clear_api_key": "on",
            },
            "not both",
        ),
    ],
)
def test_a_bad_endpoint_edit_shows_the_error_and_changes_nothing(
    client_for, owner, org, partner, data, says
):
    before = ExternalEndpoint.objects.values().get()
    response = client_for(owner).post(f"/o/{org.slug}/routes/endpoints/{partner.id}/", data)
    assert response.status_code == 400
    assert says in response.content.decode()
    assert ExternalEndpoint.objects.values().get() == before
    assert not AuditEvent.objects.filter(action="endpoint.updated").exists()


def test_viewer_cannot_edit_an_endpoint(client_for, viewer, org, partner):
    page = client_for(viewer)
    url = f"/o/{org.slug}/routes/endpoints/{partner.id}/"
    assert url not in page.get(f"/o/{org.slug}/routes/").content.decode()
    assert page.get(url).status_code == 403
    assert page.post(url, {"base_url": "https://evil.example/v1", "model": "m"}).status_code == 403
    partner.refresh_from_db()
    assert partner.base_url == "https://api.example.com/v1"


def test_api_patches_an_endpoint_and_refuses_a_rename(client, org, owner, partner):
    secret = api_key_create(org=org, actor=owner, name="ci", scopes=["manage"]).secret
    url = f"/api/orgs/{org.slug}/endpoints/{partner.id}/"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}", "content_type": "application/json"}

    response = client.patch(url, {"api_key": "sk-rotated-98765"}, **auth)
    assert response.status_code == 200
    assert response.json()["api_key_hint"] == "8765"
    assert "api_key" not in response.json()
    partner.refresh_from_db()
    assert secret_decrypt(partner.api_key_encrypted) == "sk-rotated-98765"
    assert partner.model == "big"  # left out, kept

    renamed = client.patch(url, {"name": "other"}, **auth)
    assert renamed.status_code == 400
    assert "name" in renamed.json()["error"]["fields"]
    bad = client.patch(url, {"base_url": "not a url", "model": "x"}, **auth)
    assert bad.status_code == 400
    assert "base_url" in bad.json()["error"]["fields"]
    partner.refresh_from_db()
    assert (partner.name, partner.model) == ("partner", "big")

    assert client.patch(url, {"api_key": ""}, **auth).json()["api_key_hint"] == ""
    partner.refresh_from_db()
    assert partner.api_key_encrypted == ""
