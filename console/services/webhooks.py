"""Webhooks: an organisation's events, sent to its own URLs as signed JSON.

Every audit event is an event (its action is the type: ``deployment.failed``, ``key.revoked``,
``member.invited``, ...). After the event's transaction commits, each of the org's endpoints that
wants that type gets a delivery, sent by a Celery task: ``POST`` with the JSON body and a
``Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the endpoint's
secret>`` header. A 2xx answer delivers it; anything else (another status, no answer within
``TIMEOUT_S`` for the whole attempt, a refused connection) is tried again after 1 minute, 5
minutes, 30 minutes, 2 hours and 6 hours, then the delivery is failed. Only the answer's status
is read, not its body. Redirects are not followed.

Endpoints obey the same egress rule as external model endpoints (inference.routing.egress): no
private, loopback or link-local addresses unless the operator allows them
(``GATEWAY_EXTERNAL_ALLOW``), checked when the endpoint is saved and again, against the
addresses the name resolves to, at each delivery, which then connects to a checked address.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from console.crypto import Resealed, Sealer, rows_reseal
from console.models import (
    ApiKey,
    AuditEvent,
    DeliveryStatus,
    Organisation,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)
from console.services.audit import audit_record
from inference.routing.egress import (
    EgressRefused,
    egress_policy,
    host_addresses,
    host_ascii,
    http_url_problem,
    url_problem,
)

logger = logging.getLogger(__name__)

_SECRETS = Sealer("webhook-secrets", "WEBHOOK_ENCRYPTION_KEY")
MAX_ENDPOINTS = 10
# Seconds to wait after the first, second, ... failed attempt; one more attempt each.
BACKOFF_S = (60, 300, 1800, 7200, 21600)
MAX_ATTEMPTS = len(BACKOFF_S) + 1
# Finished deliveries are kept this long for the Webhooks page and the REST API, then removed.
KEEP_FINISHED = timedelta(days=30)
TIMEOUT_S = 10.0
SIGNATURE_HEADER = "Webhook-Signature"
_EVENT_RE = re.compile(r"^[a-z_]+(\.[a-z_]*)*$")


def _policy() -> Any:
    return egress_policy(tuple(settings.GATEWAY_EXTERNAL_ALLOW))


def _clean_url(url: str) -> str:
    url = (url or "").strip()
    if len(url) > 500:
        raise ValidationError({"url": "Use at most 500 characters."})
    problem = http_url_problem(url, not_http="Enter an http:// or https:// URL.")
    if problem:
        raise ValidationError({"url": problem})
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValidationError({"url": "Leave credentials out of the URL; verify the signature."})
    problem = url_problem(url, _policy())
    if problem:
        raise ValidationError({"url": problem})
    return url


def _clean_events(events: list[str] | None) -> list[str]:
    cleaned = sorted({e.strip() for e in events or [] if e and e.strip()})
    bad = [e for e in cleaned if len(e) > 64 or not _EVENT_RE.match(e)]
    if bad:
        raise ValidationError(
            {"events": f"Not an event type or prefix: {', '.join(bad)} (e.g. deployment.)."}
        )
    return cleaned


@transaction.atomic
def webhook_create(
    *,
    org: Organisation,
    actor: User | None,
    url: str,
    events: list[str] | None = None,
    actor_key: ApiKey | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Add an endpoint. Returns it and its signing secret, which the caller shows once."""
    url = _clean_url(url)
    wanted = _clean_events(events)
    Organisation.objects.select_for_update().filter(pk=org.pk).first()
    if WebhookEndpoint.objects.filter(org=org, disabled_at=None).count() >= MAX_ENDPOINTS:
        raise ValidationError(f"An organisation has at most {MAX_ENDPOINTS} webhooks.")
    secret = "whsec_" + secrets.token_urlsafe(32)
    endpoint = WebhookEndpoint.objects.create(
        org=org,
        url=url,
        events=wanted,
        secret_encrypted=_SECRETS.seal(secret),
        created_by=actor,
    )
    audit_record(
        org=org,
        action="webhook.created",
        actor=actor,
        actor_key=actor_key,
        target=endpoint,
        data={"events": wanted or ["*"]},
    )
    return endpoint, secret


@transaction.atomic
def webhook_delete(
    *, endpoint: WebhookEndpoint, actor: User | None, actor_key: ApiKey | None = None
) -> None:
    """Stop sending to an endpoint; its pending deliveries are dropped."""
    if endpoint.disabled_at is not None:
        return
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(disabled_at=timezone.now())
    endpoint.deliveries.filter(status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.FAILED, error="The webhook was deleted.", finished_at=timezone.now()
    )
    audit_record(
        org=endpoint.org,
        action="webhook.deleted",
        actor=actor,
        actor_key=actor_key,
        target=endpoint,
    )


def payload_of(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "type": event.action,
        "created_at": event.created_at.isoformat(),
        "org": event.org.slug,
        "actor": event.actor_label,
        "target": {"type": event.target_type, "id": event.target_id, "name": event.target_repr},
        "data": event.data,
    }


def _queue(deliveries: list[WebhookDelivery]) -> None:
    from console.tasks import webhook_deliver_task

    for delivery in deliveries:
        try:
            webhook_deliver_task.delay(str(delivery.id))
        except Exception:  # the broker is down: the retry task finds it pending
            logger.exception("could not queue a webhook delivery")


def event_published(event_id: Any, org_id: int) -> int:
    """After an audit event committed: a delivery for each endpoint that wants it. Returns how
    many (an org without webhooks costs one small query)."""
    endpoints = list(WebhookEndpoint.objects.filter(org_id=org_id, disabled_at=None))
    if not endpoints:
        return 0
    event = AuditEvent.objects.select_related("org", "actor", "actor_key").get(pk=event_id)
    payload = payload_of(event)
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(endpoint=e, event_type=event.action, payload=payload)
        for e in endpoints
        if e.wants(event.action)
    )
    _queue(deliveries)
    return len(deliveries)


def webhook_test(*, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Send a ``webhook.test`` event to one endpoint now (whatever types it wants)."""
    now = timezone.now()
    payload = {
        "id": f"test-{secrets.token_hex(8)}",
        "type": "webhook.test",
        "created_at": now.isoformat(),
        "org": endpoint.org.slug,
        "actor": "system",
        "target": {"type": "webhookendpoint", "id": str(endpoint.id), "name": endpoint.url},
        "data": {},
    }
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event_type="webhook.test", payload=payload
    )
    transaction.on_commit(lambda: _queue([delivery]))
    return delivery


def delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a failed delivery again, with a fresh set of attempts (its receiver was down longer
    than the retries lasted). Refused for one that is pending or went through, or whose webhook
    was deleted."""
    if delivery.status != DeliveryStatus.FAILED:
        raise ValidationError("Only a failed delivery can be sent again.")
    if delivery.endpoint.disabled_at is not None:
        raise ValidationError("Its webhook was deleted.")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=timezone.now(),
        error="",
        response_status=None,
        finished_at=None,
    )
    delivery.refresh_from_db()
    transaction.on_commit(lambda: _queue([delivery]))
    return delivery


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _send(endpoint: WebhookEndpoint, body: bytes, event_type: str) -> int:
    """POST to the endpoint's checked address; the answer's status, or an exception
    (TimeoutError when the whole attempt, the name's lookup included, takes over TIMEOUT_S)."""
    started = time.monotonic()
    parts = urlsplit(endpoint.url)
    host = host_ascii(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = host_addresses(_policy(), host, port)
    named = f"[{host}]" if ":" in host else host
    netloc = f"{named}:{parts.port}" if parts.port else named
    url, extensions = urlunsplit(parts._replace(netloc=netloc)), dict[str, Any]()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "inference-platform-webhooks/1",
        "Webhook-Event": event_type,
        SIGNATURE_HEADER: signature(
            _SECRETS.open(endpoint.secret_encrypted), int(time.time()), body
        ),
    }
    if addresses:
        # Connect to the address just checked, not to a second lookup of the name.
        ip = addresses[0]
        literal = f"[{ip}]" if ":" in ip else ip
        url = urlunsplit(parts._replace(netloc=f"{literal}:{port}"))
        headers["Host"] = netloc
        if parts.scheme == "https":
            extensions["sni_hostname"] = host
    left = TIMEOUT_S - (time.monotonic() - started)
    if left <= 0:
        raise TimeoutError
    return asyncio.run(_post(url, body, headers, extensions, left))


async def _post(
    url: str, body: bytes, headers: dict[str, str], extensions: dict[str, Any], limit_s: float
) -> int:
    """The status of the answer to one POST, within ``limit_s`` in all. httpx's timeouts are
    per read, so a receiver sending its answer a byte at a time would hold the worker for as
    long as it liked, past the delivery's claim; and the body is not read at all, since only
    the status counts."""
    async with asyncio.timeout(limit_s):
        async with httpx.AsyncClient(
            timeout=limit_s, follow_redirects=False, trust_env=False
        ) as client:
            request = client.build_request(
                "POST", url, content=body, headers=headers, extensions=extensions
            )
            response = await client.send(request, stream=True)
            await response.aclose()
            return response.status_code


def deliver(delivery_id: Any) -> bool:
    """Try one due delivery once. Returns whether it is delivered."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .select_related("endpoint", "endpoint__org")
            .filter(pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            .first()
        )
        if delivery is None:
            return False
        # Claimed: a concurrent run waits a timeout before looking at it again.
        delivery.attempts += 1
        delivery.next_attempt_at = now + timedelta(seconds=TIMEOUT_S * 3)
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    endpoint = delivery.endpoint
    if endpoint.disabled_at is not None:
        _finish(delivery, DeliveryStatus.FAILED, error="The webhook was deleted.")
        return False
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    code: int | None = None
    try:
        code = _send(endpoint, body, delivery.event_type)
    except EgressRefused as refused:
        error = str(refused)
    except (TimeoutError, httpx.TimeoutException):
        error = f"The endpoint did not answer within {TIMEOUT_S:g} s."
    except (httpx.HTTPError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = "" if 200 <= code < 300 else f"The endpoint answered {code}."
    if not error:
        _finish(delivery, DeliveryStatus.DELIVERED, code=code)
        return True
    if delivery.attempts >= MAX_ATTEMPTS:
        _finish(delivery, DeliveryStatus.FAILED, code=code, error=error)
    else:
        wait = BACKOFF_S[delivery.attempts - 1]
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            response_status=code,
            error=error[:300],
            next_attempt_at=timezone.now() + timedelta(seconds=wait),
        )
    return False


def _finish(
    delivery: WebhookDelivery, status: str, *, code: int | None = None, error: str = ""
) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=status, response_status=code, error=error[:300], finished_at=timezone.now()
    )


def deliveries_retry(limit: int = 500) -> int:
    """Try the deliveries that are due (beat, every minute). Returns how many were delivered."""
    due = WebhookDelivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now()
    ).values_list("id", flat=True)[:limit]
    return sum(deliver(delivery_id) for delivery_id in list(due))


def deliveries_prune(*, now: Any = None) -> int:
    """Remove deliveries that finished more than ``KEEP_FINISHED`` ago (beat, daily): one row per
    event and webhook would otherwise grow without end. Returns how many were removed."""
    before = (now or timezone.now()) - KEEP_FINISHED
    removed, _ = WebhookDelivery.objects.filter(
        status__in=[DeliveryStatus.DELIVERED, DeliveryStatus.FAILED], finished_at__lt=before
    ).delete()
    return removed


def webhook_secrets_reseal() -> Resealed:
    """Encrypt every webhook's signing secret again with the current key."""
    return rows_reseal(
        _SECRETS, WebhookEndpoint.objects.all(), "secret_encrypted", "webhook signing secrets"
    )
