"""Webhooks against a real HTTP receiver: signed deliveries of the org's events, retries with
backoff, event filters, the egress rule, deletion, and the console page."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from console.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from console.permissions import Role
from console.services import webhooks
from console.services.keys import api_key_create
from console.services.webhooks import (
    MAX_ATTEMPTS,
    deliveries_retry,
    webhook_create,
    webhook_delete,
)
from inference.routing import egress
from tests.gateway.servers import ThreadServer

pytestmark = pytest.mark.django_db


class Receiver:
    """An ASGI app that keeps what it was sent and answers the statuses it is told to."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def receiver(settings) -> Iterator[tuple[Receiver, str]]:  # type: ignore[no-untyped-def]
    settings.GATEWAY_EXTERNAL_ALLOW = ["127.0.0.1"]
    app = Receiver()
    server = ThreadServer(app, lifespan="off").start()
    yield app, server.url + "/hooks"
    server.stop()


class Dripper:
    """A receiver that answers a byte at a time, each well within a read timeout: the status
    line, then its headers (``part="headers"``) or its body (``part="body"``), for up to 5
    seconds or until the client hangs up."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.requests = 0
        self.done = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hooks"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by stop()
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            if not chunk:
                return
            received += chunk
        self.requests += 1
        head = b"HTTP/1.1 200 OK\r\n"
        if self.part == "body":
            head += b"Content-Length: 100000\r\n\r\n"
        drip = b"X-Drip: 1\r\n" if self.part == "headers" else b"x"
        try:
            conn.sendall(head)
            for _ in range(50):
                if self.done.wait(0.1):
                    return
                conn.sendall(drip)
        except OSError:  # the client hung up
            return

    def stop(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize(("part", "status"), [("headers", "pending"), ("body", "delivered")])
def test_a_slow_answer_ends_the_attempt_well_before_the_claim_does(
    org, owner, settings, monkeypatch, part, status
):
    """A receiver that keeps the answer coming a byte at a time never trips a read timeout: the
    attempt as a whole ends within TIMEOUT_S (the body is not read at all), before its claim
    runs out and the beat would send the same delivery again."""
    settings.GATEWAY_EXTERNAL_ALLOW = ["127.0.0.1"]
    monkeypatch.setattr(webhooks, "TIMEOUT_S", 1.0)
    dripper = Dripper(part)
    try:
        endpoint, _ = webhook_create(org=org, actor=owner, url=dripper.url)
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint, event_type="webhook.test", payload={"id": "x"}
        )
        started = time.monotonic()
        webhooks.deliver(delivery.id)
        took = time.monotonic() - started
        claim_ends = timezone.now() + timedelta(seconds=3 * webhooks.TIMEOUT_S - took)
        assert deliveries_retry() == 0
    finally:
        dripper.stop()
    assert took < 2 * webhooks.TIMEOUT_S
    assert dripper.requests == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (status, 1)
    if status == "pending":
        assert delivery.error == "The endpoint did not answer within 1 s."
        assert delivery.next_attempt_at > claim_ends
    else:
        assert delivery.response_status == 200


def _verify(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """What a tenant's receiver does: check the signature, then read the event."""
    parts = dict(item.split("=", 1) for item in headers["webhook-signature"].split(","))
    expected = hmac.new(
        secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(expected, parts["v1"])
    return json.loads(body)


def test_an_event_is_delivered_signed(org, owner, receiver, django_capture_on_commit_callbacks):
    app, url = receiver
    endpoint, secret = webhook_create(org=org, actor=owner, url=url)
    assert secret.startswith("whsec_") and secret not in endpoint.secret_encrypted
    app.received.clear()  # the webhook.created event itself
    with django_capture_on_commit_callbacks(execute=True):
        created = api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    [(headers, body)] = app.received
    event = _verify(secret, headers, body)
    assert event["type"] == "key.created" and headers["webhook-event"] == "key.created"
    assert event["org"] == org.slug and event["actor"] == owner.email
    assert event["target"]["id"] == str(created.key.pk)
    assert created.secret not in body.decode()
    delivery = WebhookDelivery.objects.get(event_type="key.created")
    assert (delivery.status, delivery.attempts, delivery.response_status) == (
        DeliveryStatus.DELIVERED,
        1,
        200,
    )


def test_an_endpoint_gets_only_the_events_it_asked_for(
    org, owner, receiver, django_capture_on_commit_callbacks
):
    app, url = receiver
    webhook_create(org=org, actor=owner, url=url, events=["deployment.", "key.revoked"])
    with django_capture_on_commit_callbacks(execute=True):
        api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    assert app.received == []
    assert not WebhookDelivery.objects.filter(event_type="key.created").exists()


def test_failures_are_retried_with_backoff_then_given_up(
    org, owner, receiver, django_capture_on_commit_callbacks
):
    app, url = receiver
    webhook_create(org=org, actor=owner, url=url, events=["key."])
    app.statuses = [500]
    with django_capture_on_commit_callbacks(execute=True):
        api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("pending", 1, 500)
    assert delivery.error == "The endpoint answered 500."
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 50 < wait <= 60
    # Not due yet: nothing is sent.
    assert deliveries_retry() == 0 and len(app.received) == 1
    # Due: the next try gets a 200.
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert deliveries_retry() == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    # One that never succeeds is failed after the last attempt.
    app.statuses = [503] * MAX_ATTEMPTS
    with django_capture_on_commit_callbacks(execute=True):
        api_key_create(org=org, actor=owner, name="ci2", scopes=["inference"])
    for _ in range(MAX_ATTEMPTS):
        WebhookDelivery.objects.filter(status="pending").update(
            next_attempt_at=timezone.now() - timedelta(seconds=1)
        )
        deliveries_retry()
    failed = WebhookDelivery.objects.get(payload__target__name__startswith="ci2")
    assert (failed.status, failed.attempts) == ("failed", MAX_ATTEMPTS)
    # The receiver is back: sending it again starts a fresh set of attempts.
    with django_capture_on_commit_callbacks(execute=True):
        resent = webhooks.delivery_resend(delivery=failed)
    assert resent.status == "pending"
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.response_status) == ("delivered", 1, 200)
    with pytest.raises(ValidationError, match="Only a failed delivery"):
        webhooks.delivery_resend(delivery=failed)


def test_private_addresses_are_refused_when_saved_and_when_sent(
    org, owner, receiver, settings, django_capture_on_commit_callbacks
):
    app, url = receiver
    settings.GATEWAY_EXTERNAL_ALLOW = []
    with pytest.raises(ValidationError) as caught:
        webhook_create(org=org, actor=owner, url=url)
    assert "loopback" in caught.value.message_dict["url"][0]
    assert not WebhookEndpoint.objects.exists()
    # Allowed when saved, refused when sent (the operator narrowed the rule, or DNS changed).
    settings.GATEWAY_EXTERNAL_ALLOW = ["127.0.0.1"]
    webhook_create(org=org, actor=owner, url=url, events=["key."])
    settings.GATEWAY_EXTERNAL_ALLOW = []
    with django_capture_on_commit_callbacks(execute=True):
        api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    assert app.received == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and "loopback" in delivery.error


def test_a_refusal_does_not_say_which_private_address_a_name_resolves_to(
    org, owner, settings, monkeypatch
):
    settings.GATEWAY_EXTERNAL_ALLOW = []
    monkeypatch.setattr(egress, "host_resolve", lambda host, port: ["10.1.2.3"])
    with pytest.raises(ValidationError) as caught:
        webhook_create(org=org, actor=owner, url="https://hooks.example/x")
    [message] = caught.value.message_dict["url"]
    assert message.startswith("hooks.example resolves to a private or internal address;")
    assert "10.1.2.3" not in message


def test_a_host_name_with_non_ascii_letters_is_sent_in_its_ascii_form(
    org, owner, receiver, monkeypatch, django_capture_on_commit_callbacks
):
    app, url = receiver
    port = urlsplit(url).port
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(egress, "host_resolve", resolve)
    endpoint, _ = webhook_create(org=org, actor=owner, url=f"http://bücher.example:{port}/hooks")
    app.received.clear()
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.webhook_test(endpoint=endpoint)
    delivery = WebhookDelivery.objects.get(event_type="webhook.test")
    assert (delivery.status, delivery.error) == ("delivered", "")
    [(headers, _)] = app.received
    assert headers["host"] == f"xn--bcher-kva.example:{port}"
    assert set(resolved) == {"xn--bcher-kva.example"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "ftp://example.com/x"}, "Enter an http:// or https:// URL."),
        ({"url": "https://user:pw@example.com/x"}, "Leave credentials out of the URL"),
        ({"events": ["Key Created"]}, "Not an event type or prefix: Key Created"),
        # Malformed addresses used to be stored (every delivery then failed) or to raise a 500.
        ({"url": "http://[::1"}, "This is not a valid URL: Invalid IPv6 URL."),
        ({"url": "https://example.com:99999/x"}, "Port out of range"),
        # Port 0 would be sent to 80 or 443.
        ({"url": "https://example.com:0/x"}, "The port must be between 1 and 65535."),
        ({"url": "https://exa mple.com/hook"}, "A URL has no spaces or control characters"),
        ({"url": "https://a..b/hook"}, "'a..b' is not a valid host name."),
        ({"url": "https://-bad-.example/hook"}, "'-bad-.example' is not a valid host name."),
    ],
)
def test_bad_input_is_refused(org, owner, fields, message):
    with pytest.raises(ValidationError, match=message):
        webhook_create(org=org, actor=owner, **{"url": "https://example.com/x", **fields})
    assert not WebhookEndpoint.objects.exists()


def test_deleting_stops_deliveries(org, owner, receiver, django_capture_on_commit_callbacks):
    app, url = receiver
    endpoint, _ = webhook_create(org=org, actor=owner, url=url, events=["key."])
    app.statuses = [500]
    with django_capture_on_commit_callbacks(execute=True):
        api_key_create(org=org, actor=owner, name="ci", scopes=["inference"])
    webhook_delete(endpoint=endpoint, actor=owner)
    assert WebhookDelivery.objects.get().status == "failed"
    with django_capture_on_commit_callbacks(execute=True):
        api_key_create(org=org, actor=owner, name="ci2", scopes=["inference"])
    assert WebhookDelivery.objects.count() == 1 and len(app.received) == 1


def test_the_console_page(
    org, owner, make_member, receiver, client_for, django_capture_on_commit_callbacks
):
    app, url = receiver
    client = client_for(owner)
    page = reverse("webhook_list", args=[org.slug])
    response = client.post(page, {"url": url, "events": "key., deployment.failed"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    secret = response.context["secret"]
    assert secret.encode() in response.content
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.events == ["deployment.failed", "key."]
    assert secret.encode() not in client.get(page).content
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("webhook_test", args=[org.slug, endpoint.id]))
    assert b"webhook.test" in client.get(page).content
    headers, body = app.received[-1]
    assert _verify(secret, headers, body)["type"] == "webhook.test"
    test_delivery = WebhookDelivery.objects.get(event_type="webhook.test")
    WebhookDelivery.objects.filter(pk=test_delivery.pk).update(status="failed")
    assert b"Send again" in client.get(page).content
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("webhook_delivery_resend", args=[org.slug, test_delivery.id]))
    assert WebhookDelivery.objects.get(pk=test_delivery.pk).status == "delivered"
    bad = client.post(page, {"url": "not a url"})
    assert bad.status_code == 400 and b"Enter an http:// or https:// URL." in bad.content
    developer = client_for(make_member(Role.DEVELOPER).user)
    assert developer.get(page).status_code == 403
    client.post(reverse("webhook_delete", args=[org.slug, endpoint.id]))
    assert WebhookEndpoint.objects.get().disabled_at is not None


def test_an_org_without_webhooks_costs_one_query(org, owner, django_assert_num_queries):
    event = webhooks.audit_record(org=org, action="key.created", actor=owner)
    with django_assert_num_queries(1):
        assert webhooks.event_published(event.pk, org.pk) == 0


def test_the_rest_api_with_a_manage_key(org, owner, receiver, django_capture_on_commit_callbacks):
    from django.test import Client

    app, url = receiver
    manager = api_key_create(org=org, actor=owner, name="ops", scopes=["manage"])
    reader = api_key_create(org=org, actor=owner, name="ro", scopes=["read"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {manager.secret}")
    base = f"/api/orgs/{org.slug}/webhooks/"
    refused = client.post(base, {"url": "ftp://x"}, content_type="application/json")
    assert refused.status_code == 400 and "url" in refused.json()["error"]["fields"]
    created = client.post(
        base, {"url": url, "events": ["webhook."]}, content_type="application/json"
    )
    assert created.status_code == 201 and created["Cache-Control"] == "no-store"
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["events"] == ["webhook."]
    listed = client.get(base).json()["results"]
    assert [w["id"] for w in listed] == [body["id"]] and "secret" not in listed[0]
    with django_capture_on_commit_callbacks(execute=True):
        sent = client.post(f"{base}{body['id']}/test/")
    assert sent.status_code == 202
    headers, raw = app.received[-1]
    assert _verify(body["secret"], headers, raw)["type"] == "webhook.test"
    deliveries = client.get(f"{base}deliveries/").json()["results"]
    assert deliveries[0]["event_type"] == "webhook.test" and deliveries[0]["webhook"] == body["id"]
    delivered = deliveries[0]["id"]
    again = client.post(f"{base}deliveries/{delivered}/resend/")
    assert again.status_code == 400 and "Only a failed delivery" in again.json()["error"]["message"]
    WebhookDelivery.objects.filter(pk=delivered).update(status="failed")
    with django_capture_on_commit_callbacks(execute=True):
        resent = client.post(f"{base}deliveries/{delivered}/resend/")
    assert resent.status_code == 202 and resent.json()["status"] == "pending"
    assert WebhookDelivery.objects.get(pk=delivered).status == "delivered"
    # A read key may not see or change webhooks.
    read_client = Client(HTTP_AUTHORIZATION=f"Bearer {reader.secret}")
    assert read_client.get(base).status_code == 403
    assert client.delete(f"{base}{body['id']}/").status_code == 204
    assert client.get(f"{base}{body['id']}/").status_code == 404
    event = WebhookEndpoint.objects.get().org.audit_events.get(action="webhook.deleted")
    assert event.actor_key_id == manager.key.id


def test_finished_deliveries_are_pruned_after_30_days(org, owner):
    endpoint = WebhookEndpoint.objects.create(
        org=org, url="https://example.com/h", secret_encrypted="x"
    )
    now = timezone.now()
    old = now - timedelta(days=31)
    rows = {
        "old delivered": ("delivered", old),
        "old failed": ("failed", old),
        "recent": ("delivered", now - timedelta(days=29)),
        "pending": ("pending", None),
    }
    for name, (status, finished) in rows.items():
        WebhookDelivery.objects.create(
            endpoint=endpoint, event_type=name, payload={}, status=status, finished_at=finished
        )
    assert webhooks.deliveries_prune(now=now) == 2
    assert sorted(WebhookDelivery.objects.values_list("event_type", flat=True)) == [
        "pending",
        "recent",
    ]
