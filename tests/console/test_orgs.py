from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from console.models import Membership, Organisation
from console.permissions import Role
from console.services.orgs import org_create
from tests.factories import UserFactory


def test_creator_becomes_owner_and_slug_is_derived(db):
    user = UserFactory()
    org = org_create(name="Acme Labs", owner=user)
    assert org.slug == "acme-labs"
    assert Membership.objects.get(org=org, user=user).role == Role.OWNER
    second = org_create(name="Acme Labs", owner=user)
    assert second.slug == "acme-labs-2"


@pytest.mark.parametrize(
    ("name", "slug", "field"),
    [
        ("", None, "name"),
        ("   ", None, "name"),
        ("x" * 101, None, "name"),
        ("Ok", "Bad Slug!", "slug"),
        ("Ok", "acme", "slug"),
        ("Ok", "admin", "slug"),
    ],
)
def test_bad_org_input_changes_nothing(org, name, slug, field):
    before = Organisation.objects.count()
    with pytest.raises(ValidationError) as error:
        org_create(name=name, slug=slug, owner=UserFactory())
    assert field in error.value.message_dict
    assert Organisation.objects.count() == before


def test_user_can_belong_to_several_orgs_and_switch(client_for, org, owner):
    other = org_create(name="Second", owner=owner)
    client = client_for(owner)
    assert client.get(f"/o/{org.slug}/").status_code == 200
    page = client.get(f"/o/{other.slug}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"/o/{org.slug}/" in html and f"/o/{other.slug}/" in html  # the switcher
