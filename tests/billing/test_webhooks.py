"""Webhooks signed with Stripe's own signing helper, delivered to our endpoint."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import stripe
from django.core import mail
from django.utils import timezone

from billing.models import BillingAccount, Invoice, Plan, StripeEvent
from billing.services.webhooks import SUSPENSION_REASON, grace_enforce
from console.models import Organisation
from console.services.orgs import org_suspend
from tests.billing.conftest import WEBHOOK_SECRET, subscribe
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

URL = "/billing/stripe/webhook/"
T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def event(fake, kind: str, obj: dict, *, created: int, event_id: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    body = fake.obj("event", type=kind, created=created, id=event_id or f"evt_{kind}_{created}")
    body["data"] = {"object": obj}
    return body


def deliver(
    client, body: dict, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None, capture=None
):  # type: ignore[no-untyped-def]
    payload = json.dumps(body)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return client.post(
        URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    """Deliver an event and run what it queued after commit (the handling task, eagerly)."""

    def send(body: dict, **kwargs):  # type: ignore[no-untyped-def]
        with django_capture_on_commit_callbacks(execute=True):
            return deliver(client, body, **kwargs)

    return send


def invoice(fake, status: str, **fields):  # type: ignore[no-untyped-def]
    return fake.obj(
        "invoice",
        id="in_1",
        customer="cus_acme",
        status=status,
        number="ACME-0001",
        hosted_invoice_url="https://invoice.stripe.com/i/acme",
        invoice_pdf="https://pay.stripe.com/invoice/acme/pdf",
        **fields,
    )


def test_a_signed_unknown_event_is_stored_and_answered_200(stripe_fake, post):
    body = event(stripe_fake, "plan.created", stripe_fake.obj("price"), created=int(time.time()))
    response = post(body)
    assert response.status_code == 200 and response.json() == {"received": True, "duplicate": False}
    stored = StripeEvent.objects.get(event_id=body["id"])
    assert stored.processed_at is not None and stored.type == "plan.created"


def test_a_bad_signature_is_refused_and_nothing_is_stored(stripe_fake, post):
    body = event(stripe_fake, "invoice.paid", {}, created=int(time.time()))
    response = post(body, secret="whsec_someone_else")
    assert response.status_code == 400
    assert "signature" in response.json()["error"].lower()
    assert not StripeEvent.objects.exists()


def test_a_stale_timestamp_is_refused(stripe_fake, post, settings):
    body = event(stripe_fake, "invoice.paid", {}, created=int(time.time()))
    stale = int(time.time()) - settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS - 1
    response = post(body, timestamp=stale)
    assert response.status_code == 400
    assert "tolerance" in response.json()["error"].lower()
    assert not StripeEvent.objects.exists()


def test_without_a_webhook_secret_the_endpoint_refuses(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    response = client.post(URL, data="{}", content_type="application/json")
    assert response.status_code == 400


def test_a_duplicate_event_is_handled_once(stripe_fake, post, org, owner):
    subscribe(org, since=T0)
    body = event(
        stripe_fake,
        "invoice.payment_failed",
        invoice(stripe_fake, "open"),
        created=int(time.time()),
    )
    assert post(body).json()["duplicate"] is False
    assert post(body).json() == {"received": True, "duplicate": True}
    assert StripeEvent.objects.count() == 1
    assert len(mail.outbox) == 1  # one "payment failed" email, not two
    assert mail.outbox[0].to == [owner.email]


def test_failed_payment_starts_a_grace_period_then_suspends_and_payment_restores(
    stripe_fake, post, org, settings
):
    settings.BILLING_GRACE_PERIOD_HOURS = 48
    subscribe(org, since=T0)
    now = int(time.time())
    post(event(stripe_fake, "invoice.payment_failed", invoice(stripe_fake, "open"), created=now))
    account = BillingAccount.objects.get(org=org)
    assert account.grace_until is not None
    assert account.grace_until - timezone.now() > timedelta(hours=47)
    assert grace_enforce() == 0  # still inside the grace period
    assert grace_enforce(now=account.grace_until + timedelta(seconds=1)) == 1
    org.refresh_from_db()
    assert org.is_suspended and org.suspended_reason == SUSPENSION_REASON
    assert grace_enforce(now=account.grace_until + timedelta(hours=1)) == 0  # once
    post(
        event(
            stripe_fake,
            "invoice.paid",
            invoice(stripe_fake, "paid", amount_paid=1000),
            created=now + 60,
        )
    )
    org.refresh_from_db()
    account.refresh_from_db()
    assert not org.is_suspended
    assert account.grace_until is None and not account.suspended_for_payment
    assert Invoice.objects.get().status == "paid"


def test_a_staff_suspension_is_not_lifted_by_a_paid_invoice(stripe_fake, post, org):
    subscribe(org, since=T0)
    Organisation.objects.filter(pk=org.pk).update(
        suspended_at=timezone.now(), suspended_reason="abuse"
    )
    post(event(stripe_fake, "invoice.paid", invoice(stripe_fake, "paid"), created=int(time.time())))
    org.refresh_from_db()
    assert org.is_suspended and org.suspended_reason == "abuse"


def test_the_grace_period_ending_keeps_a_staff_suspension_that_payment_cannot_lift(
    stripe_fake, post, org
):
    subscribe(org, since=T0)
    Organisation.objects.filter(pk=org.pk).update(
        suspended_at=timezone.now(), suspended_reason="abuse"
    )
    now = int(time.time())
    post(event(stripe_fake, "invoice.payment_failed", invoice(stripe_fake, "open"), created=now))
    account = BillingAccount.objects.get(org=org)
    assert grace_enforce(now=account.grace_until + timedelta(seconds=1)) == 0
    account.refresh_from_db()
    assert not account.suspended_for_payment
    post(event(stripe_fake, "invoice.paid", invoice(stripe_fake, "paid"), created=now + 60))
    org.refresh_from_db()
    assert org.is_suspended and org.suspended_reason == "abuse"


def test_staff_suspending_an_org_suspended_for_payment_take_it_over_and_payment_does_not_lift_it(
    stripe_fake, post, org
):
    subscribe(org, since=T0)
    now = int(time.time())
    post(event(stripe_fake, "invoice.payment_failed", invoice(stripe_fake, "open"), created=now))
    over = BillingAccount.objects.get(org=org).grace_until + timedelta(seconds=1)
    assert grace_enforce(now=over) == 1
    staff = UserFactory(is_staff=True)
    org_suspend(org=org, reason="Suspended by platform staff", actor=staff)
    org.refresh_from_db()
    assert org.suspended_reason == "Suspended by platform staff"
    assert not BillingAccount.objects.get(org=org).suspended_for_payment
    post(event(stripe_fake, "invoice.paid", invoice(stripe_fake, "paid"), created=now + 60))
    org.refresh_from_db()
    assert org.is_suspended and org.suspended_reason == "Suspended by platform staff"
    # The platform's own second suspension (no person) changes nothing of it.
    org_suspend(org=org, reason=SUSPENSION_REASON)
    org.refresh_from_db()
    assert org.suspended_reason == "Suspended by platform staff"


def test_a_payment_suspension_follows_when_staff_lift_theirs_before_the_invoice_is_paid(
    stripe_fake, post, org
):
    subscribe(org, since=T0)
    Organisation.objects.filter(pk=org.pk).update(
        suspended_at=timezone.now(), suspended_reason="abuse"
    )
    post(
        event(
            stripe_fake,
            "invoice.payment_failed",
            invoice(stripe_fake, "open"),
            created=int(time.time()),
        )
    )
    over = BillingAccount.objects.get(org=org).grace_until + timedelta(seconds=1)
    assert grace_enforce(now=over) == 0
    Organisation.objects.filter(pk=org.pk).update(suspended_at=None, suspended_reason="")
    assert grace_enforce(now=over + timedelta(minutes=15)) == 1
    org.refresh_from_db()
    assert org.is_suspended and org.suspended_reason == SUSPENSION_REASON


def test_a_late_payment_failure_does_not_undo_a_paid_invoice(stripe_fake, post, org):
    subscribe(org, since=T0)
    now = int(time.time())
    post(event(stripe_fake, "invoice.paid", invoice(stripe_fake, "paid"), created=now))
    post(
        event(stripe_fake, "invoice.payment_failed", invoice(stripe_fake, "open"), created=now - 60)
    )
    post(event(stripe_fake, "invoice.finalized", invoice(stripe_fake, "open"), created=now - 120))
    account = BillingAccount.objects.get(org=org)
    assert account.grace_until is None
    stored = Invoice.objects.get()
    assert stored.status == "paid" and stored.hosted_invoice_url.startswith("https://invoice.")


def test_subscription_events_apply_in_event_order_not_arrival_order(stripe_fake, post, org):
    subscribe(org, since=T0)
    now = int(time.time())
    sub = {"customer": "cus_acme", "id": "sub_acme"}
    post(
        event(
            stripe_fake,
            "customer.subscription.deleted",
            stripe_fake.obj("subscription", **sub, status="canceled"),
            created=now,
        )
    )
    post(
        event(
            stripe_fake,
            "customer.subscription.updated",
            stripe_fake.obj("subscription", **sub, status="active"),
            created=now - 30,
        )
    )
    post(
        event(
            stripe_fake,
            "customer.subscription.created",
            stripe_fake.obj("subscription", **sub, status="incomplete"),
            created=now - 60,
        )
    )
    account = BillingAccount.objects.get(org=org)
    assert account.subscription_status == "canceled"
    assert account.billable_until is not None


def test_a_creation_arriving_after_an_update_of_the_same_second_changes_nothing(
    stripe_fake, post, org
):
    subscribe(org, since=T0)
    now = int(time.time())
    sub = {"customer": "cus_acme", "id": "sub_acme"}
    for kind, status in [
        ("customer.subscription.updated", "active"),
        ("customer.subscription.created", "incomplete"),
    ]:
        post(
            event(
                stripe_fake,
                kind,
                stripe_fake.obj("subscription", **sub, status=status),
                created=now,
            )
        )
    assert BillingAccount.objects.get(org=org).subscription_status == "active"


@pytest.mark.parametrize("created", ["abc", 1e30, -99999999999999, None, True, 2**40])
def test_a_signed_event_with_a_bad_time_is_refused_and_stored_nowhere(stripe_fake, post, created):
    body = event(stripe_fake, "invoice.paid", {}, created=0)
    body["created"] = created
    response = post(body)
    assert response.status_code == 400
    assert "'created' is not a Unix time" in response.json()["error"]
    assert not StripeEvent.objects.exists()


def test_checkout_completion_saves_the_payment_method_and_starts_pay_as_you_go(
    stripe_fake, post, meters, org
):
    BillingAccount.objects.create(
        org=org, plan=Plan.objects.get(code="free"), stripe_customer_id="cus_acme"
    )
    method = stripe_fake.obj("payment_method", id="pm_visa")
    stripe_fake.answer(
        "GET",
        "/v1/setup_intents/seti_1",
        stripe_fake.obj("setup_intent", id="seti_1", payment_method=method),
    )
    stripe_fake.answer("POST", "/v1/customers/cus_acme", stripe_fake.obj("customer", id="cus_acme"))
    stripe_fake.answer(
        "POST", "/v1/subscriptions", stripe_fake.obj("subscription", id="sub_1", status="active")
    )
    session = stripe_fake.obj(
        "checkout.session",
        mode="setup",
        customer="cus_acme",
        setup_intent="seti_1",
        metadata={"org_id": str(org.public_id), "plan": "payg"},
    )
    body = event(stripe_fake, "checkout.session.completed", session, created=int(time.time()))
    assert post(body).status_code == 200
    retrieve, update, subscribe_call = stripe_fake.requests
    assert retrieve.params == {"expand[0]": "payment_method"}
    assert update.params == {"invoice_settings[default_payment_method]": "pm_visa"}
    assert update.idempotency_key == f"customer-default-pm-{body['id']}"
    assert subscribe_call.path == "/v1/subscriptions"
    account = BillingAccount.objects.get(org=org)
    assert account.plan.code == "payg" and account.payment_method_label == "visa •••• 4242"
    assert account.stripe_subscription_id == "sub_1"
    # Stripe delivers it again: handled once, no further calls.
    post(body)
    assert len(stripe_fake.requests) == 3


def test_a_checkout_finished_after_the_org_closed_starts_no_subscription(
    stripe_fake, post, meters, org, owner
):
    """The owner opened Checkout for Pay as you go, then closed the organisation, then finished
    Checkout: the closed org stays on Free, with no subscription for Stripe to bill each month."""
    from console.services.closing import org_close

    BillingAccount.objects.create(
        org=org, plan=Plan.objects.get(code="free"), stripe_customer_id="cus_acme"
    )
    org_close(org=org, actor=owner, confirm=org.slug)
    stripe_fake.answer(
        "GET",
        "/v1/setup_intents/seti_1",
        stripe_fake.obj("setup_intent", id="seti_1", payment_method="pm_visa"),
    )
    stripe_fake.answer("POST", "/v1/customers/cus_acme", stripe_fake.obj("customer", id="cus_acme"))
    stripe_fake.answer(
        "POST", "/v1/subscriptions", stripe_fake.obj("subscription", id="sub_1", status="active")
    )
    session = stripe_fake.obj(
        "checkout.session",
        mode="setup",
        customer="cus_acme",
        setup_intent="seti_1",
        metadata={"org_id": str(org.public_id), "plan": "payg"},
    )
    body = event(stripe_fake, "checkout.session.completed", session, created=int(time.time()))
    assert post(body).status_code == 200
    assert stripe_fake.requests == []
    account = BillingAccount.objects.get(org=org)
    assert account.plan.code == "free" and account.stripe_subscription_id == ""
    assert account.payment_method_id == ""
    stored = StripeEvent.objects.get()
    assert stored.processed_at is not None and stored.error == ""


@pytest.mark.django_db(transaction=True)
def test_an_event_stored_while_the_broker_is_down_is_answered_200_and_handled_later(
    stripe_fake, client, org, monkeypatch, caplog
):
    from kombu.exceptions import OperationalError

    from billing.tasks import stripe_event_process_task, stripe_events_retry_task
    from tests.gateway.conftest import migration_rows

    migration_rows()  # a transactional test's flush removed them
    subscribe(org, since=T0)

    def broker_down(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("Error 111 connecting to localhost:6379. Connection refused.")

    monkeypatch.setattr(stripe_event_process_task, "delay", broker_down)
    client.raise_request_exception = False
    body = event(
        stripe_fake, "invoice.paid", invoice(stripe_fake, "paid"), created=int(time.time())
    )
    response = deliver(client, body)
    assert response.status_code == 200 and response.json()["duplicate"] is False
    stored = StripeEvent.objects.get()
    assert stored.processed_at is None
    [logged] = [r for r in caplog.records if "could not queue" in r.getMessage()]
    assert logged.event == body["id"]
    assert stripe_events_retry_task() == 1  # the broker is back
    assert Invoice.objects.get().status == "paid"


def test_a_handler_failure_is_kept_for_a_retry(stripe_fake, post, org):
    BillingAccount.objects.create(
        org=org, plan=Plan.objects.get(code="free"), stripe_customer_id="cus_acme"
    )
    from tests.billing.stripe_fake import stripe_error

    stripe_fake.answer("GET", "/v1/setup_intents/seti_1", stripe_error(400))
    session = stripe_fake.obj(
        "checkout.session", mode="setup", customer="cus_acme", setup_intent="seti_1"
    )
    body = event(stripe_fake, "checkout.session.completed", session, created=int(time.time()))
    assert post(body).status_code == 200  # stored; Stripe need not resend
    stored = StripeEvent.objects.get()
    assert stored.processed_at is None and "InvalidRequestError" in stored.error
    from billing.tasks import stripe_events_retry_task

    stripe_fake.answer(
        "GET",
        "/v1/setup_intents/seti_1",
        stripe_fake.obj("setup_intent", id="seti_1", payment_method="pm_x"),
    )
    stripe_fake._answers[("GET", "/v1/setup_intents/seti_1")].popleft()
    stripe_fake.answer("POST", "/v1/customers/cus_acme", stripe_fake.obj("customer", id="cus_acme"))
    assert stripe_events_retry_task() == 1
    assert BillingAccount.objects.get(org=org).payment_method_id == "pm_x"
