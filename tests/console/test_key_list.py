"""The console's keys page with many keys: 50 a page, newest first, a search by name or the start
of the key, and a revoke that keeps the page it was made from."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from console.models import ApiKey
from console.services.keys import api_key_create
from tests.factories import OrgFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def many(org, owner):  # type: ignore[no-untyped-def]
    """120 keys, created a minute apart: key 119 is the newest."""
    created = [
        api_key_create(org=org, actor=owner, name=f"customer {i:03d}", scopes=["inference"])
        for i in range(120)
    ]
    start = timezone.now() - timedelta(hours=3)
    for i, item in enumerate(created):
        ApiKey.objects.filter(pk=item.key.pk).update(created_at=start + timedelta(minutes=i))
    return created


def _names(page) -> list[str]:  # type: ignore[no-untyped-def]
    return re.findall(r'<tr data-key="([^"]+)">', page.content.decode())


def test_keys_come_50_a_page_newest_first(client_for, owner, org, many):
    client = client_for(owner)
    first = client.get(f"/o/{org.slug}/keys/")
    assert _names(first) == [f"customer {i:03d}" for i in range(119, 69, -1)]
    assert "Keys 1\u201350 of 120." in first.content.decode()
    third = client.get(f"/o/{org.slug}/keys/", {"page": 3})
    assert _names(third) == [f"customer {i:03d}" for i in range(19, -1, -1)]
    assert 'href="?page=2">Newer</a>' in third.content.decode()
    # A page past the end, or not a number, shows the last or the first page.
    assert _names(client.get(f"/o/{org.slug}/keys/", {"page": 99})) == _names(third)
    assert _names(client.get(f"/o/{org.slug}/keys/", {"page": "x"})) == _names(first)


def test_search_by_name_or_the_start_of_the_key(client_for, owner, org, many):
    client = client_for(owner)
    page = client.get(f"/o/{org.slug}/keys/", {"q": "Customer 10"})
    assert _names(page) == [f"customer {i:03d}" for i in range(109, 99, -1)]
    assert 'data-testid="key-pages"' not in page.content.decode()  # one page: no pager
    prefix = many[7].key.prefix
    assert _names(client.get(f"/o/{org.slug}/keys/", {"q": prefix})) == ["customer 007"]
    nothing = client.get(f"/o/{org.slug}/keys/", {"q": "nobody"})
    assert _names(nothing) == []
    assert "No keys match “nobody”." in nothing.content.decode()
    # Another organisation's keys are never found.
    other = api_key_create(
        org=OrgFactory(name="B", slug="b"), actor=None, name="customer 500", scopes=["inference"]
    )
    assert _names(client.get(f"/o/{org.slug}/keys/", {"q": other.key.prefix})) == []


def test_a_revoke_keeps_the_page_and_search(client_for, owner, org, many):
    client = client_for(owner)
    page = client.get(f"/o/{org.slug}/keys/", {"q": "customer 0", "page": 2})
    target = many[5].key
    action = f"/o/{org.slug}/keys/{target.id}/revoke/?q=customer+0&amp;page=2"
    assert f'action="{action}"' in page.content.decode()
    response = client.post(action.replace("&amp;", "&"))
    assert response.status_code == 302
    assert response["Location"] == f"/o/{org.slug}/keys/?q=customer+0&page=2"
    assert ApiKey.objects.get(pk=target.pk).revoked_at is not None
    swapped = client.post(action.replace("&amp;", "&"), HTTP_HX_REQUEST="true")
    assert swapped.status_code == 200
    assert _names(swapped) == _names(
        client.get(f"/o/{org.slug}/keys/", {"q": "customer 0", "page": 2})
    )
