"""The UTC days that date filters accept.

Far apart enough for any range a tenant asks about, and near enough that the day after the
last one and a range's default start (29 days before its end) are still dates: Python's dates
end at 9999-12-31, and a filter naming that day used to fail with a 500 instead of an error on
the field.
"""

from __future__ import annotations

from datetime import date

from django.core.validators import BaseValidator, MaxValueValidator, MinValueValidator

FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2999, 12, 31)


def day_validators() -> list[BaseValidator]:
    """Validators for a form's or serializer's date field: a clear error outside the range."""
    message = f"Choose a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}."
    return [MinValueValidator(FIRST_DAY, message), MaxValueValidator(LAST_DAY, message)]
