"""API keys limited to IP addresses or networks: what is stored, and the REST API's check (the
gateway's is in tests/gateway/test_errors.py)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from console.models import ApiKey
from console.services.keys import api_key_create, api_key_update, ip_allowed

pytestmark = pytest.mark.django_db


def test_networks_are_normalised(org, owner):
    created = api_key_create(
        org=org,
        actor=owner,
        name="ci",
        scopes=["read"],
        allowed_ips=[" 10.1.2.3/8", "203.0.113.7", "2001:db8::1/32", "203.0.113.7/32", ""],
    )
    assert created.key.allowed_ips == ["10.0.0.0/8", "203.0.113.7/32", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("networks", "address", "allowed"),
    [
        ([], "198.51.100.1", True),
        (["10.0.0.0/8"], "10.200.0.1", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "::ffff:10.0.0.1", True),
        (["2001:db8::/32"], "2001:db8::5", True),
        (["10.0.0.0/8"], "", False),
        (["10.0.0.0/8"], "not-an-address", False),
    ],
)
def test_ip_allowed(networks, address, allowed):
    assert ip_allowed(networks, address) is allowed


def test_a_bad_entry_is_named_and_changes_nothing(org, owner):
    created = api_key_create(
        org=org, actor=owner, name="ci", scopes=["read"], allowed_ips=["10.0.0.0/8"]
    )
    with pytest.raises(ValidationError) as caught:
        api_key_update(key=created.key, actor=owner, allowed_ips=["10.0.0.0/8", "10.0.0.300"])
    assert caught.value.message_dict == {
        "allowed_ips": ["“10.0.0.300” is not an IP address or network (CIDR)."]
    }
    assert ApiKey.objects.get(pk=created.key.pk).allowed_ips == ["10.0.0.0/8"]
    with pytest.raises(ValidationError, match="At most 50"):
        api_key_update(
            key=created.key, actor=owner, allowed_ips=[f"10.0.{i}.0/24" for i in range(51)]
        )


def test_the_rest_api_refuses_a_key_from_elsewhere(org, owner):
    created = api_key_create(
        org=org, actor=owner, name="ci", scopes=["read"], allowed_ips=["10.0.0.0/8"]
    )
    url = f"/api/orgs/{org.slug}/"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created.secret}"}
    refused = Client(REMOTE_ADDR="192.0.2.9").get(url, **auth)
    assert refused.status_code == 403
    assert "may not be used from this address: 192.0.2.9" in refused.json()["error"]["message"]
    assert Client(REMOTE_ADDR="10.9.8.7").get(url, **auth).status_code == 200


def test_the_console_sets_and_clears_them(org, owner, client_for):
    client = client_for(owner)
    response = client.post(
        reverse("key_create", args=[org.slug]),
        {
            "name": "office",
            "scopes": ["inference"],
            "allowed_ips": "198.51.100.0/24, 2001:db8::/48",
        },
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(name="office")
    assert key.allowed_ips == ["198.51.100.0/24", "2001:db8::/48"]
    assert (
        b"from: 198.51.100.0/24, 2001:db8::/48"
        in client.get(reverse("key_list", args=[org.slug])).content
    )
    edit = reverse("key_edit", args=[org.slug, key.id])
    bad = client.post(edit, {"name": "office", "scopes": ["inference"], "allowed_ips": "nope"})
    assert bad.status_code == 400 and "“nope” is not an IP address" in bad.content.decode()
    assert ApiKey.objects.get(pk=key.pk).allowed_ips == ["198.51.100.0/24", "2001:db8::/48"]
    client.post(edit, {"name": "office", "scopes": ["inference"], "allowed_ips": ""})
    assert ApiKey.objects.get(pk=key.pk).allowed_ips == []
