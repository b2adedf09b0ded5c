"""Stripe webhooks: verify, store once by event id, then handle idempotently and in any order.

Ordering: every handler compares the event's own ``created`` time (or the object's state) with
what is stored and never moves state backwards, so a late ``invoice.payment_failed`` cannot undo a
paid invoice and a late ``customer.subscription.updated`` cannot revive a cancelled subscription.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import BillingAccount, Invoice, StripeEvent
from billing.services.accounts import billing_contacts, plan_apply_after_checkout
from billing.stripe_client import stripe_client, with_retries
from console.models import Organisation
from console.services.mail import mail_send
from console.services.orgs import org_reactivate, org_suspend
from console.snapshot import snapshot_bump

logger = logging.getLogger(__name__)

CLAIM_TIMEOUT = timedelta(minutes=5)
SUSPENSION_REASON = "Payment failed: update the payment method in Billing and pay the open invoice"


class WebhookRejectedError(Exception):
    """The request is not a genuine Stripe event (bad signature, stale, malformed)."""


def webhook_receive(*, payload: bytes, signature: str) -> tuple[StripeEvent, bool]:
    """Verify and store an event. Returns (event, created); a duplicate is stored once."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejectedError("Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET)")
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"),
            signature,
            secret,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
        body = json.loads(payload)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as error:
        raise WebhookRejectedError(str(error) or "invalid payload") from None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise WebhookRejectedError("not a Stripe event")
    created_at = body.get("created", 0)
    # Unix seconds, as Stripe sends them; anything else is no event of Stripe's (and would
    # fail below, leaving Stripe to retry a 500 for days).
    if type(created_at) is not int or not 0 <= created_at < 2**37:
        raise WebhookRejectedError("not a Stripe event: 'created' is not a Unix time")
    try:
        with transaction.atomic():
            event, created = StripeEvent.objects.get_or_create(
                event_id=body["id"],
                defaults={
                    "type": str(body.get("type", ""))[:100],
                    "stripe_created": datetime.fromtimestamp(created_at, UTC),
                    "payload": body,
                },
            )
    except IntegrityError:  # the same event delivered twice at the same moment
        return StripeEvent.objects.get(event_id=body["id"]), False
    return event, created


def stripe_event_process(*, event_pk: int) -> bool:
    """Handle a stored event once. Returns False when there was nothing to do (already handled
    or being handled)."""
    now = timezone.now()
    claimed = (
        StripeEvent.objects.filter(pk=event_pk, processed_at__isnull=True)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - CLAIM_TIMEOUT))
        .update(claimed_at=now)
    )
    if not claimed:
        return False
    event = StripeEvent.objects.get(pk=event_pk)
    handler = HANDLERS.get(event.type)
    try:
        if handler is not None:
            handler(event)
    except Exception as error:
        logger.exception("stripe event %s (%s) failed", event.event_id, event.type)
        StripeEvent.objects.filter(pk=event_pk).update(
            claimed_at=None, attempts=event.attempts + 1, error=repr(error)[:2000]
        )
        return False
    StripeEvent.objects.filter(pk=event_pk).update(
        processed_at=timezone.now(), attempts=event.attempts + 1, error=""
    )
    return True


def _account(customer: Any) -> BillingAccount | None:
    customer_id = customer if isinstance(customer, str) else (customer or {}).get("id")
    if not customer_id:
        return None
    return (
        BillingAccount.objects.select_related("org", "plan")
        .filter(stripe_customer_id=customer_id)
        .first()
    )


def _when(timestamp: Any) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), UTC) if timestamp else None


# Checkout ------------------------------------------------------------------------------------


def _checkout_completed(event: StripeEvent) -> None:
    session = event.payload["data"]["object"]
    if session.get("mode") != "setup":
        return
    account = _account(session.get("customer"))
    if account is None:
        logger.warning("checkout session %s for an unknown customer", session.get("id"))
        return
    if account.org.closed_at is not None:
        # Started before the org closed and finished after: closing ended its subscription,
        # and nothing may start a new one or change the plan of an org nobody can open.
        logger.warning(
            "checkout session %s finished after its org closed; ignored",
            session.get("id"),
            extra={"org": account.org.slug},
        )
        return
    setup_intent_id = session.get("setup_intent")
    if isinstance(setup_intent_id, dict):
        setup_intent_id = setup_intent_id.get("id")
    client = stripe_client()
    if setup_intent_id:
        intent = with_retries(
            lambda: client.v1.setup_intents.retrieve(
                setup_intent_id, {"expand": ["payment_method"]}
            )
        )
        method = intent.payment_method
        if method is not None:
            method_id = method if isinstance(method, str) else method.id
            label = "payment method"
            card = None if isinstance(method, str) else getattr(method, "card", None)
            if card is not None:
                label = f"{card.brand} •••• {card.last4}"
            with_retries(
                lambda: client.v1.customers.update(
                    account.stripe_customer_id,
                    {"invoice_settings": {"default_payment_method": method_id}},
                    {"idempotency_key": f"customer-default-pm-{event.event_id}"},
                )
            )
            BillingAccount.objects.filter(pk=account.pk).update(
                payment_method_id=method_id, payment_method_label=label[:100]
            )
            account.refresh_from_db()
    plan_code = (session.get("metadata") or {}).get("plan", "")
    if plan_code and account.has_payment_method:
        plan_apply_after_checkout(account=account, plan_code=plan_code)


# Subscriptions --------------------------------------------------------------------------------


def _subscription_changed(event: StripeEvent) -> None:
    subscription = event.payload["data"]["object"]
    account = _account(subscription.get("customer"))
    if account is None:
        return
    deleted = event.type == "customer.subscription.deleted"
    current = account.stripe_subscription_id
    if deleted and current and subscription["id"] != current:
        return  # an old subscription ending says nothing about the current one
    if account.subscription_event_at and event.stripe_created < account.subscription_event_at:
        return  # older than what is stored
    same_second = account.subscription_event_at == event.stripe_created
    if (
        not deleted
        and account.subscription_status == "canceled"
        and subscription["id"] == current
        and same_second
    ):
        return  # same second as the deletion: the deletion wins
    if (
        event.type == "customer.subscription.created"
        and subscription["id"] == current
        and same_second
    ):
        # Stripe's times are whole seconds: an update stored from the same second came after
        # the creation, whatever the order they arrived in (an "incomplete" creation must not
        # undo the "active" that followed it and cap the organisation at nothing).
        return
    status = "canceled" if deleted else str(subscription.get("status", ""))
    update: dict[str, Any] = {
        "stripe_subscription_id": subscription["id"],
        "subscription_status": status[:32],
        "subscription_event_at": event.stripe_created,
    }
    if status in {"canceled", "incomplete_expired"}:
        update["billable_until"] = _when(
            subscription.get("ended_at") or subscription.get("canceled_at")
        ) or (event.stripe_created)
    elif account.billable_from is None:
        update["billable_from"] = _when(subscription.get("start_date")) or event.stripe_created
    BillingAccount.objects.filter(pk=account.pk).update(**update)
    snapshot_bump()  # the spend limit depends on the subscription being active


# Invoices -------------------------------------------------------------------------------------

_STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


def _invoice_upsert(event: StripeEvent) -> tuple[Invoice, BillingAccount] | None:
    data = event.payload["data"]["object"]
    account = _account(data.get("customer"))
    if account is None:
        return None
    invoice, _ = Invoice.objects.select_for_update().get_or_create(
        stripe_invoice_id=data["id"], defaults={"org_id": account.org_id}
    )
    status = str(data.get("status") or "")
    if _STATUS_RANK.get(status, 0) >= _STATUS_RANK.get(invoice.status, -1):
        invoice.status = status
    invoice.number = str(data.get("number") or invoice.number)
    invoice.currency = str(data.get("currency") or invoice.currency)[:3]
    invoice.amount_due_cents = int(data.get("amount_due") or 0)
    invoice.amount_paid_cents = max(invoice.amount_paid_cents, int(data.get("amount_paid") or 0))
    invoice.hosted_invoice_url = str(data.get("hosted_invoice_url") or invoice.hosted_invoice_url)
    invoice.invoice_pdf = str(data.get("invoice_pdf") or invoice.invoice_pdf)
    invoice.period_start = _when(data.get("period_start")) or invoice.period_start
    invoice.period_end = _when(data.get("period_end")) or invoice.period_end
    invoice.updated_at = timezone.now()
    invoice.save()
    return invoice, account


@transaction.atomic
def _invoice_finalized(event: StripeEvent) -> None:
    _invoice_upsert(event)


@transaction.atomic
def _invoice_payment_failed(event: StripeEvent) -> None:
    found = _invoice_upsert(event)
    if found is None:
        return
    invoice, account = found
    if invoice.status in {"paid", "void"}:
        return  # the failure is older news than the payment
    if invoice.payment_failed_at is None:
        invoice.payment_failed_at = event.stripe_created
        invoice.save(update_fields=["payment_failed_at"])
    started = BillingAccount.objects.filter(pk=account.pk, payment_failed_at__isnull=True).update(
        payment_failed_at=event.stripe_created,
        grace_until=timezone.now() + timedelta(hours=settings.BILLING_GRACE_PERIOD_HOURS),
    )
    if started:
        account.refresh_from_db()
        recipients = billing_contacts(account.org)
        grace_until = account.grace_until
        transaction.on_commit(
            lambda: mail_send(
                kind="payment failed",
                subject=f"Payment failed for {account.org.name}",
                message=(
                    f"We could not collect payment for invoice {invoice.number or invoice.pk}. "
                    f"Update the payment method in Billing before {grace_until:%Y-%m-%d %H:%M} "
                    "UTC; after that, API requests are refused until the invoice is paid.\n\n"
                    f"{invoice.hosted_invoice_url}"
                ),
                to=recipients,
            )
        )


def _unpaid_failed(account: BillingAccount) -> bool:
    return (
        Invoice.objects.filter(org_id=account.org_id, payment_failed_at__isnull=False)
        .exclude(status__in=["paid", "void"])
        .exists()
    )


@transaction.atomic
def _invoice_paid(event: StripeEvent) -> None:
    found = _invoice_upsert(event)
    if found is None:
        return
    invoice, account = found
    if invoice.paid_at is None:
        invoice.paid_at = event.stripe_created
        invoice.save(update_fields=["paid_at"])
    if _unpaid_failed(account):
        return  # another invoice is still unpaid
    BillingAccount.objects.filter(pk=account.pk).update(payment_failed_at=None, grace_until=None)
    restored = BillingAccount.objects.filter(pk=account.pk, suspended_for_payment=True).update(
        suspended_for_payment=False
    )
    if restored:
        org_reactivate(org=account.org)


HANDLERS: dict[str, Callable[[StripeEvent], None]] = {
    "checkout.session.completed": _checkout_completed,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "invoice.finalized": _invoice_finalized,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
}


def grace_enforce(*, now: datetime | None = None) -> int:
    """Suspend orgs whose grace period after a failed payment is over and still unpaid.

    Each account is locked and read again before anything changes: an invoice paid meanwhile
    clears the grace period under the same lock (``_invoice_paid``), so its org is not suspended
    after paying. An org that staff suspended is left alone: recording their suspension as the
    payment's would let the paid invoice lift it. Its grace period stays over, so the payment
    suspension follows if staff lift theirs before the invoice is paid."""
    now = now or timezone.now()
    suspended = 0
    due = BillingAccount.objects.filter(grace_until__lte=now, suspended_for_payment=False)
    for pk in list(due.order_by("pk").values_list("pk", flat=True)):
        with transaction.atomic():
            account = due.select_for_update(no_key=True).filter(pk=pk).first()
            if account is None:
                continue  # paid, or suspended by a concurrent run, since the list was read
            if not _unpaid_failed(account):
                BillingAccount.objects.filter(pk=pk).update(
                    payment_failed_at=None, grace_until=None
                )
                continue
            org = Organisation.objects.select_for_update(no_key=True).get(pk=account.org_id)
            if org.suspended_at is not None:
                continue
            BillingAccount.objects.filter(pk=pk).update(suspended_for_payment=True)
            org_suspend(org=org, reason=SUSPENSION_REASON)
            suspended += 1
    return suspended


def stripe_events_pending() -> list[int]:
    """Stored events not yet handled (a failed handler, or a worker that died)."""
    stale = timezone.now() - CLAIM_TIMEOUT
    return list(
        StripeEvent.objects.filter(processed_at__isnull=True)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale))
        .order_by("stripe_created")
        .values_list("pk", flat=True)[:500]
    )
