"""Budget alerts by email at 50, 80 and 100 percent, each sent once per month.

"Once" is the unique (org, subject, period, threshold) row in ``BudgetAlert``: the row is
inserted before the email is queued, in one transaction, so a second run finds it and sends
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing.models import BillingAccount, Budget, BudgetAlert, PlanKind
from billing.money import format_dollars
from billing.selectors import (
    billed_spends,
    default_plan,
    key_month_to_date_spend,
    month_start,
    month_to_date_spend,
)
from billing.services.accounts import billing_contacts
from console.models import ApiKey, Organisation
from console.services.audit import audit_record
from console.services.mail import mail_send

THRESHOLDS = (50, 80, 100)


@dataclass(frozen=True)
class _Watch:
    org_id: int
    subject: str
    label: str
    limit_micros: int
    spend_micros: int
    enforced: bool = True


def _watches(now: datetime) -> list[_Watch]:
    spend = month_to_date_spend(now=now)
    key_spend = key_month_to_date_spend(now=now)
    watches = []
    for budget in Budget.objects.all():
        watches.append(
            _Watch(
                budget.org_id,
                "org",
                "the organisation's monthly budget",
                budget.amount_micros,
                spend.get(budget.org_id, 0),
                budget.hard_limit,
            )
        )
    fallback = default_plan()
    accounts = {a.org_id: a for a in BillingAccount.objects.select_related("plan")}
    billed = billed_spends((a for a in accounts.values() if a.plan.kind == PlanKind.FREE), now=now)
    for org_id, org_spend in spend.items():
        account = accounts.get(org_id)
        plan = account.plan if account else fallback
        if plan.kind == PlanKind.FREE and plan.monthly_credit_micros > 0:
            # The credit covers the spend on Free, not what a subscription billed this month.
            watches.append(
                _Watch(
                    org_id,
                    "credit",
                    f"the {plan.name} plan's monthly credit",
                    plan.monthly_credit_micros,
                    max(org_spend - billed.get(org_id, 0), 0),
                )
            )
    for key in ApiKey.objects.filter(monthly_budget_micros__gt=0, revoked_at__isnull=True):
        assert key.monthly_budget_micros is not None
        watches.append(
            _Watch(
                key.org_id,
                f"key:{key.pk}",
                f"the monthly budget of key “{key.name}” ({key.prefix}…)",
                key.monthly_budget_micros,
                key_spend.get(key.pk, 0),
            )
        )
    return watches


def budget_alerts_check(*, now: datetime | None = None) -> int:
    """Send the alerts whose thresholds were crossed this month; returns how many were sent.

    Thresholds crossed together (50 and 80 in one run) are all recorded, and one email names the
    highest."""
    now = now or timezone.now()
    period = month_start(now).date()
    sent = 0
    for watch in _watches(now):
        crossed = [t for t in THRESHOLDS if watch.spend_micros * 100 >= watch.limit_micros * t]
        if not crossed:
            continue
        with transaction.atomic():
            new = [
                t
                for t in crossed
                if BudgetAlert.objects.get_or_create(
                    org_id=watch.org_id,
                    subject=watch.subject,
                    period=period,
                    threshold=t,
                    defaults={
                        "spend_micros": watch.spend_micros,
                        "limit_micros": watch.limit_micros,
                    },
                )[1]
            ]
            if new:
                _record(watch, max(new))
                _send(watch, max(new))
                sent += 1
    return sent


def _record(watch: _Watch, threshold: int) -> None:
    """The audit log (and so the org's webhooks) hears of it too; amounts in micro-dollars."""
    audit_record(
        org=Organisation.objects.get(pk=watch.org_id),
        action="billing.budget_alert",
        data={
            "subject": watch.subject,
            "label": watch.label,
            "threshold_percent": threshold,
            "spend_micros": watch.spend_micros,
            "limit_micros": watch.limit_micros,
            "enforced": watch.enforced,
        },
    )


def _send(watch: _Watch, threshold: int) -> None:
    org = Organisation.objects.get(pk=watch.org_id)
    context = {
        "org": org,
        "label": watch.label,
        "threshold": threshold,
        "enforced": watch.enforced,
        "spend": format_dollars(watch.spend_micros),
        "limit": format_dollars(watch.limit_micros),
        "url": settings.SITE_URL + reverse("billing", args=[org.slug]),
    }
    recipients = billing_contacts(org)
    if not recipients:
        return
    subject = f"{org.name}: {threshold}% of {watch.label} used"
    body = render_to_string("billing/email/budget_alert.txt", context)
    transaction.on_commit(
        lambda: mail_send(kind="budget alert", subject=subject, message=body, to=recipients)
    )
