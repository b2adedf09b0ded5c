"""Editing an API key in place: the service, the console's Edit page and PATCH over the REST API.

The key itself never changes, so programs using it keep working; what they may do changes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.forms.models import model_to_dict
from django.utils import timezone

from console.models import ApiKey, AuditEvent
from console.services.keys import (
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    api_key_update,
)
from console.snapshot import snapshot_version

LATER = datetime(2099, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def created(org, owner):  # type: ignore[no-untyped-def]
    return api_key_create(
        org=org,
        actor=owner,
        name="ci",
        scopes=["inference", "read"],
        allowed_models=["llama", "qwen"],
        rpm_limit=60,
        tpm_limit=10_000,
        expires_at=LATER,
    )


@pytest.fixture
def key(created) -> ApiKey:  # type: ignore[no-untyped-def]
    return created.key


def stored(key: ApiKey) -> dict:
    return model_to_dict(ApiKey.objects.get(pk=key.pk))


def updates() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="key.updated"))


# The service


@pytest.mark.parametrize(
    ("field", "value", "after"),
    [
        ("name", "  ci-renamed ", "ci-renamed"),
        ("scopes", ["read"], ["read"]),
        ("allowed_models", [" mistral ", "llama", "llama"], ["llama", "mistral"]),
        ("allowed_models", [], []),
        ("rpm_limit", 120, 120),
        ("rpm_limit", None, None),
        ("tpm_limit", 5, 5),
        ("tpm_limit", None, None),
        ("expires_at", None, None),
    ],
)
def test_only_the_given_field_changes_and_is_audited_with_before_and_after(
    key, owner, field, value, after
):
    before = stored(key)
    updated = api_key_update(key=key, actor=owner, **{field: value})
    assert getattr(updated, field) == after
    now = stored(key)
    assert now[field] == after
    assert {k: v for k, v in now.items() if k != field} == {
        k: v for k, v in before.items() if k != field
    }
    (event,) = updates()
    assert (event.actor, event.target_id) == (owner, str(key.pk))
    shown_before = before[field].isoformat() if field == "expires_at" else before[field]
    assert event.data == {field: {"before": shown_before, "after": after}}


def test_a_new_expiry_is_stored_and_audited_as_text(key, owner):
    new_expiry = timezone.now() + timedelta(days=3)
    api_key_update(key=key, actor=owner, expires_at=new_expiry)
    assert stored(key)["expires_at"] == new_expiry
    assert updates()[0].data == {
        "expires_at": {"before": LATER.isoformat(), "after": new_expiry.isoformat()}
    }


def test_several_fields_change_in_one_event_and_the_key_still_authenticates(created, key, owner):
    api_key_update(key=key, actor=owner, name="prod", allowed_models=["llama"], rpm_limit=None)
    (event,) = updates()
    assert set(event.data) == {"name", "allowed_models", "rpm_limit"}
    auth = api_key_authenticate(created.secret)
    assert (auth.key.pk, auth.key.name, auth.key.allowed_models) == (key.pk, "prod", ["llama"])


def test_the_audit_never_holds_the_secret_or_the_digest(created, key, owner):
    api_key_update(key=key, actor=owner, name="renamed", scopes=["inference"])
    event = AuditEvent.objects.values().get(action="key.updated")
    text = json.dumps(event, default=str)
    assert key.digest not in text
    assert created.secret not in text
    assert created.secret[10:30] not in text


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "  "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["root"]}, "scopes"),
        ({"allowed_models": ["m" * 201]}, "allowed_models"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"tpm_limit": -5}, "tpm_limit"),
        ({"rpm_limit": True}, "rpm_limit"),
        ({"expires_at": timezone.now() - timedelta(days=1)}, "expires_at"),
        # A good change beside a bad one is not applied either.
        ({"name": "fine", "rpm_limit": 0}, "rpm_limit"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(
    key, owner, changes, field, django_capture_on_commit_callbacks
):
    before = stored(key)
    version = snapshot_version()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError) as error:
        api_key_update(key=key, actor=owner, **changes)
    assert field in error.value.message_dict
    assert stored(key) == before
    assert updates() == []
    assert snapshot_version() == version


def test_scopes_can_be_narrowed_but_not_widened(key, owner):
    with pytest.raises(ValidationError) as error:
        api_key_update(key=key, actor=owner, scopes=["inference", "manage"])
    assert "manage" in error.value.message_dict["scopes"][0]
    assert stored(key)["scopes"] == ["inference", "read"]
    api_key_update(key=key, actor=owner, scopes=["inference"])
    assert stored(key)["scopes"] == ["inference"]


def test_a_revoked_key_cannot_be_edited(key, owner):
    api_key_revoke(key=key, actor=owner)
    before = stored(key)
    with pytest.raises(ValidationError, match="revoked"):
        api_key_update(key=key, actor=owner, name="again")
    assert stored(key) == before
    assert updates() == []


def test_a_key_revoked_since_it_was_loaded_cannot_be_edited(key, owner):
    stale = ApiKey.objects.get(pk=key.pk)
    api_key_revoke(key=key, actor=owner)
    with pytest.raises(ValidationError, match="revoked"):
        api_key_update(key=stale, actor=owner, rpm_limit=1)
    assert stored(key)["rpm_limit"] == 60


def test_an_expired_key_keeps_its_expiry_unless_given_a_future_one(created, key, owner):
    past = timezone.now() - timedelta(minutes=1)
    ApiKey.objects.filter(pk=key.pk).update(expires_at=past)
    # Sending back the stored expiry is no change, even though it is past.
    api_key_update(key=key, actor=owner, name="renamed", expires_at=past)
    assert (stored(key)["name"], stored(key)["expires_at"]) == ("renamed", past)
    assert set(updates()[0].data) == {"name"}
    api_key_update(key=key, actor=owner, expires_at=LATER)
    assert api_key_authenticate(created.secret).key.pk == key.pk


def test_nothing_changed_records_nothing_and_tells_no_gateway(
    key, owner, django_capture_on_commit_callbacks
):
    version = snapshot_version()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        api_key_update(
            key=key,
            actor=owner,
            name="ci",
            scopes=["read", "inference"],
            allowed_models=["qwen", "llama"],
            rpm_limit=60,
            tpm_limit=10_000,
            expires_at=LATER,
        )
        api_key_update(key=key, actor=owner)
    assert callbacks == []
    assert snapshot_version() == version
    assert updates() == []


def test_a_change_tells_the_gateways(key, owner, django_capture_on_commit_callbacks):
    version = snapshot_version()
    with django_capture_on_commit_callbacks(execute=True):
        api_key_update(key=key, actor=owner, rpm_limit=1)
    assert snapshot_version() > version


def test_fields_that_are_not_editable_are_refused(key, owner):
    with pytest.raises(TypeError, match="digest"):
        api_key_update(key=key, actor=owner, **{"digest": "0" * 64})  # type: ignore[arg-type]
    assert stored(key)["digest"] == key.digest


# The console


def edit_url(org, key) -> str:  # type: ignore[no-untyped-def]
    return f"/o/{org.slug}/keys/{key.pk}/edit/"


def as_shown(key: ApiKey) -> dict:
    """The edit form's fields as the page prefills them, as a browser would send them back."""
    return {
        "name": key.name,
        "scopes": key.scopes,
        "allowed_models": ", ".join(key.allowed_models),
        "expires_at": key.expires_at.strftime("%Y-%m-%dT%H:%M:%S") if key.expires_at else "",
        "rpm_limit": key.rpm_limit or "",
        "tpm_limit": key.tpm_limit or "",
    }


def test_the_edit_page_is_prefilled_from_the_key(client_for, org, owner, key):
    html = client_for(owner).get(edit_url(org, key)).content.decode()
    assert 'value="ci"' in html
    assert 'value="llama, qwen"' in html
    assert 'value="2099-01-02T03:04:05"' in html
    assert 'value="60"' in html and 'value="10000"' in html
    checked = re.findall(r'name="scopes" value="(\w+)" id="\w+" checked', html)
    assert checked == ["inference", "read"]


def test_owner_edits_a_key_and_is_sent_back_to_the_list(client_for, org, owner, key):
    client = client_for(owner)
    form = {**as_shown(key), "name": "prod", "allowed_models": "llama", "rpm_limit": ""}
    response = client.post(edit_url(org, key), form, follow=True)
    assert response.redirect_chain == [(f"/o/{org.slug}/keys/", 302)]
    assert "Key “prod” saved." in response.content.decode()
    key.refresh_from_db()
    assert (key.name, key.allowed_models, key.rpm_limit) == ("prod", ["llama"], None)
    # The untouched expiry keeps its exact value although the form shows whole seconds.
    assert key.expires_at == LATER
    assert set(updates()[0].data) == {"name", "allowed_models", "rpm_limit"}


def test_developers_edit_keys_too(client_for, org, member, key):
    response = client_for(member).post(edit_url(org, key), {**as_shown(key), "tpm_limit": "7"})
    assert response.status_code == 302
    assert stored(key)["tpm_limit"] == 7


def test_clearing_the_expiry_removes_it(client_for, org, owner, key):
    response = client_for(owner).post(edit_url(org, key), {**as_shown(key), "expires_at": ""})
    assert response.status_code == 302
    assert stored(key)["expires_at"] is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"rpm_limit": "0"}, "rpm_limit"),
        ({"scopes": ["inference", "manage"]}, "scopes"),  # refused by the service
        ({"expires_at": "2001-01-01T00:00"}, "expires_at"),
    ],
)
def test_bad_input_is_shown_with_400_and_changes_nothing(
    client_for, org, owner, key, change, field
):
    before = stored(key)
    response = client_for(owner).post(edit_url(org, key), {**as_shown(key), **change})
    assert response.status_code == 400
    form = response.context["form"]
    assert field in form.errors
    assert stored(key) == before
    assert updates() == []


def test_a_revoked_key_cannot_be_edited_from_the_console(client_for, org, owner, key):
    api_key_revoke(key=key, actor=owner)
    client = client_for(owner)
    page = client.get(edit_url(org, key))
    assert "cannot be changed" in page.content.decode()
    assert 'name="name"' not in page.content.decode()
    before = stored(key)
    response = client.post(edit_url(org, key), {**as_shown(key), "name": "again"})
    assert response.status_code == 400
    assert stored(key) == before
    list_html = client.get(f"/o/{org.slug}/keys/").content.decode()
    assert edit_url(org, key) not in list_html


def test_the_key_list_links_to_edit_for_those_who_may(client_for, org, owner, viewer, key):
    assert edit_url(org, key) in client_for(owner).get(f"/o/{org.slug}/keys/").content.decode()
    assert edit_url(org, key) not in client_for(viewer).get(f"/o/{org.slug}/keys/").content.decode()


def test_viewer_gets_403_and_changes_nothing(client_for, org, viewer, key):
    client = client_for(viewer)
    before = stored(key)
    assert client.get(edit_url(org, key)).status_code == 403
    assert client.post(edit_url(org, key), {**as_shown(key), "name": "x"}).status_code == 403
    assert stored(key) == before


def test_outsider_gets_404(client_for, org, outsider, key):
    client = client_for(outsider)
    assert client.get(edit_url(org, key)).status_code == 404
    assert client.post(edit_url(org, key), {**as_shown(key), "name": "x"}).status_code == 404
    assert stored(key)["name"] == "ci"


# The REST API


def api_url(org, key) -> str:  # type: ignore[no-untyped-def]
    return f"/api/orgs/{org.slug}/keys/{key.pk}/"


def patch(client, url, body, secret=None):  # type: ignore[no-untyped-def]
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    return client.patch(url, json.dumps(body), content_type="application/json", **headers)


def test_a_manage_key_patches_a_key_and_gets_it_back_without_secrets(client, org, owner, key):
    manager = api_key_create(org=org, actor=owner, name="ops", scopes=["manage"])
    response = patch(
        client,
        api_url(org, key),
        {"allowed_models": ["llama"], "rpm_limit": 5, "expires_at": None},
        manager.secret,
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["allowed_models"], body["rpm_limit"], body["expires_at"]) == (["llama"], 5, None)
    assert (body["name"], body["tpm_limit"]) == ("ci", 10_000)  # left out, so unchanged
    assert "key" not in body and "digest" not in body
    assert key.digest not in response.content.decode()
    event = AuditEvent.objects.get(action="key.updated")
    assert event.actor_key_id == manager.key.pk
    assert set(event.data) == {"allowed_models", "rpm_limit", "expires_at"}


def test_a_member_patches_by_session(client_for, org, member, key):
    response = patch(client_for(member), api_url(org, key), {"name": "renamed"})
    assert response.status_code == 200
    assert response.json()["name"] == "renamed"


@pytest.mark.parametrize("scopes", [["inference"], ["read"]])
def test_keys_without_the_manage_scope_are_refused(client, org, owner, key, scopes):
    secret = api_key_create(org=org, actor=owner, name="other", scopes=scopes).secret
    before = stored(key)
    response = patch(client, api_url(org, key), {"name": "taken"}, secret)
    assert response.status_code == 403
    assert stored(key) == before


def test_viewer_session_is_refused(client_for, org, viewer, key):
    assert patch(client_for(viewer), api_url(org, key), {"name": "x"}).status_code == 403
    assert stored(key)["name"] == "ci"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"scopes": ["wizard"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["inference", "manage"]}, "scopes"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"tpm_limit": "many"}, "tpm_limit"),
        ({"allowed_models": "llama"}, "allowed_models"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(client_for, org, owner, key, body, field):
    before = stored(key)
    response = patch(client_for(owner), api_url(org, key), body)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert stored(key) == before
    assert updates() == []


def test_patching_a_revoked_key_is_a_clear_400(client_for, org, owner, key):
    api_key_revoke(key=key, actor=owner)
    response = patch(client_for(owner), api_url(org, key), {"name": "again"})
    assert response.status_code == 400
    assert "revoked" in response.json()["error"]["message"]
    assert stored(key)["name"] == "ci"
