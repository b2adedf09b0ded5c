"""The Stripe side: meters, the meter events we send, webhooks we receive, invoices, and the
reconciliation of Stripe's meter totals against the ledger."""

from __future__ import annotations

from datetime import UTC, date, timedelta

from django.db import models
from django.utils import timezone

from console.models import Organisation


class StripeMeter(models.Model):
    """A Billing Meter and the metered price backed by it (``manage.py stripe_setup``)."""

    key = models.SlugField(max_length=32, unique=True)
    event_name = models.CharField(max_length=100, unique=True)
    display_name = models.CharField(max_length=100)
    stripe_meter_id = models.CharField(max_length=100, blank=True)
    stripe_product_id = models.CharField(max_length=100, blank=True)
    stripe_price_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.display_name} ({self.event_name})"


class MeterEventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed (needs staff)"


class MeterEvent(models.Model):
    """A meter event for one org, meter and hour. ``seq`` 0 is the hour's first report; each
    later one carries only usage that arrived after the previous report (the difference)."""

    org = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="meter_events")
    meter_key = models.SlugField(max_length=32)
    hour = models.DateTimeField()
    seq = models.PositiveIntegerField()
    value = models.BigIntegerField()
    identifier = models.CharField(max_length=100, unique=True)
    timestamp = models.DateTimeField(help_text="The event time sent to Stripe.")
    stripe_customer_id = models.CharField(max_length=100)
    status = models.CharField(
        max_length=8, choices=MeterEventStatus.choices, default=MeterEventStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-hour", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "meter_key", "hour", "seq"], name="meter_event_unique_seq"
            ),
            models.CheckConstraint(condition=models.Q(value__gt=0), name="meter_event_positive"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="meter_event_due")]

    def __str__(self) -> str:
        return self.identifier


class StripeEvent(models.Model):
    """A webhook event as received, stored once by its id before anything is done with it."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    stripe_created = models.DateTimeField()
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Invoice(models.Model):
    """Stripe's invoice as the console shows it, with links to Stripe's hosted pages."""

    org = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="invoices")
    stripe_invoice_id = models.CharField(max_length=100, unique=True)
    number = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, blank=True)
    currency = models.CharField(max_length=3, default="usd")
    amount_due_cents = models.BigIntegerField(default=0)
    amount_paid_cents = models.BigIntegerField(default=0)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    invoice_pdf = models.URLField(max_length=500, blank=True)
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-period_start", "-updated_at"]

    def __str__(self) -> str:
        return self.number or self.stripe_invoice_id

    @property
    def period_last_day(self) -> date | None:
        """The last day (UTC) of the period: Stripe's ``period_end`` is the moment it ended, so a
        month's invoice ends at 00:00 on the next month's first day."""
        if self.period_end is None:
            return None
        last = self.period_end - timedelta(microseconds=1)
        if self.period_start is not None:
            last = max(last, self.period_start)  # an invoice for no time at all
        return last.astimezone(UTC).date()


class ReconciliationResult(models.Model):
    """One org, meter and day: the ledger, what we sent, and what Stripe's summary says."""

    org = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="reconciliation_results"
    )
    meter_key = models.SlugField(max_length=32)
    day = models.DateField()
    ledger_micros = models.BigIntegerField(help_text="Rollups of the day's billable hours.")
    reported_micros = models.BigIntegerField(
        default=0, help_text="Meter events queued or sent for the day's hours."
    )
    sent_micros = models.BigIntegerField(help_text="Meter events sent, by their timestamp.")
    stripe_value = models.BigIntegerField(null=True, blank=True)
    matches = models.BooleanField()
    detail = models.CharField(max_length=300, blank=True)
    checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["matches", "-day"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "meter_key", "day"], name="reconciliation_unique_day"
            )
        ]

    def __str__(self) -> str:
        return f"{self.org} {self.meter_key} {self.day}: {'ok' if self.matches else 'differs'}"
