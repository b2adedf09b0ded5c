"""An org's billing state (plan, Stripe customer, payment status) and its budgets."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from billing.models.prices import Plan
from console.models import Organisation


class BillingAccount(models.Model):
    """Created when first needed (``billing.services.accounts.account_for``)."""

    org = models.OneToOneField(
        Organisation, on_delete=models.CASCADE, related_name="billing_account"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="accounts")
    stripe_customer_id = models.CharField(max_length=100, blank=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True)
    subscription_status = models.CharField(max_length=32, blank=True)
    # The `created` time of the newest subscription event applied; older ones arrive late and
    # are ignored, so events can be handled in any order.
    subscription_event_at = models.DateTimeField(null=True, blank=True)
    # Counts subscriptions created for this org, so that each has its own idempotency key.
    subscription_generation = models.PositiveIntegerField(default=0)
    # Usage is reported to Stripe for whole hours inside this window (the subscription's life):
    # what was used on the Free plan before is never billed.
    billable_from = models.DateTimeField(null=True, blank=True)
    billable_until = models.DateTimeField(null=True, blank=True)
    payment_method_id = models.CharField(max_length=100, blank=True)
    payment_method_label = models.CharField(max_length=100, blank=True)
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    grace_until = models.DateTimeField(null=True, blank=True)
    suspended_for_payment = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["stripe_customer_id"],
                condition=~models.Q(stripe_customer_id=""),
                name="account_unique_stripe_customer",
            )
        ]

    def __str__(self) -> str:
        return f"billing for {self.org}"

    @property
    def has_payment_method(self) -> bool:
        return bool(self.payment_method_id)

    @property
    def subscription_active(self) -> bool:
        return self.subscription_status in {"active", "trialing", "past_due"}


class BilledSpan(models.Model):
    """The whole hours an ended subscription billed, kept when a new subscription replaces it
    on the account (``billing.services.accounts.subscription_ensure``), so that the month's
    usage in them is known as billed (not the Free plan's) after a later return to Free.

    The hours from ``start`` up to ``end`` (both on the hour, ``end`` excluded), as
    ``billing.selectors.billable_span`` gave them for that subscription."""

    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="billed_spans")
    start = models.DateTimeField()
    end = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org", "start"], name="billed_span_once"),
            models.CheckConstraint(
                condition=models.Q(end__gt=models.F("start")), name="billed_span_not_empty"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.org}: billed {self.start:%Y-%m-%d %H:00} to {self.end:%Y-%m-%d %H:00}"


class Budget(models.Model):
    """An org's monthly spending budget. Alerts at 50, 80 and 100 percent; a hard cap if set."""

    org = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="budget")
    amount_micros = models.BigIntegerField()
    hard_limit = models.BooleanField(
        default=True, help_text="Refuse requests (402) once the month's spend reaches the budget."
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount_micros__gt=0), name="budget_amount_positive"
            )
        ]

    def __str__(self) -> str:
        return f"{self.org}: {self.amount_micros}µ$ a month"


class BudgetAlert(models.Model):
    """An alert that was sent. The unique constraint is what makes each one go out once."""

    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="budget_alerts")
    subject = models.CharField(max_length=64, help_text='"org", "credit" or "key:<uuid>".')
    period = models.DateField(help_text="The first day of the month the alert is about.")
    threshold = models.PositiveSmallIntegerField()
    spend_micros = models.BigIntegerField()
    limit_micros = models.BigIntegerField()
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-sent_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "subject", "period", "threshold"], name="budget_alert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.org} {self.subject} {self.threshold}% of {self.period:%Y-%m}"
