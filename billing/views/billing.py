from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing.forms import BudgetForm, KeyBudgetForm, PlanForm
from billing.models import Budget, Invoice, Plan
from billing.money import format_dollars, micros_to_decimal
from billing.selectors import (
    account_peek,
    forecast_micros,
    free_credit_used,
    invoice_estimate,
    key_month_to_date_spend,
    month_start,
    month_to_date_spend,
    spend_limit_details,
)
from billing.services.accounts import (
    BillingNotConfiguredError,
    budget_set,
    checkout_session_create,
    key_budget_set,
    plan_change,
    portal_session_create,
)
from billing.stripe_client import stripe_enabled
from console.decorators import member_can, requires
from console.permissions import Action
from console.requests import OrgRequest

KEYS_PER_PAGE = 50


def _context(request: OrgRequest, budget_form: BudgetForm | None = None) -> dict:
    org = request.org
    account = account_peek(org)
    budget = Budget.objects.filter(org=org).first()
    now = timezone.now()
    mtd = month_to_date_spend([org.pk], now=now)[org.pk]
    key_spend = key_month_to_date_spend([org.pk], now=now)
    keys = list(org.api_keys.filter(revoked_at=None))
    for key in keys:
        key.mtd_micros = key_spend.get(key.pk, 0)  # type: ignore[attr-defined]
    # The keys that spend most first, 50 a page: an organisation may have thousands.
    keys.sort(key=lambda key: (-key.mtd_micros, key.name))  # type: ignore[attr-defined]
    keys_page = Paginator(keys, KEYS_PER_PAGE).get_page(request.GET.get("keys_page"))
    limit = spend_limit_details([org.pk])[org.pk]
    estimate = invoice_estimate(account=account, mtd=mtd, now=now)
    if budget_form is None:
        budget_form = BudgetForm(
            initial={
                "amount": None if budget is None else micros_to_decimal(budget.amount_micros),
                "hard_limit": True if budget is None else budget.hard_limit,
            }
        )
    return {
        "account": account,
        "plans": Plan.objects.all(),
        "stripe_enabled": stripe_enabled(),
        "period_start": month_start(now),
        "mtd": mtd,
        "forecast": forecast_micros(org=org, now=now, mtd=mtd),
        "limit": limit,
        "credit_used": free_credit_used(account, mtd=mtd, now=now),
        "estimate": estimate,
        "estimate_due": estimate.due_micros,
        "not_estimated": mtd - estimate.usage_micros,
        "budget": budget,
        "budget_form": budget_form,
        "keys": keys_page.object_list,
        "keys_page": keys_page,
        "invoices": Invoice.objects.filter(org=org)[:24],
        "can_manage": member_can(request, Action.BILLING_MANAGE),
    }


@requires(Action.BILLING_VIEW)
def billing_page(request: OrgRequest, org_slug: str) -> HttpResponse:
    checkout = request.GET.get("checkout")
    if checkout == "success":
        messages.success(request, "Payment method saved. It can take a moment to show here.")
    elif checkout == "cancelled":
        messages.info(request, "Adding a payment method was cancelled.")
    return render(request, "billing/billing.html", _context(request))


@requires(Action.BILLING_MANAGE)
@require_POST
def budget_update(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = BudgetForm(request.POST)
    if form.is_valid():
        budget_set(
            org=request.org,
            actor=request.user,
            amount_micros=form.amount_micros(),
            hard_limit=form.cleaned_data["hard_limit"],
        )
        amount = form.amount_micros()
        messages.success(
            request,
            "Budget removed." if amount is None else f"Budget set to {format_dollars(amount)}.",
        )
        return redirect("billing", org_slug=request.org.slug)
    context = _context(request, budget_form=form)
    template = "billing/billing.html#budget-panel" if request.htmx else "billing/billing.html"
    return render(request, template, context, status=400)


@requires(Action.BILLING_MANAGE)
@require_POST
def key_budget_update(request: OrgRequest, org_slug: str, key_id: str) -> HttpResponse:
    key = get_object_or_404(request.org.api_keys, id=key_id)
    form = KeyBudgetForm(request.POST)
    if not form.is_valid():
        problems = " ".join(str(e) for e in form.errors.get("amount", []))
        messages.error(request, f"The budget for “{key.name}” was not saved: {problems}")
    else:
        key_budget_set(key=key, actor=request.user, amount_micros=form.amount_micros())
        messages.success(request, f"Budget for “{key.name}” saved.")
    # Back to the page of keys the form was on.
    page = request.GET.get("keys_page", "")
    query = f"?keys_page={page}" if page.isdigit() else ""
    return redirect(reverse("billing", args=[request.org.slug]) + query)


def _stripe_redirect(request: OrgRequest, make_url: object) -> HttpResponse:
    if not stripe_enabled():
        messages.error(request, "Payments are not set up on this platform (local-ledger mode).")
        return redirect("billing", org_slug=request.org.slug)
    try:
        url = make_url()  # type: ignore[operator]
    except BillingNotConfiguredError as error:
        messages.error(request, str(error))
        return redirect("billing", org_slug=request.org.slug)
    return redirect(url)


@requires(Action.BILLING_MANAGE)
@require_POST
def payment_method_add(request: OrgRequest, org_slug: str) -> HttpResponse:
    return _stripe_redirect(
        request, lambda: checkout_session_create(org=request.org, actor=request.user)
    )


@requires(Action.BILLING_MANAGE)
@require_POST
def portal_open(request: OrgRequest, org_slug: str) -> HttpResponse:
    return _stripe_redirect(
        request, lambda: portal_session_create(org=request.org, actor=request.user)
    )


@requires(Action.BILLING_MANAGE)
@require_POST
def plan_update(request: OrgRequest, org_slug: str) -> HttpResponse:
    form = PlanForm(request.POST)
    plan = Plan.objects.filter(code=form.data.get("plan", "")).first() if form.is_valid() else None
    if plan is None:
        messages.error(request, "Choose one of the plans.")
        return redirect("billing", org_slug=request.org.slug)
    if plan.requires_payment_method and not stripe_enabled():
        messages.error(
            request, "Payments are not set up on this platform; staff can change the plan."
        )
        return redirect("billing", org_slug=request.org.slug)
    try:
        change = plan_change(org=request.org, actor=request.user, plan=plan)
    except (BillingNotConfiguredError, ValidationError) as error:
        messages.error(request, str(error))
        return redirect("billing", org_slug=request.org.slug)
    if change.redirect_url:
        return redirect(change.redirect_url)
    messages.success(request, f"You are on the {change.plan.name} plan.")
    return redirect("billing", org_slug=request.org.slug)
