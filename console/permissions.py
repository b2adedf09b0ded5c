"""The permission matrix: which role may do what. The one place the code asks.

docs/permissions.md renders the same table for people; a test checks the two agree.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


class Action(models.TextChoices):
    ORG_VIEW = "org.view", "See the organisation, its overview and its gateway rate limits"
    ORG_UPDATE = "org.update", "Rename the organisation"
    ORG_CLOSE = "org.close", "Close the organisation"
    MEMBERS_VIEW = "members.view", "See members and pending invitations"
    MEMBERS_INVITE = "members.invite", "Invite members, revoke invitations"
    MEMBERS_CHANGE_ROLE = "members.change_role", "Change a member's role"
    MEMBERS_REMOVE = "members.remove", "Remove a member"
    KEYS_VIEW = "keys.view", "See API keys (name, prefix, limits)"
    KEYS_MANAGE = "keys.manage", "Create, edit, roll and revoke API keys"
    AUDIT_VIEW = "audit.view", "Read the audit log"
    WEBHOOKS_MANAGE = "webhooks.manage", "Add, test and delete webhooks; see their deliveries"
    DEPLOYMENTS_VIEW = "deployments.view", "See deployments and replicas"
    DEPLOYMENTS_MANAGE = "deployments.manage", "Create, scale, pause and delete deployments"
    ROUTES_VIEW = "routes.view", "See routes"
    ROUTES_MANAGE = "routes.manage", "Create, edit and delete routes"
    USAGE_VIEW = "usage.view", "See usage and cost"
    BILLING_VIEW = "billing.view", "See the plan, invoices and payment method"
    BILLING_MANAGE = "billing.manage", "Change the plan, budgets and payment method"


_ALL = frozenset(Action)
_READ = frozenset(
    {
        Action.ORG_VIEW,
        Action.MEMBERS_VIEW,
        Action.KEYS_VIEW,
        Action.DEPLOYMENTS_VIEW,
        Action.ROUTES_VIEW,
        Action.USAGE_VIEW,
    }
)
_DEVELOPER = _READ | {Action.KEYS_MANAGE, Action.DEPLOYMENTS_MANAGE, Action.ROUTES_MANAGE}

MATRIX: dict[str, frozenset[Action]] = {
    Role.OWNER: _ALL,
    Role.ADMIN: _ALL - {Action.ORG_CLOSE},
    Role.DEVELOPER: frozenset(_DEVELOPER),
    Role.VIEWER: _READ,
}

# What an API key with each REST scope may do. `manage` acts like an admin except for member and
# billing changes, which need a person; `read` may only read.
SCOPE_MATRIX: dict[str, frozenset[Action]] = {
    "manage": frozenset(
        _DEVELOPER
        | {Action.AUDIT_VIEW, Action.BILLING_VIEW, Action.MEMBERS_INVITE, Action.WEBHOOKS_MANAGE}
    ),
    "read": _READ | {Action.AUDIT_VIEW},
}

# Only an owner may make someone an owner or change an owner's role.
OWNER_ONLY_ROLE = Role.OWNER


def role_can(role: str, action: Action) -> bool:
    return action in MATRIX.get(role, frozenset())


def scopes_can(scopes: list[str], action: Action) -> bool:
    return any(action in SCOPE_MATRIX.get(scope, frozenset()) for scope in scopes)


def role_may_assign(actor_role: str, target_current: str | None, target_new: str) -> bool:
    """Admins manage non-owners; only owners grant or take away the owner role."""
    if actor_role == Role.OWNER:
        return True
    if actor_role == Role.ADMIN:
        return target_new != Role.OWNER and target_current != Role.OWNER
    return False


# Reading is open to anyone the matrix allows; every change also needs a confirmed email address
# (a person acting in a session: keys are made by people who had one).
READ_ACTIONS = _READ | {Action.AUDIT_VIEW, Action.BILLING_VIEW}
UNCONFIRMED_EMAIL_MESSAGE = (
    "Confirm your email address first: open the link we emailed to {email} "
    "(your account page sends it again)."
)


def needs_confirmed_email(action: Action) -> bool:
    return action not in READ_ACTIONS
