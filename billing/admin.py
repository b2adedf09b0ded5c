"""Staff pages: prices and plans (editable), and the ledger and Stripe state (read-only).

Prices already in force are read-only: a change is a new version with a later start, so that
past usage keeps the price it was rated at.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from billing.models import (
    BilledSpan,
    BillingAccount,
    Budget,
    BudgetAlert,
    Invoice,
    MeterEvent,
    Plan,
    Price,
    ReconciliationResult,
    RollupCursor,
    StripeEvent,
    StripeMeter,
    UptimeRecord,
    UsageRecord,
    UsageRollup,
)
from billing.models.payments import MeterEventStatus
from billing.services.webhooks import stripe_event_process
from console.admin import LedgerAdmin, ReadOnlyAdmin
from console.models import Organisation
from console.snapshot import snapshot_bump


class PriceAdminForm(forms.ModelForm[Price]):
    """A new price starts with its amounts empty, not at the model's default of 0: a form saved
    without them would otherwise make the price free from now on. (The admin supplies the
    model and fields.)"""

    AMOUNTS = ("input_micros_per_million", "output_micros_per_million")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("initial") or {}
        super().__init__(*args, **kwargs)
        if self.instance._state.adding:
            for name in self.AMOUNTS:
                if name in self.fields and name not in given:
                    self.initial.pop(name, None)
                    self.fields[name].initial = None


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin[Price]):
    form = PriceAdminForm
    list_display = [
        "__str__",
        "unit",
        "input_micros_per_million",
        "output_micros_per_million",
        "cached_input_micros_per_million",
        "micros_per_unit_hour",
        "effective_from",
    ]
    list_filter = ["unit", ("org", admin.EmptyFieldListFilter)]
    search_fields = ["model", "org__slug", "deployment_id", "note"]
    autocomplete_fields = ["org"]
    date_hierarchy = "effective_from"

    def get_readonly_fields(self, request: HttpRequest, obj: Price | None = None) -> list[str]:
        if obj is not None and obj.effective_from <= timezone.now():
            return [f.name for f in Price._meta.fields]
        return ["created_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Price | None = None) -> bool:
        return obj is None or obj.effective_from > timezone.now()

    def save_model(self, request: HttpRequest, obj: Price, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        snapshot_bump()


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin[Plan]):
    list_display = ["name", "code", "kind", "monthly_credit_micros", "is_default"]

    def save_model(self, request: HttpRequest, obj: Plan, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        snapshot_bump()

    def has_delete_permission(self, request: HttpRequest, obj: Plan | None = None) -> bool:
        # Organisations without an account of their own are on the default plan, and spend
        # limits (the console, the gateways' snapshot) cannot be worked out without it.
        if obj is not None and obj.is_default:
            return False
        return super().has_delete_permission(request, obj)


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin[BillingAccount]):
    list_display = [
        "org",
        "plan",
        "subscription_status",
        "payment_method_label",
        "grace_until",
        "suspended_for_payment",
    ]
    list_filter = ["plan", "subscription_status", "suspended_for_payment"]
    search_fields = ["org__name", "org__slug", "stripe_customer_id"]
    readonly_fields = [
        "stripe_customer_id",
        "stripe_subscription_id",
        "subscription_status",
        "subscription_event_at",
        "subscription_generation",
        "payment_method_id",
        "payment_method_label",
        "payment_failed_at",
        "grace_until",
        "suspended_for_payment",
        "billable_from",
        "billable_until",
    ]

    def save_model(
        self, request: HttpRequest, obj: BillingAccount, form: Any, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        snapshot_bump()


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin[Budget]):
    list_display = ["org", "amount_micros", "hard_limit", "updated_at"]

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        snapshot_bump()


@admin.register(BilledSpan)
class BilledSpanAdmin(ReadOnlyAdmin):
    """The hours ended subscriptions billed: kept by the billing code, read here."""

    list_display = ["org", "start", "end"]
    search_fields = ["org__slug"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["org", "subject", "period", "threshold", "spend_micros", "sent_at"]
    list_filter = ["threshold", "period"]


class OutcomeFilter(admin.SimpleListFilter):
    """By status class: fixed choices, so the page never lists the column's distinct values."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("ok", "Succeeded (below 400)"),
            ("4xx", "Client errors (4xx, rate limits and disconnects included)"),
            ("5xx", "Server and upstream errors (5xx)"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        match self.value():
            case "ok":
                return queryset.filter(status_code__lt=400)
            case "4xx":
                return queryset.filter(status_code__gte=400, status_code__lt=500)
            case "5xx":
                return queryset.filter(status_code__gte=500)
        return queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(LedgerAdmin):
    list_display = [
        "request_id",
        "org",
        "model",
        "route",
        "prompt_tokens",
        "completion_tokens",
        "cost_micros",
        "status_code",
        "error_code",
        "served_at",
    ]
    list_filter = [OutcomeFilter, ("served_at", admin.DateFieldListFilter)]
    # Searched by get_search_results (exact matches, indexed where it can be).
    search_fields = ["request_id"]
    search_help_text = (
        "An exact request id (req-...), an organisation's slug, or a model, route or error code."
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageRecord], search_term: str
    ) -> tuple[QuerySet[UsageRecord], bool]:
        """The first kind of match that exists: a request id (its unique index), an
        organisation's slug (the org's index), else a model, route or error code. Exact, never a
        substring, which would read every row of the ledger."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.startswith("req-"):
            return queryset.filter(request_id=term), False
        org = Organisation.objects.filter(slug=term).first()
        if org is not None:
            return queryset.filter(org=org), False
        return queryset.filter(Q(model=term) | Q(route=term) | Q(error_code=term)), False


@admin.register(UsageRollup)
class UsageRollupAdmin(LedgerAdmin):
    """Rows per org, hour, model, route and key: nearly a row per request for an organisation
    with thousands of keys. Newest hour first (its index), and the ledger's other limits."""

    list_display = ["hour", "org", "source", "model", "route", "requests", "cost_micros"]
    list_filter = ["source", ("hour", admin.DateFieldListFilter)]
    ordering = ["-hour"]
    # Searched by get_search_results (exact matches).
    search_fields = ["model"]
    search_help_text = "An organisation's slug, or an exact model or route."

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageRollup], search_term: str
    ) -> tuple[QuerySet[UsageRollup], bool]:
        """An organisation's slug (the org's index), else a model or route. Exact, never a
        substring, which would read every rollup."""
        term = search_term.strip()
        if not term:
            return queryset, False
        org = Organisation.objects.filter(slug=term).first()
        if org is not None:
            return queryset.filter(org=org), False
        return queryset.filter(Q(model=term) | Q(route=term)), False


@admin.register(UptimeRecord)
class UptimeRecordAdmin(ReadOnlyAdmin):
    list_display = ["hour", "org", "model", "replica_id", "gpus", "seconds", "cost_micros"]
    search_fields = ["org__slug", "model", "event_id"]
    date_hierarchy = "hour"


@admin.register(RollupCursor)
class RollupCursorAdmin(ReadOnlyAdmin):
    list_display = ["created_before", "last_run_at"]


@admin.register(StripeMeter)
class StripeMeterAdmin(ReadOnlyAdmin):
    list_display = ["key", "event_name", "stripe_meter_id", "stripe_price_id"]


@admin.register(MeterEvent)
class MeterEventAdmin(ReadOnlyAdmin):
    list_display = ["identifier", "org", "meter_key", "hour", "value", "status", "attempts"]
    list_filter = ["status", "meter_key"]
    search_fields = ["identifier", "org__slug"]
    actions = ["retry"]

    @admin.action(description="Send the selected failed events again")
    def retry(self, request: HttpRequest, queryset: QuerySet[MeterEvent]) -> None:
        count = queryset.filter(status=MeterEventStatus.FAILED).update(
            status=MeterEventStatus.PENDING, next_attempt_at=timezone.now(), claimed_at=None
        )
        self.message_user(request, f"{count} event(s) will be sent on the next run.")


@admin.register(ReconciliationResult)
class ReconciliationResultAdmin(ReadOnlyAdmin):
    list_display = [
        "day",
        "org",
        "meter_key",
        "ledger_micros",
        "reported_micros",
        "sent_micros",
        "stripe_value",
        "matches",
        "detail",
    ]
    list_filter = ["matches", "meter_key"]
    date_hierarchy = "day"


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "stripe_created", "processed_at", "attempts", "error"]
    list_filter = ["type", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id"]
    actions = ["reprocess"]

    @admin.action(description="Handle the selected unprocessed events again")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[StripeEvent]) -> None:
        done = sum(
            1
            for pk in queryset.filter(processed_at=None).values_list("pk", flat=True)
            if stripe_event_process(event_pk=pk)
        )
        self.message_user(request, f"{done} event(s) handled.", messages.INFO)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["number", "org", "status", "amount_due_cents", "period_start", "paid_at"]
    list_filter = ["status"]
    search_fields = ["number", "stripe_invoice_id", "org__slug"]
