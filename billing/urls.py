"""Billing's URLs: the org pages (included under ``o/<org_slug>/``) and Stripe's webhook."""

from django.urls import path

from billing.views import billing, usage, webhooks

org_urlpatterns = [
    path("usage/", usage.usage_page, name="usage"),
    path("billing/", billing.billing_page, name="billing"),
    path("billing/budget/", billing.budget_update, name="billing_budget"),
    path(
        "billing/keys/<uuid:key_id>/budget/", billing.key_budget_update, name="billing_key_budget"
    ),
    path("billing/plan/", billing.plan_update, name="billing_plan"),
    path("billing/payment-method/", billing.payment_method_add, name="billing_payment_method"),
    path("billing/portal/", billing.portal_open, name="billing_portal"),
]

urlpatterns = [
    path("stripe/webhook/", webhooks.stripe_webhook, name="stripe_webhook"),
]
