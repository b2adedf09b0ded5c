from __future__ import annotations

from django import template

from billing.money import format_dollars

register = template.Library()


@register.filter
def dollars(micros: int | None) -> str:
    """Show micro-dollars as dollars: {{ row.cost_micros|dollars }}."""
    return format_dollars(micros)


@register.filter
def cents(amount_cents: int | None) -> str:
    """Stripe's amounts are in cents: {{ invoice.amount_due_cents|cents }} -> $12.34."""
    if amount_cents is None:
        return "—"
    return format_dollars(int(amount_cents) * 10_000)


@register.filter
def plain_dollars(micros: int | None) -> str:
    """For form inputs, exact: 12_500_000 -> 12.50, 1_234_567 -> 1.234567."""
    if micros is None:
        return ""
    return format_dollars(micros).lstrip("-$").replace(",", "")
