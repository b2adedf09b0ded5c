"""Races that only a database with row locks can settle (PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections

from console.models import Membership
from console.permissions import Role
from console.services import members as members_service
from console.services.members import membership_change_role
from tests.factories import MembershipFactory, OrgFactory


@pytest.mark.postgres
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: SQLite has no row locks, SELECT FOR UPDATE is a no-op there",
)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(transactional_db, monkeypatch):
    org = OrgFactory()
    first = MembershipFactory(org=org, role=Role.OWNER)
    second = MembershipFactory(org=org, role=Role.OWNER)
    barrier = threading.Barrier(2)
    # Both demotions pause after counting the owners. Without row locks both see two owners and
    # both go ahead; with them the second count waits for the first commit, the pause times out
    # and the second count sees one owner.
    after_count = threading.Barrier(2, timeout=3)
    outcomes: list[str] = []
    original = members_service._owner_count

    def count_then_pause(org_):  # type: ignore[no-untyped-def]
        result = original(org_)
        try:
            after_count.wait()
        except threading.BrokenBarrierError:
            pass
        return result

    monkeypatch.setattr(members_service, "_owner_count", count_then_pause)

    def demote(membership: Membership) -> None:
        try:
            barrier.wait()
            membership_change_role(membership=membership, actor=membership, role=Role.VIEWER)
            outcomes.append("demoted")
        except ValidationError:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=demote, args=(m,)) for m in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["demoted", "refused"]
    assert Membership.objects.filter(org=org, role=Role.OWNER).count() == 1
