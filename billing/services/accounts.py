"""Plans, budgets, and the org's side of Stripe: customer, checkout, portal, subscription."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from billing.models import BilledSpan, BillingAccount, Budget, Plan, PlanKind, StripeMeter
from billing.selectors import billable_span, default_plan
from billing.stripe_client import stripe_client, stripe_enabled, with_retries
from console.models import ApiKey, Membership, Organisation, User
from console.permissions import Role
from console.services.audit import audit_record
from console.snapshot import snapshot_bump


class BillingNotConfiguredError(RuntimeError):
    """Stripe is enabled but ``manage.py stripe_setup`` has not created the meters and prices."""


def account_for(*, org: Organisation) -> BillingAccount:
    """The org's billing account, created on the default plan when first needed."""
    account, _ = BillingAccount.objects.select_related("plan", "org").get_or_create(
        org=org, defaults={"plan": default_plan()}
    )
    return account


# The largest monthly budget, in micro-dollars: $10 billion, well inside the column's range (the
# console's form stops at $9,999,999,999.99).
MAX_BUDGET_MICROS = 10**16


def _check_budget(amount_micros: int | None) -> None:
    if amount_micros is None:
        return
    if isinstance(amount_micros, bool) or not isinstance(amount_micros, int) or amount_micros <= 0:
        raise ValidationError({"amount": "Enter an amount above zero, or leave it empty."})
    if amount_micros > MAX_BUDGET_MICROS:
        raise ValidationError({"amount": "A monthly budget is at most $10,000,000,000."})


@transaction.atomic
def budget_set(
    *,
    org: Organisation,
    actor: User | None,
    amount_micros: int | None,
    hard_limit: bool = True,
) -> Budget | None:
    """Set the org's monthly budget, or remove it with ``amount_micros=None``."""
    _check_budget(amount_micros)
    if amount_micros is None:
        deleted, _ = Budget.objects.filter(org=org).delete()
        if deleted:
            audit_record(org=org, action="billing.budget_removed", actor=actor)
            snapshot_bump()
        return None
    budget, _ = Budget.objects.update_or_create(
        org=org,
        defaults={
            "amount_micros": amount_micros,
            "hard_limit": hard_limit,
            "updated_at": timezone.now(),
        },
    )
    audit_record(
        org=org,
        action="billing.budget_set",
        actor=actor,
        target=budget,
        data={"amount_micros": amount_micros, "hard_limit": hard_limit},
    )
    snapshot_bump()
    return budget


@transaction.atomic
def key_budget_set(*, key: ApiKey, actor: User | None, amount_micros: int | None) -> ApiKey:
    _check_budget(amount_micros)
    ApiKey.objects.filter(pk=key.pk).update(monthly_budget_micros=amount_micros)
    key.refresh_from_db()
    audit_record(
        org=key.org,
        action="billing.key_budget_set",
        actor=actor,
        target=key,
        data={"amount_micros": amount_micros},
    )
    snapshot_bump()
    return key


def billing_contacts(org: Organisation) -> list[str]:
    """Owners' and admins' email addresses: who hears about money (not deactivated accounts)."""
    return list(
        Membership.objects.filter(org=org, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True)
        .order_by("created_at")
        .values_list("user__email", flat=True)
    )


def _billing_url(org: Organisation, query: str = "") -> str:
    return settings.SITE_URL + reverse("billing", args=[org.slug]) + query


def customer_ensure(*, account: BillingAccount) -> str:
    """The org's Stripe customer id, creating the customer on first use.

    The idempotency key is fixed per org, so two concurrent first uses get one customer."""
    if account.stripe_customer_id:
        return account.stripe_customer_id
    org = account.org
    contacts = billing_contacts(org)
    params: Any = {
        "name": org.name,
        "metadata": {"org_id": str(org.public_id), "org_slug": org.slug},
    }
    if contacts:
        params["email"] = contacts[0]
    customer = with_retries(
        lambda: stripe_client().v1.customers.create(
            params, {"idempotency_key": f"customer-create-{org.public_id}"}
        )
    )
    BillingAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(
        stripe_customer_id=customer.id
    )
    account.refresh_from_db()
    return account.stripe_customer_id


def checkout_session_create(*, org: Organisation, actor: User | None, plan_code: str = "") -> str:
    """A Checkout Session in setup mode, to add a payment method; returns its URL."""
    account = account_for(org=org)
    customer = customer_ensure(account=account)
    metadata = {"org_id": str(org.public_id)}
    if plan_code:
        metadata["plan"] = plan_code
    # A new key per click: each click is a new session. The key still makes a retried request
    # (same click) harmless.
    key = f"checkout-setup-{org.public_id}-{uuid.uuid4()}"
    session = with_retries(
        lambda: stripe_client().v1.checkout.sessions.create(
            {
                "mode": "setup",
                "customer": customer,
                "currency": "usd",
                "client_reference_id": str(org.public_id),
                "success_url": _billing_url(org, "?checkout=success"),
                "cancel_url": _billing_url(org, "?checkout=cancelled"),
                "metadata": metadata,
            },
            {"idempotency_key": key},
        )
    )
    audit_record(org=org, action="billing.checkout_started", actor=actor)
    return str(session.url)


def portal_session_create(*, org: Organisation, actor: User | None) -> str:
    """A Customer Portal session to manage payment methods and see invoices; returns its URL."""
    account = account_for(org=org)
    customer = customer_ensure(account=account)
    key = f"portal-{org.public_id}-{uuid.uuid4()}"
    session = with_retries(
        lambda: stripe_client().v1.billing_portal.sessions.create(
            {"customer": customer, "return_url": _billing_url(org)}, {"idempotency_key": key}
        )
    )
    return str(session.url)


def subscription_ensure(*, account: BillingAccount) -> str:
    """Subscribe the org to the metered prices (one per Billing Meter), once."""
    if account.stripe_subscription_id and account.subscription_active:
        return account.stripe_subscription_id
    meters = list(StripeMeter.objects.exclude(stripe_price_id="").order_by("key"))
    if not meters:
        raise BillingNotConfiguredError("Run `manage.py stripe_setup` to create meters and prices.")
    customer = customer_ensure(account=account)
    generation = account.subscription_generation + 1
    org = account.org
    subscription = with_retries(
        lambda: stripe_client().v1.subscriptions.create(
            {
                "customer": customer,
                "items": [{"price": meter.stripe_price_id} for meter in meters],
                # Periods follow calendar months (UTC), like the console's month-to-date.
                "billing_cycle_anchor_config": {"day_of_month": 1},
                "proration_behavior": "none",
                "metadata": {"org_id": str(org.public_id)},
            },
            {"idempotency_key": f"subscription-create-{org.public_id}-{generation}"},
        )
    )
    # Usage is billable from the first subscription on, unless an earlier one ended: then from
    # now, as what was used in between was on the Free plan. The ended one's hours are kept, as
    # this month's spend in them was billed too (``billing.selectors.billed_spend``).
    ongoing = account.billable_from is not None and account.billable_until is None
    ended = None if ongoing else billable_span(account)
    with transaction.atomic():
        if ended is not None and ended[1] is not None and ended[0] < ended[1]:
            BilledSpan.objects.bulk_create(
                [BilledSpan(org_id=account.org_id, start=ended[0], end=ended[1])],
                ignore_conflicts=True,  # kept already by a concurrent call
            )
        BillingAccount.objects.filter(pk=account.pk).update(
            stripe_subscription_id=subscription.id,
            subscription_status=subscription.status,
            subscription_generation=generation,
            billable_from=account.billable_from if ongoing else timezone.now(),
            billable_until=None,
        )
    account.refresh_from_db()
    return account.stripe_subscription_id


def subscription_cancel(*, account: BillingAccount) -> None:
    """Cancel now and invoice the usage so far (metered usage is billed in arrears)."""
    if not account.stripe_subscription_id:
        return
    sub_id = account.stripe_subscription_id
    with_retries(
        lambda: stripe_client().v1.subscriptions.cancel(
            sub_id, {"invoice_now": True}, {"idempotency_key": f"subscription-cancel-{sub_id}"}
        )
    )
    BillingAccount.objects.filter(pk=account.pk).update(
        subscription_status="canceled", billable_until=timezone.now()
    )
    account.refresh_from_db()


def subscription_end_with_period(*, account: BillingAccount) -> bool:
    """Let the subscription run to the end of its period, then end (an org that closes).

    Usage is billed in arrears from the hourly meter events, so cancelling at once would leave
    the last hours' usage off every invoice; at the period's end Stripe invoices all of it as
    usual, and its ``customer.subscription.deleted`` event records the end. Returns whether there
    was a subscription to end."""
    if not (stripe_enabled() and account.stripe_subscription_id and account.subscription_active):
        return False
    sub_id = account.stripe_subscription_id
    with_retries(
        lambda: stripe_client().v1.subscriptions.update(
            sub_id,
            {"cancel_at_period_end": True},
            {"idempotency_key": f"subscription-end-{sub_id}"},
        )
    )
    return True


@dataclass(frozen=True)
class PlanChange:
    plan: Plan
    redirect_url: str = ""  # set when the tenant must add a payment method first


def plan_change(*, org: Organisation, actor: User | None, plan: Plan) -> PlanChange:
    """Move an org to ``plan``. Pay as you go needs a payment method: without one the change
    waits for Checkout (the webhook finishes it) and the caller is sent there."""
    account = account_for(org=org)
    if plan.pk == account.plan_id:
        return PlanChange(plan)
    if stripe_enabled():
        if plan.requires_payment_method and not account.has_payment_method:
            return PlanChange(
                account.plan,
                redirect_url=checkout_session_create(org=org, actor=actor, plan_code=plan.code),
            )
        if plan.kind == PlanKind.PAYG:
            subscription_ensure(account=account)
        elif account.stripe_subscription_id and account.subscription_active:
            subscription_cancel(account=account)
    _plan_apply(account=account, plan=plan, actor=actor)
    return PlanChange(plan)


@transaction.atomic
def _plan_apply(*, account: BillingAccount, plan: Plan, actor: User | None) -> None:
    previous = account.plan.code
    BillingAccount.objects.filter(pk=account.pk).update(plan=plan)
    account.refresh_from_db()
    audit_record(
        org=account.org,
        action="billing.plan_changed",
        actor=actor,
        data={"from": previous, "to": plan.code},
    )
    snapshot_bump()


def plan_apply_after_checkout(*, account: BillingAccount, plan_code: str) -> None:
    """Finish a plan change that waited for a payment method (from the Checkout webhook)."""
    plan = Plan.objects.filter(code=plan_code).first()
    if plan is None or plan.pk == account.plan_id:
        return
    if plan.kind == PlanKind.PAYG:
        subscription_ensure(account=account)
    _plan_apply(account=account, plan=plan, actor=None)
