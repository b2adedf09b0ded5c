"""Writes to a person's own account.

Nothing here is audited: the audit log belongs to an organisation, and these changes belong to the
person, who may be in several organisations or none.
"""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.views.decorators.debug import sensitive_variables

from console.models import User


def user_update(*, user: User, first_name: str, last_name: str) -> User:
    user.first_name = first_name.strip()
    user.last_name = last_name.strip()
    user.save(update_fields=["first_name", "last_name"])
    return user


@sensitive_variables("password")
def user_password_change(*, user: User, password: str) -> User:
    """Give ``user`` a new password, checked by AUTH_PASSWORD_VALIDATORS (ValidationError if not).

    Checking the current password is the caller's job. The new hash changes the user's session
    auth hash, so every session the user has is signed out; a view that should keep the caller's
    own session calls ``update_session_auth_hash`` afterwards.
    """
    validate_password(password, user)
    user.set_password(password)
    user.save(update_fields=["password"])
    return user
