"""The OpenAPI schema tells an API user who may call each operation, in the API's own terms."""

from __future__ import annotations

from console.api.schema import permission_line
from console.permissions import Action


def test_every_org_operation_names_the_permission_it_needs(client_for, owner):
    schema = client_for(owner).get("/api/schema/?format=json").json()
    operations = {
        (path, method): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if path.startswith("/api/orgs/{org_slug}/")
    }
    assert len(operations) > 30
    for (path, method), operation in operations.items():
        description = operation.get("description", "")
        # Not the base view's docstring, which is about the code.
        assert "Base for" not in description and "actions" not in description, (path, method)
        assert "Needs `" in description, (path, method)

    revoke = operations[("/api/orgs/{org_slug}/keys/{key_id}/revoke/", "post")]["description"]
    assert revoke.endswith(permission_line(Action.KEYS_MANAGE))


def test_the_permission_line_follows_the_matrix():
    assert permission_line(Action.KEYS_MANAGE) == (
        f"Needs `keys.manage` ({Action.KEYS_MANAGE.label}): roles owner, admin, developer; "
        "API keys with the `manage` scope."
    )
    assert permission_line(Action.ORG_VIEW).endswith("with the `manage` or `read` scope.")
    assert permission_line(Action.MEMBERS_REMOVE).endswith("API keys cannot do this.")
