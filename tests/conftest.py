from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.db import connections
from django.test import Client
from django.test.utils import setup_databases, teardown_databases

from console.models import Membership, Organisation, User
from console.permissions import Role
from tests.factories import MembershipFactory, OrgFactory

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


# The database the settings name, before any test database replaces it in them.
CONFIGURED_DATABASE = settings.DATABASES["default"]["NAME"]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """pytest-django's test database, with a garbage collection before it is dropped: database
    connections that threads of finished test servers left in reference cycles stay open until
    one runs, and PostgreSQL refuses to drop a database others are connected to.

    pytest-django creates the test database only when a selected test asks for the database (a
    ``db`` fixture or marker). The module-scoped fixtures of the real-engine tests write through
    ``django_db_blocker`` instead; run alone (``-k``), they would otherwise write into the
    configured database itself, a developer's own. So it is created here in that case."""
    created = None
    if connections["default"].settings_dict["NAME"] == CONFIGURED_DATABASE:
        with django_db_blocker.unblock():
            created = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    assert connections["default"].settings_dict["NAME"] != CONFIGURED_DATABASE
    yield
    gc.collect()
    if created is not None:
        with django_db_blocker.unblock():
            teardown_databases(created, verbosity=0)


@pytest.fixture(autouse=True)
def _eager_tasks(settings):  # type: ignore[no-untyped-def]
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # Fast hashing: the tests create many users; production keeps Django's default hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Counted in a cache that outlives a test (Redis in CI): every test asks from 127.0.0.1,
    # often for the same factory addresses. The test of the limits sets them back.
    settings.PASSWORD_RESET_EMAILS_PER_HOUR = (10**6, 10**6)


@pytest.fixture
def mail_down(settings):  # type: ignore[no-untyped-def]
    """The mail server refuses connections; emails that cannot be sent are logged."""
    settings.EMAIL_BACKEND = "tests.mail_down.DownBackend"


@pytest.fixture
def mid_month() -> Iterator[datetime]:
    """The clock in the middle of a month (and of a day), still ticking: for tests about this
    month's or this day's figures, which would otherwise depend on when the suite runs (just after
    midnight, "two hours ago" is yesterday; on the 1st, "yesterday" is last month's spend)."""
    moment = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    with time_machine.travel(moment, tick=True):
        yield moment


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; tests that need it skip, with the reason, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is missing (it exists in CI and development checkouts)")
    return SHARED_DATA


@pytest.fixture
def org(db) -> Organisation:  # type: ignore[no-untyped-def]
    return OrgFactory(name="Acme", slug="acme")


@pytest.fixture
def owner(org: Organisation) -> User:
    return MembershipFactory(org=org, role=Role.OWNER).user


@pytest.fixture
def make_member(org: Organisation) -> Callable[[str], Membership]:
    def make(role: str) -> Membership:
        return MembershipFactory(org=org, role=role)

    return make


@pytest.fixture
def member(make_member: Callable[[str], Membership]) -> User:
    """A developer in ``org``."""
    return make_member(Role.DEVELOPER).user


@pytest.fixture
def viewer(make_member: Callable[[str], Membership]) -> User:
    return make_member(Role.VIEWER).user


@pytest.fixture
def outsider(db) -> User:  # type: ignore[no-untyped-def]
    """Someone with an organisation of their own, but not a member of ``org``."""
    return MembershipFactory(org=OrgFactory(name="Other", slug="other"), role=Role.OWNER).user


@pytest.fixture
def client_for() -> Callable[[User], Client]:
    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make
