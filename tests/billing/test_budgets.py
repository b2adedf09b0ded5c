from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.ledger import usage_record_batch
from billing.models import BilledSpan, BillingAccount, Budget, BudgetAlert, Plan
from billing.rollups import usage_rollup
from billing.selectors import (
    billed_spend,
    forecast_micros,
    free_credit_used,
    key_month_to_date_spend,
    month_to_date_spend,
    spend_limit_details,
    spend_limits,
)
from billing.services import accounts as account_services
from billing.services.accounts import MAX_BUDGET_MICROS, budget_set, key_budget_set
from billing.services.alerts import budget_alerts_check
from console.models import AuditEvent, ControlPlaneVersion, User
from console.permissions import Role
from console.services.keys import api_key_create
from tests.billing.factories import usage
from tests.factories import MembershipFactory, OrgFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def spend(org, micros_each: int, n: int, at: datetime, **fields):  # type: ignore[no-untyped-def]
    # At the fallback price, 2 prompt tokens cost 1 µ$; build requests costing micros_each.
    usage_record_batch(
        [
            usage(org.pk, at, prompt_tokens=2 * micros_each, completion_tokens=0, **fields)
            for _ in range(n)
        ]
    )


def test_month_to_date_counts_rollups_and_the_latest_records_once(org):
    spend(org, 1_000, 1, datetime(2026, 2, 28, 23, 0, tzinfo=UTC))  # last month
    spend(org, 1_000, 2, datetime(2026, 3, 1, 0, 5, tzinfo=UTC))
    spend(org, 1_000, 1, NOW - timedelta(hours=5))
    usage_rollup(now=NOW - timedelta(hours=3))
    spend(org, 1_000, 1, NOW - timedelta(minutes=10))  # not rolled up yet
    assert month_to_date_spend(now=NOW) == {org.pk: 4_000}
    assert month_to_date_spend([org.pk, 999_999], now=NOW) == {org.pk: 4_000, 999_999: 0}
    usage_rollup(now=NOW)
    assert month_to_date_spend(now=NOW)[org.pk] == 4_000


def test_key_month_to_date_spend(org, owner):
    key = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).key
    spend(org, 500, 3, NOW - timedelta(minutes=5), api_key_id=key.pk)
    spend(org, 500, 1, NOW - timedelta(minutes=5))
    assert key_month_to_date_spend(now=NOW) == {key.pk: 1_500}


def test_forecast_extends_the_last_weeks_pace_to_the_month_end(org):
    spend(org, 7_000, 1, datetime(2026, 3, 5, 12, 0, tzinfo=UTC))
    now = datetime(2026, 3, 12, 0, 0, tzinfo=UTC)
    usage_rollup(now=now)
    # 7,000 µ$ in the last 7 days = 1,000 a day; 20 days left in March.
    assert forecast_micros(org=org, now=now) == 7_000 + 20_000


@pytest.mark.parametrize("first_hour_rolled_up", [False, True])
def test_forecast_on_the_first_of_the_month_keeps_the_last_weeks_pace(org, first_hour_rolled_up):
    """$2 an hour through the end of June, then $1 in July's first hour: an hour into July the
    pace is still that of the last 168 hours, not of July's minutes."""
    june = datetime(2026, 6, 24, 1, 0, tzinfo=UTC)
    for hour in range(167):  # June 24th 01:00 to June 30th 23:00
        spend(org, 2_000_000, 1, june + timedelta(hours=hour))
    usage_rollup(now=datetime(2026, 7, 1, 0, 5, tzinfo=UTC))
    spend(org, 1_000_000, 1, datetime(2026, 7, 1, 0, 30, tzinfo=UTC))
    if first_hour_rolled_up:
        usage_rollup(now=datetime(2026, 7, 1, 0, 55, tzinfo=UTC))
    now = datetime(2026, 7, 1, 1, 0, tzinfo=UTC)
    assert month_to_date_spend([org.pk], now=now)[org.pk] == 1_000_000
    # $335 in the last 168 hours, for the 743 hours left in July.
    assert forecast_micros(org=org, now=now) == 1_000_000 + 335_000_000 * 743 // 168


def test_forecast_divides_by_the_time_it_summed(org):
    spend(org, 1_000_000, 1, datetime(2026, 3, 5, 12, 0, tzinfo=UTC))
    now = datetime(2026, 3, 12, 0, 30, tzinfo=UTC)
    usage_rollup(now=now)
    # The hours summed start at 03-05 00:00: 7 days and 30 minutes to now, 19 days 23.5 hours
    # left; the $1 is in March's month-to-date too.
    assert forecast_micros(org=org, now=now) == 1_000_000 + 1_000_000 * 959 // 337


def test_free_plan_caps_at_its_credit_with_a_reason(org):
    limit = spend_limit_details([org.pk])[org.pk]
    assert limit.cap_micros == 5_000_000 and limit.reason == "free_credit"
    assert "monthly credit of $5.00 is used up" in limit.message


def test_an_org_budget_below_the_credit_is_the_cap_and_changes_bump_the_snapshot(
    org, owner, django_capture_on_commit_callbacks
):
    before = ControlPlaneVersion.objects.filter(pk=1).values_list("version", flat=True).first() or 0
    with django_capture_on_commit_callbacks(execute=True):
        budget_set(org=org, actor=owner, amount_micros=2_000_000)
    assert spend_limits([org.pk]) == {org.pk: 2_000_000}
    assert spend_limit_details([org.pk])[org.pk].reason == "org_budget"
    assert ControlPlaneVersion.objects.get(pk=1).version == before + 1
    budget_set(org=org, actor=owner, amount_micros=2_000_000, hard_limit=False)
    assert spend_limits([org.pk]) == {org.pk: 5_000_000}


def test_pay_as_you_go_has_no_cap_in_local_ledger_mode_but_needs_a_card_with_stripe(org, settings):
    BillingAccount.objects.create(org=org, plan=Plan.objects.get(code="payg"))
    assert spend_limits([org.pk]) == {org.pk: None}
    settings.STRIPE_API_KEY = "sk_test_x"
    limit = spend_limit_details([org.pk])[org.pk]
    assert (limit.cap_micros, limit.reason) == (0, "payment_method_required")


def test_after_a_return_to_free_the_credit_counts_only_the_usage_since(org, owner, settings):
    """$20 on Pay as you go, invoiced when the subscription was cancelled on the 5th: back on
    Free, the month's credit is still whole."""
    settings.STRIPE_API_KEY = "sk_test_x"
    BillingAccount.objects.create(
        org=org,
        plan=Plan.objects.get(code="free"),
        stripe_customer_id="cus_acme",
        subscription_status="canceled",
        billable_from=datetime(2026, 2, 1, tzinfo=UTC),
        billable_until=datetime(2026, 3, 5, 8, 20, tzinfo=UTC),
    )
    spend(org, 20_000_000, 1, datetime(2026, 3, 5, 8, 0, tzinfo=UTC))
    spend(org, 1_000_000, 1, datetime(2026, 3, 5, 8, 40, tzinfo=UTC))  # in the hour billed
    spend(org, 4_000_000, 1, datetime(2026, 3, 7, tzinfo=UTC))  # on Free
    usage_rollup(now=NOW)
    with time_machine.travel(NOW, tick=False):
        limit = spend_limit_details([org.pk])[org.pk]
        assert limit.reason == "free_credit"
        # The cap is on the month's spend: $21 billed plus the $5 credit.
        assert limit.cap_micros == 26_000_000
        assert budget_alerts_check(now=NOW) == 1
    alerts = BudgetAlert.objects.filter(subject="credit")
    assert sorted(alerts.values_list("threshold", "spend_micros", "limit_micros")) == [
        (50, 4_000_000, 5_000_000),
        (80, 4_000_000, 5_000_000),
    ]


def test_every_subscription_this_month_counts_as_billed_after_a_return_to_free(
    org, settings, meters, monkeypatch
):
    """Pay as you go from the 1st to the 5th ($20, invoiced on cancelling), Free, Pay as you go
    again from the 7th to the 8th ($1), Free since: both subscriptions' hours are billed, the
    $2 used on Free between them and the $1 since use the credit."""
    settings.STRIPE_API_KEY = "sk_test_x"
    monkeypatch.setattr(
        account_services, "with_retries", lambda call: SimpleNamespace(id="sub_x", status="active")
    )
    free, payg = Plan.objects.get(code="free"), Plan.objects.get(code="payg")
    account = BillingAccount.objects.create(org=org, plan=payg, stripe_customer_id="cus_acme")
    for start, used, end in [
        (datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC), 20_000_000, datetime(2026, 3, 5, 8, 20)),
        (datetime(2026, 3, 7, 0, 0, 30, tzinfo=UTC), 1_000_000, datetime(2026, 3, 8, 8, 20)),
    ]:
        BillingAccount.objects.filter(pk=account.pk).update(plan=payg)
        account.refresh_from_db()
        with time_machine.travel(start, tick=False):
            account_services.subscription_ensure(account=account)
        spend(org, used, 1, start + timedelta(hours=9))
        with time_machine.travel(end.replace(tzinfo=UTC), tick=False):
            account_services.subscription_cancel(account=account)
        BillingAccount.objects.filter(pk=account.pk).update(plan=free)
    spend(org, 2_000_000, 1, datetime(2026, 3, 6, 9, tzinfo=UTC))  # on Free, between them
    spend(org, 1_000_000, 1, datetime(2026, 3, 9, 9, tzinfo=UTC))  # on Free since
    usage_rollup(now=NOW)
    account.refresh_from_db()
    assert billed_spend(account, now=NOW) == 21_000_000
    with time_machine.travel(NOW, tick=False):
        limit = spend_limit_details([org.pk])[org.pk]
        assert (limit.reason, limit.cap_micros) == ("free_credit", 21_000_000 + 5_000_000)
        assert budget_alerts_check(now=NOW) == 1
    alerts = BudgetAlert.objects.filter(subject="credit")
    assert sorted(alerts.values_list("threshold", "spend_micros")) == [(50, 3_000_000)]
    assert free_credit_used(account, mtd=24_000_000, now=NOW) == 3_000_000
    # Next month, the spans of March bill nothing.
    assert billed_spend(account, now=datetime(2026, 4, 2, tzinfo=UTC)) == 0


def _back_on_free(n: int) -> None:
    """``n`` orgs on Free, each after two subscriptions this month, with usage in both."""
    for _ in range(n):
        org = OrgFactory()
        BillingAccount.objects.create(
            org=org,
            plan=Plan.objects.get(code="free"),
            subscription_status="canceled",
            billable_from=datetime(2026, 3, 7, 0, 30, tzinfo=UTC),
            billable_until=datetime(2026, 3, 8, 8, 20, tzinfo=UTC),
        )
        BilledSpan.objects.create(
            org=org, start=datetime(2026, 2, 1, tzinfo=UTC), end=datetime(2026, 3, 5, tzinfo=UTC)
        )
        spend(org, 1_000, 1, datetime(2026, 3, 2, tzinfo=UTC))
        spend(org, 2_000, 1, datetime(2026, 3, 7, 9, tzinfo=UTC))
        spend(org, 4_000, 1, NOW - timedelta(minutes=5))  # on Free, not rolled up yet


def test_the_credit_of_orgs_back_on_free_is_read_in_queries_that_do_not_grow_with_them(
    django_capture_on_commit_callbacks,
):
    def queries() -> int:
        usage_rollup(now=NOW - timedelta(hours=2))
        with time_machine.travel(NOW, tick=False), CaptureQueriesContext(connection) as read:
            limits = spend_limit_details()
            with django_capture_on_commit_callbacks():
                budget_alerts_check(now=NOW)
        assert {limit.cap_micros for limit in limits.values()} == {5_003_000}
        return len(read.captured_queries)

    _back_on_free(1)
    one = queries()
    _back_on_free(20)
    assert queries() == one


def test_budget_input_is_validated(org, owner):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        budget_set(org=org, actor=owner, amount_micros=0)
    with pytest.raises(ValidationError):
        budget_set(org=org, actor=owner, amount_micros=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at most"):
        budget_set(org=org, actor=owner, amount_micros=MAX_BUDGET_MICROS + 1)
    key = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).key
    for bad in (0, True, 2**63):
        with pytest.raises(ValidationError):
            key_budget_set(key=key, actor=owner, amount_micros=bad)
    key.refresh_from_db()
    assert key.monthly_budget_micros is None and not Budget.objects.exists()
    budget_set(org=org, actor=owner, amount_micros=MAX_BUDGET_MICROS)


def test_alerts_go_out_once_per_threshold_and_period(
    org, owner, django_capture_on_commit_callbacks
):
    budget_set(org=org, actor=owner, amount_micros=10_000)
    spend(org, 6_000, 1, NOW - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        assert budget_alerts_check(now=NOW) == 1
        assert budget_alerts_check(now=NOW) == 0
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "Acme: 50% of the organisation's monthly budget used"
    assert mail.outbox[0].to == [owner.email]
    spend(org, 4_000, 1, NOW - timedelta(minutes=4))  # 100%: 80 and 100 crossed together
    with django_capture_on_commit_callbacks(execute=True):
        assert budget_alerts_check(now=NOW) == 1
    assert "100%" in mail.outbox[1].subject and "refused" in mail.outbox[1].body
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80, 100]
    # The audit log (and the org's webhooks) hear of each alert, amounts in micro-dollars.
    recorded = AuditEvent.objects.filter(org=org, action="billing.budget_alert").order_by(
        "created_at"
    )
    assert [e.data["threshold_percent"] for e in recorded] == [50, 100]
    assert recorded.last().data == {
        "subject": "org",
        "label": "the organisation's monthly budget",
        "threshold_percent": 100,
        "spend_micros": 10_000,
        "limit_micros": 10_000,
        "enforced": True,
    }
    # Next month starts afresh.
    next_month = datetime(2026, 4, 1, 1, 0, tzinfo=UTC)
    spend(org, 6_000, 1, next_month - timedelta(minutes=30))
    with django_capture_on_commit_callbacks(execute=True):
        assert budget_alerts_check(now=next_month) == 1


def test_alerts_skip_deactivated_accounts(org, owner, django_capture_on_commit_callbacks):
    gone = MembershipFactory(org=org, role=Role.ADMIN).user
    User.objects.filter(pk=gone.pk).update(is_active=False)  # staff deactivated it
    budget_set(org=org, actor=owner, amount_micros=10_000)
    spend(org, 6_000, 1, NOW - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        assert budget_alerts_check(now=NOW) == 1
    [message] = mail.outbox
    assert message.to == [owner.email]


def test_key_budget_alerts(org, owner, django_capture_on_commit_callbacks):
    key = api_key_create(org=org, actor=owner, name="ci", scopes=["inference"]).key
    key_budget_set(key=key, actor=owner, amount_micros=1_000)
    spend(org, 900, 1, NOW - timedelta(minutes=5), api_key_id=key.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert budget_alerts_check(now=NOW) == 1
    assert "80% of the monthly budget of key “ci”" in mail.outbox[0].subject
