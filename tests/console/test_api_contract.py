"""Every REST answer a program reads matches the OpenAPI schema we publish at /api/schema/.

Clients generated from the schema trust it: a list documented as an array but answered as a page
object breaks them. Each GET under ``/api/orgs/{org_slug}/`` is called on an org holding one
object of every kind, and its JSON answer is validated against the schema's 200 response.
"""

from __future__ import annotations

import copy
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import jsonschema
import pytest
from django.utils import timezone

from billing.models import Budget
from console.api.access import Pages
from console.models import (
    ApiKey,
    Invitation,
    Membership,
    WebhookDelivery,
    WebhookEndpoint,
)
from console.services.keys import api_key_create
from tests.console.test_isolation import object_ids
from tests.factories import MembershipFactory, OrgFactory

ORG_PREFIX = "/api/orgs/{org_slug}/"


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable`` as JSON Schema's ``null`` type, everywhere in a schema."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items()}
    if converted.pop("nullable", False):
        if "type" in converted:
            kind = converted["type"]
            converted["type"] = [*kind, "null"] if isinstance(kind, list) else [kind, "null"]
            if "enum" in converted:
                converted["enum"] = [*converted["enum"], None]
        else:
            converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


@pytest.fixture
def published(client, org, owner):  # type: ignore[no-untyped-def]
    return client.get("/api/schema/?format=json").json()


def test_every_org_get_answers_what_the_schema_says(client, org, owner, published):
    ids = object_ids(org, owner)
    Budget.objects.create(org=org, amount_micros=50_000_000, hard_limit=True)  # else 404
    key = api_key_create(org=org, actor=owner, name="reader", scopes=["read", "manage"]).secret
    components = _json_schema(copy.deepcopy(published["components"]))
    checked = []
    for path, methods in published["paths"].items():
        operation = methods.get("get")
        if not path.startswith(ORG_PREFIX) or operation is None:
            continue
        response = operation["responses"].get("200", {})
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            continue  # CSV, streams
        names = re.findall(r"{(\w+)}", path)
        if any(name not in ids for name in names):
            raise AssertionError(f"teach object_ids the parameter of {path}")
        url = path
        for name in names:
            url = url.replace("{" + name + "}", ids[name])
        answer = client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}")
        assert answer.status_code == 200, (path, answer.content[:300])
        validator = jsonschema.Draft7Validator({**_json_schema(schema), "components": components})
        errors = [
            f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(answer.json())
        ]
        assert not errors, (path, errors[:5])
        checked.append(path)
    # Lists, details and reports alike.
    assert len(checked) >= 25, checked
    assert "/api/orgs/{org_slug}/keys/" in checked
    assert "/api/orgs/{org_slug}/keys/{key_id}/" in checked


def test_lists_are_documented_as_pages_with_limit_and_offset(published):
    for path in [
        "/api/orgs/",
        "/api/orgs/{org_slug}/members/",
        "/api/orgs/{org_slug}/invitations/",
        "/api/orgs/{org_slug}/keys/",
        "/api/orgs/{org_slug}/webhooks/",
        "/api/orgs/{org_slug}/webhooks/deliveries/",
        "/api/orgs/{org_slug}/deployments/",
        "/api/orgs/{org_slug}/routes/",
        "/api/orgs/{org_slug}/endpoints/",
    ]:
        operation = published["paths"][path]["get"]
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        page = published["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(page["properties"]) == {"count", "next", "previous", "results"}, path
        assert {"limit", "offset"} <= {p["name"] for p in operation["parameters"]}, path
    # The audit log grows while it is read: its pages follow a cursor.
    operation = published["paths"]["/api/orgs/{org_slug}/audit/"]["get"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = published["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(page["properties"]) == {"next", "results"}
    names = {p["name"] for p in operation["parameters"]}
    assert {"limit", "before"} <= names and "offset" not in names


def test_a_larger_limit_than_allowed_is_served_as_the_largest_page(client, org, owner, monkeypatch):
    for n in range(3):
        api_key_create(org=org, actor=owner, name=f"k{n}", scopes=["inference"])
    key = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    monkeypatch.setattr(Pages, "max_limit", 2)  # 500 in service; 2 keeps the test small
    page = client.get("/api/orgs/acme/keys/?limit=100000", HTTP_AUTHORIZATION=f"Bearer {key}")
    body = page.json()
    assert body["count"] == 4 and len(body["results"]) == 2
    assert "limit=2" in body["next"] and "offset=2" in body["next"]


def test_the_organisations_come_a_page_at_a_time(client, client_for, org, owner):
    for name in ("Beta", "Gamma"):
        MembershipFactory(org=OrgFactory(name=name, slug=name.lower()), user=owner)
    closed = OrgFactory(name="Alpha", slug="alpha", closed_at=timezone.now())
    MembershipFactory(org=closed, user=owner)
    mine = client_for(owner)
    first = mine.get("/api/orgs/?limit=2").json()
    assert first["count"] == 3 and first["previous"] is None
    assert [o["slug"] for o in first["results"]] == ["acme", "beta"]
    second = mine.get(first["next"]).json()
    assert [o["slug"] for o in second["results"]] == ["gamma"] and second["next"] is None
    refused = mine.get("/api/orgs/?limit=abc")
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"limit": ["Must be a whole number, at least 1."]}
    # A key acts in its own organisation only.
    key = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    page = client.get("/api/orgs/", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert page["count"] == 1 and [o["slug"] for o in page["results"]] == ["acme"]


def _same_time_rows(org, kind: str, when: datetime) -> None:  # type: ignore[no-untyped-def]
    """Three rows made at one instant, written in an order that is not their ids' order."""
    webhook = WebhookEndpoint.objects.create(
        org=org, url="https://example.com/h", secret_encrypted="x", created_at=when
    )
    for n in (2, 3, 1):
        pk = uuid.UUID(int=n)
        if kind == "members":
            MembershipFactory(id=pk, org=org, created_at=when)
        elif kind == "keys":
            ApiKey.objects.create(
                id=pk, org=org, name=f"k{n}", prefix="sk-x", digest=f"d{n}", created_at=when
            )
        elif kind == "invitations":
            Invitation.objects.create(
                id=pk,
                org=org,
                email=f"i{n}@example.com",
                role="viewer",
                token_digest=f"t{n}",
                expires_at=when + timedelta(days=999),
                created_at=when,
            )
        elif kind == "webhooks":
            WebhookEndpoint.objects.create(
                id=pk, org=org, url="https://example.com/h", secret_encrypted="x", created_at=when
            )
        else:
            WebhookDelivery.objects.create(
                id=pk, endpoint=webhook, event_type="e", payload={}, created_at=when
            )


@pytest.mark.parametrize(
    ("path", "model", "newest_first"),
    [
        ("members/", Membership, False),
        ("keys/", ApiKey, True),
        ("invitations/", Invitation, True),
        ("webhooks/", WebhookEndpoint, False),
        ("webhooks/deliveries/", WebhookDelivery, True),
    ],
)
def test_rows_of_one_instant_come_once_each_in_the_order_of_their_ids(
    client_for, org, owner, path, model, newest_first
):
    """Offsets count rows in a sort order; rows that sort alike need a tie-breaker, or a database
    may give them in another order on each page (PostgreSQL does), repeating and skipping some."""
    when = timezone.now() + timedelta(days=1)  # later than every other row
    kind = path.split("/")[-2]
    _same_time_rows(org, kind, when)
    client = client_for(owner)
    seen = []
    url = f"/api/orgs/{org.slug}/{path}?limit=1"
    while url:
        page = client.get(url).json()
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    tied = [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
    ours = [pk for pk in seen if pk in tied]
    assert ours == (tied[::-1] if newest_first else tied), ours
    assert len(seen) == len(set(seen))


def test_paging_parameters_that_are_not_whole_numbers_are_refused(client, org, owner):
    key = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    for query, name in [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("limit=2.5", "limit"),
        ("offset=-1", "offset"),
        ("offset=ten", "offset"),
    ]:
        answer = client.get(f"/api/orgs/acme/keys/?{query}", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert answer.status_code == 400, query
        error = answer.json()["error"]
        assert error["fields"][name] == [
            f"Must be a whole number, at least {1 if name == 'limit' else 0}."
        ], query
    # Empty parameters are as good as none; offset 0 and limit 1 are the smallest allowed.
    page = client.get("/api/orgs/acme/keys/?limit=&offset=", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert page.status_code == 200 and page.json()["count"] == 1
    page = client.get("/api/orgs/acme/keys/?limit=1&offset=0", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert len(page.json()["results"]) == 1


def test_error_answers_are_documented_and_match_their_schema(client, org, owner, published):
    reader = api_key_create(org=org, actor=owner, name="reader", scopes=["read"]).secret
    app = api_key_create(org=org, actor=owner, name="app", scopes=["inference"]).secret
    components = _json_schema(copy.deepcopy(published["components"]))
    cases = {
        "401": ("/api/orgs/acme/keys/", "sk-not-a-key"),
        "403": ("/api/orgs/acme/keys/", app),
        "404": ("/api/orgs/nobody/keys/", reader),
        "400": ("/api/orgs/acme/requests/?status=sideways", reader),
    }
    for code, (url, key) in cases.items():
        answer = client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}")
        assert str(answer.status_code) == code, (code, answer.content[:200])
        path = "/api/orgs/{org_slug}/" + url.split("/")[4] + "/"
        operation = published["paths"][path]["get"]
        schema = operation["responses"][code]["content"]["application/json"]["schema"]
        validator = jsonschema.Draft7Validator({**_json_schema(schema), "components": components})
        assert not list(validator.iter_errors(answer.json())), (code, answer.json())
    # Outside an organisation too: a key may not create one, and the schema says so.
    create = client.post("/api/orgs/", {"name": "X"}, HTTP_AUTHORIZATION=f"Bearer {reader}")
    assert create.status_code == 403
    assert "403" in published["paths"]["/api/orgs/"]["post"]["responses"]
    # A delete that is refused is a 400, and documented.
    member = published["paths"]["/api/orgs/{org_slug}/members/{member_id}/"]["delete"]
    assert "400" in member["responses"]
    me = Membership.objects.get(org=org, user=owner)
    client.force_login(owner)
    last_owner = client.delete(f"/api/orgs/acme/members/{me.pk}/")
    assert last_owner.status_code == 400
    validator = jsonschema.Draft7Validator(
        {
            **_json_schema(member["responses"]["400"]["content"]["application/json"]["schema"]),
            "components": components,
        }
    )
    assert not list(validator.iter_errors(last_owner.json()))


def test_the_schema_is_valid_openapi_without_warnings(tmp_path, db):
    from django.core.management import call_command

    out = tmp_path / "schema.json"
    # --validate checks it against the OpenAPI 3 specification; --fail-on-warn turns any of
    # drf-spectacular's guesses (an undescribed field, a name clash) into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.stat().st_size > 10_000
