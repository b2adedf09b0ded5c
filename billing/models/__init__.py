"""Billing's tables: prices and plans, the usage ledger and its rollups, accounts and budgets,
and the Stripe side (meter events, webhooks, invoices, reconciliation)."""

from billing.models.accounts import BilledSpan, BillingAccount, Budget, BudgetAlert
from billing.models.ledger import RollupCursor, UptimeRecord, UsageRecord, UsageRollup
from billing.models.payments import (
    Invoice,
    MeterEvent,
    ReconciliationResult,
    StripeEvent,
    StripeMeter,
)
from billing.models.prices import Plan, PlanKind, Price, PriceUnit

__all__ = [
    "BilledSpan",
    "BillingAccount",
    "Budget",
    "BudgetAlert",
    "Invoice",
    "MeterEvent",
    "Plan",
    "PlanKind",
    "Price",
    "PriceUnit",
    "ReconciliationResult",
    "RollupCursor",
    "StripeEvent",
    "StripeMeter",
    "UptimeRecord",
    "UsageRecord",
    "UsageRollup",
]
