from __future__ import annotations

import uuid
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.utils import timezone

from billing.money import dollars_to_micros, micros_to_decimal
from billing.selectors import UsageFilters, usage_models, usage_routes
from billing.services.accounts import MAX_BUDGET_MICROS
from console.days import day_validators
from console.forms import key_filter_field
from console.models import Organisation

MAX_RANGE_DAYS = 366
GROUPS = [("model", "Model"), ("route", "Route"), ("key", "API key")]


class UsageFilterForm(forms.Form):
    start = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), validators=day_validators()
    )
    end = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), validators=day_validators()
    )
    key = forms.ChoiceField(required=False, label="API key")
    route = forms.ChoiceField(required=False)
    model = forms.ChoiceField(required=False)
    group = forms.ChoiceField(required=False, choices=GROUPS, label="Split by")

    def __init__(self, *args: Any, org: Organisation, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        today = timezone.now().date()
        self.initial.setdefault("end", today)
        self.initial.setdefault("start", today - timedelta(days=29))
        self.fields["key"] = key_filter_field(org)
        routes, models = usage_routes(org), usage_models(org)
        cast(forms.ChoiceField, self.fields["route"]).choices = [
            ("", "All routes"),
            *[(r, r) for r in routes],
        ]
        cast(forms.ChoiceField, self.fields["model"]).choices = [
            ("", "All models"),
            *[(m, m) for m in models],
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        today = timezone.now().date()
        end: date = data.get("end") or today
        start: date = data.get("start") or end - timedelta(days=29)
        if start > end:
            self.add_error("start", "The start must not be after the end.")
        elif (end - start).days >= MAX_RANGE_DAYS:
            self.add_error("start", f"Choose at most {MAX_RANGE_DAYS} days.")
        data["start"], data["end"] = start, end
        return data

    def filters(self) -> tuple[UsageFilters, str]:
        """The validated filters, or the defaults (last 30 days, everything) when invalid."""
        today = timezone.now().date()
        if not self.is_bound or not self.is_valid():
            return UsageFilters(start=today - timedelta(days=29), end=today), "model"
        data = self.cleaned_data
        return (
            UsageFilters(
                start=data["start"],
                end=data["end"],
                key_id=uuid.UUID(data["key"]) if data.get("key") else None,
                route=data.get("route") or "",
                model=data.get("model") or "",
            ),
            data.get("group") or "model",
        )


def _budget_amount(**kwargs: Any) -> forms.DecimalField:
    """A budget in dollars, to the micro-dollar, within what the REST API accepts: a budget set
    there (in micro-dollars) can be saved again here unchanged."""
    return forms.DecimalField(
        required=False,
        min_value=Decimal("0.000001"),
        max_value=micros_to_decimal(MAX_BUDGET_MICROS),
        max_digits=17,
        decimal_places=6,
        **kwargs,
    )


class BudgetForm(forms.Form):
    amount = _budget_amount(label="Monthly budget (USD)", help_text="Leave empty for no budget.")
    hard_limit = forms.BooleanField(
        required=False,
        initial=True,
        label="Refuse requests once the budget is reached",
    )

    def amount_micros(self) -> int | None:
        amount = self.cleaned_data.get("amount")
        return None if amount is None else dollars_to_micros(amount)


class KeyBudgetForm(forms.Form):
    amount = _budget_amount()

    def amount_micros(self) -> int | None:
        amount = self.cleaned_data.get("amount")
        return None if amount is None else dollars_to_micros(amount)


class PlanForm(forms.Form):
    plan = forms.SlugField(max_length=32)
