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
    """12_345_678 -> '$12.35' (half up); small amounts keep more places so they do not read $0."""
    if micros is None:
        return "—"
    value = micros_to_decimal(micros)
    if 0 < abs(micros) < 10_000 and places < 6:
        places = 6
    quantum = Decimal(1).scaleb(-places)
    rounded = value.quantize(quantum, rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.{places}f}"
