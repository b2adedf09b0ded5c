"""Each role gets exactly what the permission matrix grants, action by action, over HTTP."""

from __future__ import annotations

import pytest

from console.permissions import Action, Role, role_can, scopes_can
from console.services.keys import api_key_create
from tests.console.test_isolation import object_ids
from tests.console.urlwalk import org_patterns
from tests.factories import MembershipFactory

ROLES = list(Role)


def _console_cases():  # type: ignore[no-untyped-def]
    for pattern in org_patterns():
        action = getattr(pattern.callback, "required_action", None)
        if action is not None:
            yield (
                pattern,
                "post"
                if pattern.route.rstrip("/").split("/")[-1]
                in {"new", "revoke", "role", "remove", "invite", "leave", "delete", "try", "upload"}
                | {"scale", "pause", "resume"}
                else "get",
                action,
            )


def _api_cases():  # type: ignore[no-untyped-def]
    for pattern in org_patterns():
        view_class = getattr(pattern.callback, "view_class", None)
        for method, action in getattr(view_class, "actions", {}).items():
            yield pattern, method.lower(), action


CASES = list(_console_cases()) + list(_api_cases())


def test_matrix_covers_every_action_somewhere():
    covered = {action for _, _, action in CASES}
    # Billing and deployments actions are covered by their own pages as they arrive.
    assert {
        Action.KEYS_MANAGE,
        Action.MEMBERS_INVITE,
        Action.AUDIT_VIEW,
        Action.ORG_UPDATE,
    } <= covered


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("pattern", "method", "action"), CASES, ids=lambda v: getattr(v, "name", str(v))
)
def test_role_gets_403_exactly_when_the_matrix_says_no(
    role, pattern, method, action, org, owner, client_for
):
    ids = object_ids(org, owner)
    url = pattern.build(ids)
    actor = MembershipFactory(org=org, role=role).user
    response = getattr(client_for(actor), method)(url, data={}, content_type="application/json")
    if role_can(role, action):
        assert response.status_code != 403, (url, method, role)
    else:
        assert response.status_code == 403, (url, method, role, response.status_code)


@pytest.mark.parametrize("scope", ["read", "manage"])
def test_api_keys_get_what_their_scope_allows(scope, org, owner, client):
    secret = api_key_create(org=org, actor=owner, name="k", scopes=[scope]).secret
    ids = object_ids(org, owner)
    for pattern, method, action in _api_cases():
        response = getattr(client, method)(
            pattern.build(ids),
            data={},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        allowed = scopes_can([scope], action) and (scope == "manage" or method == "get")
        assert (response.status_code == 403) is (not allowed), (
            pattern.route,
            method,
            scope,
            response.status_code,
        )


def test_inference_only_key_cannot_use_the_rest_api(org, owner, client):
    secret = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).secret
    response = client.get(f"/api/orgs/{org.slug}/keys/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 403
    assert "scope" in response.json()["error"]["message"]
