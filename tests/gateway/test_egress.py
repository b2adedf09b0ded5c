"""External endpoints may not point the gateway at the platform's own network (SSRF): refused
when saved, and again when the gateway connects, unless the operator's allow-list admits them.

No real DNS exists here, so names are resolved by patching ``egress.host_resolve``, the one
function through which both the validation and the gateway's connections resolve."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from console.services.keys import api_key_create
from inference.models import ExternalEndpoint
from inference.routing import egress
from inference.routing.egress import EgressPolicy, egress_policy
from inference.services.routes import external_endpoint_create, route_create
from tests.gateway.conftest import make_deployment

CHAT = {"model": "outside", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def dns(monkeypatch):  # type: ignore[no-untyped-def]
    """A resolver answering from a dict that a test may change between lookups."""
    answers: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    monkeypatch.setattr(egress, "host_resolve", resolve)
    return answers


def create(org, owner, base_url: str) -> ExternalEndpoint:  # type: ignore[no-untyped-def]
    return external_endpoint_create(
        org=org, actor=owner, name="partner", base_url=base_url, model="big", api_key="sk-x"
    )


@pytest.mark.parametrize(
    ("base_url", "says"),
    [
        ("http://127.0.0.1:8000/v1", "127.0.0.1 is a loopback address"),
        ("http://[::1]:8000/v1", "::1 is a loopback address"),
        ("http://10.1.2.3/v1", "10.1.2.3 is a private address"),
        ("https://192.168.1.20/v1", "192.168.1.20 is a private address"),
        ("http://[fd00::5]/v1", "fd00::5 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/v1", "fe80::1 is a link-local address"),
        ("http://224.0.0.251/v1", "224.0.0.251 is a multicast address"),
        ("http://240.0.0.1/v1", "240.0.0.1 is a reserved address"),
        ("http://0.0.0.0:8000/v1", "0.0.0.0 is an unspecified address"),
        ("http://[::ffff:10.0.0.1]/v1", "::ffff:10.0.0.1 is a private address"),
        ("http://100.64.0.1/v1", "100.64.0.1 is not a public address"),
        # NAT64: a translator would reach the IPv4 address inside.
        ("http://[64:ff9b::a00:5]/v1", "64:ff9b::a00:5 is a private address"),
        ("http://[64:ff9b::7f00:1]/v1", "64:ff9b::7f00:1 is a loopback address"),
        ("http://[64:ff9b:1::a00:5]/v1", "64:ff9b:1::a00:5 is a private address"),
        (
            "http://internal.example/v1",
            "internal.example resolves to a private or internal address",
        ),
    ],
)
def test_endpoint_on_a_non_public_address_is_refused_on_the_field(dns, org, owner, base_url, says):
    # A name is refused when any one of its addresses is not public.
    dns["internal.example"] = ["93.184.216.34", "10.0.0.7"]
    with pytest.raises(ValidationError) as caught:
        create(org, owner, base_url)
    message = caught.value.message_dict["base_url"][0]
    assert says in message
    assert "GATEWAY_EXTERNAL_ALLOW" in message
    assert not ExternalEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("allow", "base_url"),
    [
        (["127.0.0.1"], "http://127.0.0.1:8000/v1"),
        (["10.0.0.0/8"], "http://10.1.2.3/v1"),
        (["::1"], "http://[::1]:8000/v1"),
        (["internal.example"], "http://internal.example/v1"),
        (["10.0.0.0/8"], "http://internal.example/v1"),
    ],
)
def test_operator_allow_list_admits_hosts_addresses_and_ranges(
    dns, settings, org, owner, allow, base_url
):
    dns["internal.example"] = ["10.0.0.7"]
    settings.GATEWAY_EXTERNAL_ALLOW = allow
    assert create(org, owner, base_url).base_url == base_url


def test_public_addresses_and_names_not_resolvable_yet_are_accepted(dns, org, owner):
    dns["api.partner.example"] = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert create(org, owner, "https://api.partner.example/v1")
    ExternalEndpoint.objects.all().delete()
    assert create(org, owner, "https://8.8.8.8/v1")
    ExternalEndpoint.objects.all().delete()
    assert create(org, owner, "https://[64:ff9b::808:808]/v1")  # 8.8.8.8 through NAT64
    ExternalEndpoint.objects.all().delete()
    # Not registered yet: accepted, and checked again when the gateway connects.
    assert create(org, owner, "https://later.partner.example/v1")


def test_rest_api_refuses_a_private_endpoint_with_the_field_named(client, dns, org, owner):
    secret = api_key_create(org=org, actor=owner, name="ci", scopes=["manage"]).secret
    response = client.post(
        f"/api/orgs/{org.slug}/endpoints/",
        {"name": "meta", "base_url": "http://169.254.169.254/v1", "model": "m"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert "169.254.169.254 is a link-local address" in fields["base_url"][0]
    assert not ExternalEndpoint.objects.exists()


def test_bad_allow_list_entries_fail_loudly():
    with pytest.raises(ImproperlyConfigured, match="GATEWAY_EXTERNAL_ALLOW: 'not a host!'"):
        egress_policy(("not a host!",))
    policy = egress_policy(("10.0.0.0/8", "Internal.Example.", "[::1]"))
    assert policy.host_allowed("internal.example")
    assert policy == EgressPolicy(
        frozenset({"internal.example"}),
        (egress.ipaddress.ip_network("10.0.0.0/8"), egress.ipaddress.ip_network("::1/128")),
    )


def test_gateway_refuses_a_name_that_resolves_to_a_private_address_at_connect_time(
    start_gateway, dns, engine, org, owner, inference_key, caplog
):
    """DNS rebinding: the name resolved to a public address when the endpoint was saved and
    resolves to loopback when the gateway connects."""
    fake, server = engine
    host = "api.partner.example"
    dns[host] = ["93.184.216.34"]
    create(org, owner, f"http://{host}:{server.port}/v1")
    route_create(
        org=org, actor=owner, name="outside", policy="single", config={"target": "external:partner"}
    )
    make_deployment(org, "tiny", [server.port])  # our own replica, on 127.0.0.1
    route_create(
        org=org,
        actor=owner,
        name="careful",
        policy="fallback",
        config={"targets": ["external:partner", "deployment:tiny"]},
    )
    gw = start_gateway()
    gw.refresh()
    dns[host] = ["127.0.0.1"]
    headers = {"Authorization": f"Bearer {inference_key}"}

    with caplog.at_level(logging.WARNING, logger="inference.gateway"):
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 502
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_address_refused"
    assert f"{host} resolves to a private or internal address" in error["message"]
    assert "127.0.0.1" not in error["message"]
    assert not fake.requests  # nothing reached the address
    refusals = [r for r in caplog.records if "external endpoint refused" in r.getMessage()]
    assert refusals and refusals[0].target == "external:partner"  # type: ignore[attr-defined]

    # A fallback goes on to the next target; our own replicas on 127.0.0.1 are not external.
    response = httpx.post(
        gw.url + "/v1/chat/completions", json={**CHAT, "model": "careful"}, headers=headers
    )
    assert response.status_code == 200
    assert response.headers["x-target"] == "deployment:tiny"
    response = httpx.post(
        gw.url + "/v1/chat/completions", json={**CHAT, "model": "tiny"}, headers=headers
    )
    assert response.status_code == 200


def test_allowed_gateway_connects_to_the_address_it_checked(
    start_gateway, dns, engine, org, owner, inference_key
):
    """With loopback allowed, the request goes to the address the check resolved (the system
    resolver knows nothing of this name), with the endpoint's own Host header."""
    fake, server = engine
    host = "api.partner.example"
    dns[host] = ["93.184.216.34"]
    create(org, owner, f"http://{host}:{server.port}/v1")
    route_create(
        org=org, actor=owner, name="outside", policy="single", config={"target": "external:partner"}
    )
    gw = start_gateway(external_allow=("127.0.0.0/8",))
    gw.refresh()
    dns[host] = ["127.0.0.1"]
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {inference_key}"},
    )
    assert response.status_code == 200, response.text
    assert fake.requests[-1]["model"] == "big"
    assert fake.headers[-1]["host"] == f"{host}:{server.port}"


def test_an_endpoint_named_with_non_ascii_letters_is_reached_by_its_idna_name(
    start_gateway, dns, engine, org, owner, inference_key
):
    fake, server = engine
    dns["xn--bcher-kva.example"] = ["93.184.216.34"]
    create(org, owner, f"http://bücher.example:{server.port}/v1")
    route_create(
        org=org, actor=owner, name="outside", policy="single", config={"target": "external:partner"}
    )
    gw = start_gateway(external_allow=("127.0.0.0/8",))
    gw.refresh()
    dns["xn--bcher-kva.example"] = ["127.0.0.1"]
    response = httpx.post(
        gw.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {inference_key}"},
    )
    assert response.status_code == 200, response.text
    assert fake.headers[-1]["host"] == f"xn--bcher-kva.example:{server.port}"


def test_the_admin_form_refuses_a_private_address_too(dns, org, settings):  # type: ignore[no-untyped-def]
    from inference.admin import ExternalEndpointAdminForm

    dns["internal.example"] = ["10.0.0.7"]
    data = {"org": org.pk, "name": "partner", "model": "big"}
    form = ExternalEndpointAdminForm(data={**data, "base_url": "http://internal.example/v1"})
    assert not form.is_valid()
    assert (
        "internal.example resolves to a private or internal address" in form.errors["base_url"][0]
    )
    settings.GATEWAY_EXTERNAL_ALLOW = ["10.0.0.0/8"]
    allowed = ExternalEndpointAdminForm(data={**data, "base_url": "http://internal.example/v1/"})
    assert allowed.is_valid(), allowed.errors
    assert allowed.cleaned_data["base_url"] == "http://internal.example/v1"
