"""Micro-dollars in and out: parsing amounts people type and showing amounts to people.

Amounts stay integers (micro-dollars) everywhere; Decimal is used only at the edges.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_DOLLAR = 1_000_000


def dollars_to_micros(amount: Decimal | str) -> int:
    """'12.50' -> 12_500_000. Raises ValueError for anything that is not a non-negative amount."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"not an amount: {amount!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a non-negative amount: {amount!r}")
    return int((value * MICROS_PER_DOLLAR).to_integral_value(rounding=ROUND_HALF_UP))


def micros_to_decimal(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_DOLLAR


def format_dollars(micros: int | None, places: int = 2) -> str:
    """Exact: at least ``places`` decimals, more (up to six, a micro-dollar) only as needed, so
    that amounts shown side by side add up: 12_340_000 -> '$12.34', 2_500 -> '$0.0025',
    1_234_567 -> '$1.234567'."""
    if micros is None:
        return "—"
    whole, fraction = divmod(abs(micros), MICROS_PER_DOLLAR)
    digits = f"{fraction:06d}".rstrip("0").ljust(places, "0")
    sign = "-" if micros < 0 else ""
    return f"{sign}${whole:,}" + (f".{digits}" if digits else "")
