from __future__ import annotations

import json

import pytest
import yaml
from django.core.cache import cache
from openapi_spec_validator import validate
from rest_framework.throttling import AnonRateThrottle

from console.models import ApiKey, Invitation, Membership
from console.permissions import Role
from console.services.keys import api_key_create


def test_schema_is_valid_openapi_3(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert response.status_code == 200
    spec = yaml.safe_load(response.content)
    validate(spec)
    assert spec["openapi"].startswith("3.")
    assert "/api/orgs/{org_slug}/keys/" in spec["paths"]
    assert "ApiKey" in spec["components"]["securitySchemes"]


def test_browsable_docs_page_is_served(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


def test_me_lists_my_orgs(client_for, org, owner):
    body = client_for(owner).get("/api/me/").json()
    assert body["email"] == owner.email
    assert body["orgs"] == [{"slug": "acme", "name": "Acme", "role": "owner"}]


def test_key_lifecycle_over_rest(client_for, org, owner):
    client = client_for(owner)
    created = client.post(
        f"/api/orgs/{org.slug}/keys/",
        {"name": "svc", "scopes": ["inference"], "rpm_limit": 60, "allowed_models": ["llama"]},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["key"].startswith("sk-") and body["rpm_limit"] == 60
    listed = client.get(f"/api/orgs/{org.slug}/keys/").json()
    assert listed["count"] == 1 and "key" not in listed["results"][0]
    revoked = client.post(f"/api/orgs/{org.slug}/keys/{body['id']}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["active"] is False


def test_manage_key_can_create_keys_and_read_key_cannot(client, org, owner):
    manage = api_key_create(org=org, actor=owner, name="m", scopes=["manage"]).secret
    read = api_key_create(org=org, actor=owner, name="r", scopes=["read"]).secret
    url = f"/api/orgs/{org.slug}/keys/"
    payload = {"name": "child", "scopes": ["inference"]}
    ok = client.post(
        url, payload, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {manage}"
    )
    assert ok.status_code == 201
    refused = client.post(
        url, payload, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {read}"
    )
    assert refused.status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {read}").status_code == 200
    assert ApiKey.objects.filter(name="child").count() == 1


def test_revoked_key_gets_401_with_reason(client, org, owner):
    created = api_key_create(org=org, actor=owner, name="m", scopes=["manage"])
    client.post  # noqa: B018
    created.key.revoked_at = created.key.created_at
    created.key.save()
    response = client.get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {created.secret}")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This API key has been revoked."


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "JSON parse error"),
        # Past Python's recursion limit: the decoder's RecursionError was a 500.
        ('{"name": ' + "[" * 100_000, "JSON parse error - the body is nested too deeply."),
    ],
)
def test_malformed_json_is_a_clear_400_and_changes_nothing(client_for, org, owner, body, message):
    response = client_for(owner).post(
        f"/api/orgs/{org.slug}/keys/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    assert message in response.json()["error"]["message"]
    assert ApiKey.objects.count() == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "", "scopes": ["inference"]}, "name"),
        ({"name": "x", "scopes": ["wizard"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["inference"], "rpm_limit": "many"}, "rpm_limit"),
        ({"name": "x", "scopes": "inference"}, "scopes"),
        # Beyond the column's range: a 400, not a database error.
        ({"name": "x", "scopes": ["inference"], "rpm_limit": 2**31}, "rpm_limit"),
        ({"name": "x", "scopes": ["inference"], "tpm_limit": 2**63}, "tpm_limit"),
    ],
)
def test_bad_key_payloads_name_the_field(client_for, org, owner, payload, field):
    response = client_for(owner).post(
        f"/api/orgs/{org.slug}/keys/", json.dumps(payload), content_type="application/json"
    )
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert ApiKey.objects.count() == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "nope", "role": "viewer"}, "email"),
        ({"email": "a@example.com", "role": "boss"}, "role"),
    ],
)
def test_bad_invitations_name_the_field(client_for, org, owner, payload, field):
    response = client_for(owner).post(
        f"/api/orgs/{org.slug}/invitations/", payload, content_type="application/json"
    )
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert Invitation.objects.count() == 0


def test_member_role_change_and_last_owner_guard_over_rest(client_for, org, owner, member):
    client = client_for(owner)
    target = Membership.objects.get(user=member)
    response = client.patch(
        f"/api/orgs/{org.slug}/members/{target.pk}/",
        {"role": "admin"},
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["role"] == "admin"
    mine = Membership.objects.get(user=owner)
    refused = client.patch(
        f"/api/orgs/{org.slug}/members/{mine.pk}/",
        {"role": "viewer"},
        content_type="application/json",
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {
        "role": ["The last owner cannot be demoted; add another owner."]
    }
    removed = client.delete(f"/api/orgs/{org.slug}/members/{mine.pk}/")
    assert removed.status_code == 400
    error = removed.json()["error"]
    # An error of no one field reads as a sentence, without an internal name in front.
    assert error["message"].startswith("The last owner cannot be removed") and not error["fields"]
    mine.refresh_from_db()
    assert mine.role == Role.OWNER


def test_audit_log_over_rest_lists_key_events(client_for, org, owner):
    api_key_create(org=org, actor=owner, name="k", scopes=["read"])
    events = client_for(owner).get(f"/api/orgs/{org.slug}/audit/").json()["results"]
    assert [e["action"] for e in events][:1] == ["key.created"]
    assert events[0]["actor"] == owner.email


def test_every_field_error_is_a_list_of_messages(client_for, org, owner):
    """Whatever the nesting (a list's items, a check that gave a bare string), ``fields`` maps each
    field to a list of messages, as the schema says."""
    client = client_for(owner)
    too_long = client.post(
        f"/api/orgs/{org.slug}/webhooks/",
        {"url": "https://example.com/hook", "events": ["key.created", "x" * 70]},
        content_type="application/json",
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["fields"] == {
        "events": ["item 1: Ensure this field has no more than 64 characters."]
    }
    endpoint = client.post(
        f"/api/orgs/{org.slug}/endpoints/",
        {"name": "openai", "base_url": "https://api.example.com/v1", "model": "gpt"},
        content_type="application/json",
    ).json()
    renamed = client.patch(
        f"/api/orgs/{org.slug}/endpoints/{endpoint['id']}/",
        {"name": "other"},
        content_type="application/json",
    )
    assert renamed.status_code == 400
    assert renamed.json()["error"]["fields"] == {
        "name": ["The name cannot change: routes refer to the endpoint as external:NAME."]
    }


def test_an_address_under_api_that_nothing_answers_is_a_json_404(client_for, org, owner):
    client = client_for(owner)
    for path in (
        "/api/nothing/",
        f"/api/orgs/{org.slug}/deployments/not-a-uuid/",
        f"/api/orgs/{org.slug}/webhooks/deliveries/null,null/resend/",
    ):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer["Content-Type"] == "application/json"
        assert answer.json() == {
            "error": {"code": "not_found", "message": f"No API endpoint at {path}.", "fields": {}}
        }
    # A missing trailing slash is still redirected to the endpoint, and the console's own 404 is
    # still its page.
    assert client.get("/api/me").status_code == 301
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_a_failure_under_api_is_a_json_500(client_for, org, owner, monkeypatch):
    from console.api import views

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    monkeypatch.setattr(views.MeView, "get", broken)
    client = client_for(owner)
    client.raise_request_exception = False
    answer = client.get("/api/me/")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "server_error"
    assert "boom" not in answer.content.decode()


def test_callers_without_a_valid_credential_are_throttled_per_address(
    client, org, owner, monkeypatch
):
    cache.clear()
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/min"})
    valid = api_key_create(org=org, actor=owner, name="r", scopes=["read"]).secret
    answers = [
        client.get("/api/me/"),
        client.get("/api/orgs/acme/keys/", HTTP_AUTHORIZATION="Bearer sk-guess"),
        client.get("/api/schema/", HTTP_AUTHORIZATION="Bearer sk-guess"),
        client.get("/api/orgs/acme/keys/", HTTP_AUTHORIZATION="Bearer sk-guess"),
    ]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    throttled = answers[-1]
    assert throttled.json()["error"]["code"] == "throttled"
    assert 0 < int(throttled["Retry-After"]) <= 60
    # The address is the connection's (the server takes it from trusted proxies only), not an
    # X-Forwarded-For a client made up.
    assert client.get("/api/me/", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429
    # A valid key from the same address is counted by its own rate; another address by its own.
    assert client.get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {valid}").status_code == 200
    assert client.get("/api/me/", REMOTE_ADDR="192.0.2.7").status_code == 401


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        ("revoked", 401),
        ("expired", 401),
        ("suspended", 401),
        ("ip_not_allowed", 403),
        ("no_rest_scope", 403),
    ],
)
def test_a_refused_key_is_throttled_per_address_like_a_missing_one(
    client, org, owner, monkeypatch, refusal, status
):
    """Every key the REST API refuses counts, so one cannot be tried without limit (from outside
    its networks, say)."""
    from datetime import timedelta

    from django.utils import timezone

    from console.services.orgs import org_suspend

    cache.clear()
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/min"})
    created = api_key_create(
        org=org,
        actor=owner,
        name="r",
        scopes=["inference"] if refusal == "no_rest_scope" else ["read"],
        allowed_ips=["10.0.0.0/8"] if refusal == "ip_not_allowed" else [],
    )
    keys = ApiKey.objects.filter(pk=created.key.pk)
    if refusal == "revoked":
        keys.update(revoked_at=timezone.now())
    elif refusal == "expired":
        keys.update(expires_at=timezone.now() - timedelta(minutes=1))
    elif refusal == "suspended":
        org_suspend(org=org, reason="payment failed")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created.secret}", "REMOTE_ADDR": "192.0.2.9"}
    answers = [client.get(f"/api/orgs/{org.slug}/", **auth) for _ in range(4)]
    assert [a.status_code for a in answers] == [status, status, status, 429]
    assert answers[-1].json()["error"]["code"] == "throttled"
    # Another address is counted by its own.
    assert (
        client.get(f"/api/orgs/{org.slug}/", **{**auth, "REMOTE_ADDR": "192.0.2.10"}).status_code
        == status
    )


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_taken_in_any_case(client, org, owner, scheme):
    read = api_key_create(org=org, actor=owner, name="r", scopes=["read"]).secret
    answer = client.get("/api/me/", HTTP_AUTHORIZATION=f"{scheme} {read}")
    assert answer.status_code == 200 and answer.json()["key_prefix"]


def test_options_answers_anyone_who_may_see_the_organisation(
    client, client_for, org, owner, viewer, outsider
):
    read = api_key_create(org=org, actor=owner, name="r", scopes=["read"]).secret
    url = f"/api/orgs/{org.slug}/webhooks/"  # viewers and read keys may not use it otherwise
    for answer in (
        client_for(owner).options(url),
        client_for(viewer).options(url),
        client.options(url, HTTP_AUTHORIZATION=f"Bearer {read}"),
    ):
        assert answer.status_code == 200, answer.content
        assert "OPTIONS" in answer["Allow"] and answer.json()["name"] == "Webhook List"
    assert client_for(viewer).get(url).status_code == 403
    assert client_for(outsider).options(url).status_code == 404
    assert client.options(url).status_code == 401
