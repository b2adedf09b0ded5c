"""Contract tests: the exact requests our code sends to Stripe, answered with Stripe's own
example objects and error shapes through the library's ``http_client`` hook."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import stripe
from django.core.exceptions import ValidationError
from django.db.models import Sum

from billing.ledger import usage_record_batch
from billing.models import BillingAccount, MeterEvent, StripeMeter, UsageRecord, UsageRollup
from billing.models.payments import MeterEventStatus
from billing.rollups import usage_rollup
from billing.selectors import billed_spend, invoice_estimate
from billing.services.accounts import (
    account_for,
    checkout_session_create,
    customer_ensure,
    portal_session_create,
    subscription_ensure,
)
from billing.services.meters import meter_events_prepare, meter_events_send, stripe_setup
from billing.services.reconcile import meter_reconcile
from console.services.closing import org_close
from tests.billing.conftest import subscribe
from tests.billing.factories import usage
from tests.billing.stripe_fake import stripe_error
from tests.factories import OrgFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)


def test_customer_is_created_once_per_org_with_a_fixed_idempotency_key(stripe_fake, org, owner):
    stripe_fake.answer("POST", "/v1/customers", stripe_fake.obj("customer", id="cus_new"))
    account = account_for(org=org)
    assert customer_ensure(account=account) == "cus_new"
    assert customer_ensure(account=account) == "cus_new"
    [call] = stripe_fake.requests
    assert (call.method, call.path) == ("POST", "/v1/customers")
    assert call.params == {
        "name": "Acme",
        "email": owner.email,
        "metadata[org_id]": str(org.public_id),
        "metadata[org_slug]": "acme",
    }
    assert call.idempotency_key == f"customer-create-{org.public_id}"
    assert BillingAccount.objects.get(org=org).stripe_customer_id == "cus_new"


def test_checkout_session_is_in_setup_mode_for_the_orgs_customer(stripe_fake, org, settings):
    settings.SITE_URL = "https://console.example"
    BillingAccount.objects.filter(org=org).delete()
    account_for(org=org)
    BillingAccount.objects.filter(org=org).update(stripe_customer_id="cus_acme")
    session = stripe_fake.obj("checkout.session", id="cs_1", mode="setup", customer="cus_acme")
    stripe_fake.answer("POST", "/v1/checkout/sessions", session)
    url = checkout_session_create(org=org, actor=None, plan_code="payg")
    assert url == session["url"]
    [call] = stripe_fake.requests
    assert call.path == "/v1/checkout/sessions"
    assert call.params == {
        "mode": "setup",
        "customer": "cus_acme",
        "currency": "usd",
        "client_reference_id": str(org.public_id),
        "success_url": "https://console.example/o/acme/billing/?checkout=success",
        "cancel_url": "https://console.example/o/acme/billing/?checkout=cancelled",
        "metadata[org_id]": str(org.public_id),
        "metadata[plan]": "payg",
    }
    assert call.idempotency_key.startswith(f"checkout-setup-{org.public_id}-")


def test_portal_session_returns_to_the_billing_page(stripe_fake, org, settings):
    settings.SITE_URL = "https://console.example"
    subscribe(org, since=T0)
    portal = stripe_fake.obj("billing_portal.session", customer="cus_acme")
    stripe_fake.answer("POST", "/v1/billing_portal/sessions", portal)
    assert portal_session_create(org=org, actor=None) == portal["url"]
    [call] = stripe_fake.requests
    assert call.params == {
        "customer": "cus_acme",
        "return_url": "https://console.example/o/acme/billing/",
    }


def test_stripe_setup_creates_meters_products_and_metered_prices_once(stripe_fake):
    stripe_fake.answer("POST", "/v1/billing/meters", stripe_fake.obj("billing.meter", id="mtr_1"))
    stripe_fake.answer("POST", "/v1/products", stripe_fake.obj("product", id="prod_1"))
    stripe_fake.answer("POST", "/v1/prices", stripe_fake.obj("price", id="price_1"))
    stripe_setup()
    stripe_setup()
    assert [(r.method, r.path) for r in stripe_fake.requests] == [
        ("POST", "/v1/billing/meters"),
        ("POST", "/v1/products"),
        ("POST", "/v1/prices"),
    ] * 2  # two meters, and nothing more on the second run
    meter, _, price = stripe_fake.requests[:3]
    assert meter.params == {
        "display_name": "Inference (tokens)",
        "event_name": "inference_tokens_cost",
        "default_aggregation[formula]": "sum",
        "customer_mapping[type]": "by_id",
        "customer_mapping[event_payload_key]": "stripe_customer_id",
        "value_settings[event_payload_key]": "value",
    }
    assert meter.idempotency_key == "meter-create-inference_tokens_cost"
    assert price.params == {
        "product": "prod_1",
        "currency": "usd",
        "unit_amount_decimal": "0.0001",
        "recurring[interval]": "month",
        "recurring[usage_type]": "metered",
        "recurring[meter]": "mtr_1",
        "lookup_key": "inference_tokens_cost_micros",
        "nickname": "Inference (tokens), per micro-dollar",
    }
    assert price.idempotency_key == "price-create-tokens"
    assert StripeMeter.objects.filter(stripe_price_id="price_1").count() == 2


def test_subscription_uses_the_metered_prices_and_a_generation_key(stripe_fake, meters, org):
    account = account_for(org=org)
    BillingAccount.objects.filter(pk=account.pk).update(stripe_customer_id="cus_acme")
    account.refresh_from_db()
    stripe_fake.answer(
        "POST",
        "/v1/subscriptions",
        stripe_fake.obj("subscription", id="sub_new", status="active", customer="cus_acme"),
    )
    assert subscription_ensure(account=account) == "sub_new"
    assert subscription_ensure(account=account) == "sub_new"
    [call] = stripe_fake.requests
    assert call.params == {
        "customer": "cus_acme",
        "items[0][price]": "price_tokens",
        "items[1][price]": "price_uptime",
        "billing_cycle_anchor_config[day_of_month]": "1",
        "proration_behavior": "none",
        "metadata[org_id]": str(org.public_id),
    }
    assert call.idempotency_key == f"subscription-create-{org.public_id}-1"
    account.refresh_from_db()
    assert account.billable_from is not None and account.subscription_generation == 1


def test_a_declined_card_raises_and_changes_nothing(stripe_fake, meters, org):
    account = account_for(org=org)
    BillingAccount.objects.filter(pk=account.pk).update(stripe_customer_id="cus_acme")
    account.refresh_from_db()
    stripe_fake.answer("POST", "/v1/subscriptions", stripe_error(402))
    with pytest.raises(stripe.CardError):
        subscription_ensure(account=account)
    assert len(stripe_fake.requests) == 1  # a 402 is not retried
    account.refresh_from_db()
    assert account.stripe_subscription_id == "" and account.subscription_generation == 0


def _meter_event_answer(fake, value="1"):  # type: ignore[no-untyped-def]
    return fake.obj("billing.meter_event", event_name="inference_tokens_cost")


def test_meter_events_carry_deterministic_identifiers_and_idempotency_keys(
    stripe_fake, meters, org
):
    subscribe(org, since=T0)
    usage_record_batch(
        [usage(org.pk, T0 + timedelta(minutes=m)) for m in (1, 2, 61)]  # two hours
    )
    usage_rollup(now=NOW)
    stripe_fake.answer("POST", "/v1/billing/meter_events", _meter_event_answer(stripe_fake))
    assert meter_events_prepare(now=NOW) == 2
    assert meter_events_send(now=NOW).sent == 2
    calls = stripe_fake.calls("POST", "/v1/billing/meter_events")
    hour = f"{T0:%Y%m%d%H}"
    assert calls[0].params == {
        "event_name": "inference_tokens_cost",
        "payload[stripe_customer_id]": "cus_acme",
        "payload[value]": "2500",  # 2 x (1,000 in at $0.50/M + 500 out at $1.50/M)
        "identifier": f"{org.public_id}-tokens-{hour}",
        "timestamp": str(int(T0.timestamp())),
    }
    assert calls[0].idempotency_key == f"meter-event-{org.public_id}-tokens-{hour}"
    assert calls[1].params["timestamp"] == str(int((T0 + timedelta(hours=1)).timestamp()))
    # Run again: nothing new to send.
    assert meter_events_prepare(now=NOW) == 0
    assert meter_events_send(now=NOW).sent == 0
    assert len(stripe_fake.requests) == 2


def test_a_run_sends_batch_after_batch_until_none_is_due_or_its_time_is_up(
    stripe_fake, meters, org, settings
):
    """A fixed batch a run (200 every 15 minutes) fell behind for good past a few hundred
    subscribed organisations; a run now sends until nothing is due, within its time."""
    subscribe(org, since=T0)
    usage_record_batch([usage(org.pk, T0 + timedelta(hours=h)) for h in range(5)])
    usage_rollup(now=NOW + timedelta(hours=5))
    stripe_fake.answer("POST", "/v1/billing/meter_events", _meter_event_answer(stripe_fake))
    assert meter_events_prepare(now=NOW + timedelta(hours=5)) == 5
    later = NOW + timedelta(hours=5)
    assert meter_events_send(now=later, limit=2).sent == 5
    hours = [c.params["timestamp"] for c in stripe_fake.calls("POST", "/v1/billing/meter_events")]
    assert hours == [str(int((T0 + timedelta(hours=h)).timestamp())) for h in range(5)]

    # With the run's time used up after its first batch, the rest wait for the next run.
    usage_record_batch([usage(org.pk, T0 + timedelta(hours=h)) for h in range(5, 10)])
    latest = NOW + timedelta(hours=10)
    usage_rollup(now=latest)
    assert meter_events_prepare(now=latest) == 5
    settings.BILLING_METER_SEND_SECONDS = 60
    ticks = iter([0.0, 61.0, 62.0, 63.0])
    assert meter_events_send(now=latest, limit=2, clock=lambda: next(ticks)).sent == 2
    assert meter_events_send(now=latest, limit=2).sent == 3


def test_records_equal_rollups_equal_what_was_sent_including_late_usage(stripe_fake, meters, org):
    subscribe(org, since=T0)
    stripe_fake.answer("POST", "/v1/billing/meter_events", _meter_event_answer(stripe_fake))
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=m)) for m in range(0, 120, 7)])
    usage_rollup(now=NOW)
    meter_events_prepare(now=NOW)
    meter_events_send(now=NOW)
    # Usage for the first hour arrives after that hour was reported.
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=30), completion_tokens=2_000)])
    later = NOW + timedelta(hours=1)
    usage_rollup(now=later)
    assert meter_events_prepare(now=later) == 1
    meter_events_send(now=later)
    late = stripe_fake.calls("POST", "/v1/billing/meter_events")[-1]
    assert late.params["identifier"] == f"{org.public_id}-tokens-{T0:%Y%m%d%H}-1"
    assert late.params["payload[value]"] == "3500"  # only the difference
    records = UsageRecord.objects.aggregate(c=Sum("cost_micros"))["c"]
    rollups = UsageRollup.objects.aggregate(c=Sum("cost_micros"))["c"]
    sent = sum(
        int(c.params["payload[value]"])
        for c in stripe_fake.calls("POST", "/v1/billing/meter_events")
    )
    assert records == rollups == sent
    assert (
        MeterEvent.objects.filter(status=MeterEventStatus.SENT).aggregate(v=Sum("value"))["v"]
        == sent
    )


def test_usage_before_the_subscription_is_not_billed(stripe_fake, meters, org):
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=5))])
    subscribe(org, since=T0 + timedelta(minutes=30))  # upgraded mid-hour
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=75))])
    usage_rollup(now=NOW)
    assert meter_events_prepare(now=NOW) == 1
    assert MeterEvent.objects.get().hour == T0 + timedelta(hours=1)


def test_usage_on_free_between_two_subscriptions_is_not_billed(stripe_fake, meters, org, owner):
    """Pay as you go from 09:00, Free at 10:05, Pay as you go again at 12:05: what was used on
    Free (11:00 and 12:00) is never reported; the new subscription's hours are, from 13:00."""
    import time_machine

    from billing.models import Plan
    from billing.services.accounts import plan_change

    subscribe(org, since=T0)
    stripe_fake.answer(
        "DELETE",
        "/v1/subscriptions/sub_acme",
        stripe_fake.obj("subscription", id="sub_acme", status="canceled", customer="cus_acme"),
    )
    stripe_fake.answer(
        "POST",
        "/v1/subscriptions",
        stripe_fake.obj("subscription", id="sub_new", status="active", customer="cus_acme"),
    )
    usage_record_batch([usage(org.pk, T0 + timedelta(hours=h, minutes=10)) for h in range(6)])
    usage_rollup(now=T0 + timedelta(hours=1, minutes=5))
    meter_events_prepare(now=T0 + timedelta(hours=1, minutes=5))  # the 09:00 hour, while on it
    with time_machine.travel(T0 + timedelta(hours=1, minutes=5), tick=False):
        plan_change(org=org, actor=owner, plan=Plan.objects.get(code="free"))
    with time_machine.travel(T0 + timedelta(hours=3, minutes=5), tick=False):
        plan_change(org=org, actor=owner, plan=Plan.objects.get(code="payg"))
    account = BillingAccount.objects.get(org=org)
    assert account.billable_from == T0 + timedelta(hours=3, minutes=5)
    assert account.billable_until is None and account.stripe_subscription_id == "sub_new"
    later = T0 + timedelta(hours=8)
    usage_rollup(now=later)
    meter_events_prepare(now=later)
    hours = sorted({event.hour for event in MeterEvent.objects.all()})
    assert hours == [T0 + timedelta(hours=h) for h in (0, 4, 5)]
    # Both subscriptions' hours count as billed (the first's to the end of the hour it ended
    # in), not the gap's; the estimate is the running subscription's.
    cost = dict(UsageRollup.objects.values_list("hour").annotate(c=Sum("cost_micros")))
    billed = [cost[T0 + timedelta(hours=h)] for h in (0, 1, 4, 5)]
    assert billed_spend(account, now=later) == sum(billed)
    assert invoice_estimate(account=account, now=later).usage_micros == sum(billed[2:])


def test_429_and_500_are_retried_with_backoff_under_one_idempotency_key(stripe_fake, meters, org):
    subscribe(org, since=T0)
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=1))])
    usage_rollup(now=NOW)
    meter_events_prepare(now=NOW)
    stripe_fake.answer(
        "POST",
        "/v1/billing/meter_events",
        stripe_error(429),
        stripe_error(500),
        _meter_event_answer(stripe_fake),
    )
    assert meter_events_send(now=NOW).sent == 1
    calls = stripe_fake.calls("POST", "/v1/billing/meter_events")
    assert len(calls) == 3
    assert len({c.idempotency_key for c in calls}) == 1
    assert stripe_fake.waits == [0.5, 1.0]


def test_persistent_5xx_leaves_the_event_for_a_later_run(stripe_fake, meters, org, settings):
    settings.STRIPE_MAX_RETRIES = 2
    subscribe(org, since=T0)
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=1))])
    usage_rollup(now=NOW)
    meter_events_prepare(now=NOW)
    stripe_fake.answer("POST", "/v1/billing/meter_events", stripe_error(500))
    result = meter_events_send(now=NOW)
    assert (result.sent, result.retry_later) == (0, 1)
    event = MeterEvent.objects.get()
    assert event.status == MeterEventStatus.PENDING and event.next_attempt_at > NOW
    assert len(stripe_fake.requests) == 3
    # Not due yet: the next run at the same moment sends nothing.
    assert meter_events_send(now=NOW).sent == 0 and len(stripe_fake.requests) == 3


def test_a_stripe_outage_ends_the_run_at_the_first_event_that_cannot_be_sent(
    stripe_fake, meters, org, settings, caplog
):
    """Otherwise every event of the batch waits through its own retries, and a run during an
    outage (200 events x 7.5 s of backoff) outlasts the task's time limit."""
    subscribe(org, since=T0)
    usage_record_batch([usage(org.pk, T0 + timedelta(hours=h, minutes=1)) for h in range(3)])
    now = NOW + timedelta(hours=1)
    usage_rollup(now=now)
    assert meter_events_prepare(now=now) == 3
    stripe_fake.answer("POST", "/v1/billing/meter_events", stripe_error(500))
    result = meter_events_send(now=now)
    assert (result.sent, result.retry_later, result.failed) == (0, 3, 0)
    assert len(stripe_fake.requests) == settings.STRIPE_MAX_RETRIES + 1  # one event's tries
    assert sum(stripe_fake.waits) <= 8.0
    events = list(MeterEvent.objects.order_by("hour"))
    assert all(e.status == MeterEventStatus.PENDING and e.claimed_at is None for e in events)
    assert [e.attempts for e in events] == [1, 0, 0]
    assert any("3 meter events wait" in r.getMessage() for r in caplog.records)
    # Stripe is back: the next runs send everything, each event once.
    stripe_fake.answer("POST", "/v1/billing/meter_events", _meter_event_answer(stripe_fake))
    stripe_fake._answers[("POST", "/v1/billing/meter_events")].popleft()
    later = now + timedelta(minutes=15)
    assert meter_events_send(now=later).sent == 3
    sent = stripe_fake.calls("POST", "/v1/billing/meter_events")[settings.STRIPE_MAX_RETRIES + 1 :]
    assert len({c.params["identifier"] for c in sent}) == len(sent) == 3


def test_a_rejected_event_is_marked_failed_without_retries(stripe_fake, meters, org):
    subscribe(org, since=T0)
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=1))])
    usage_rollup(now=NOW)
    meter_events_prepare(now=NOW)
    stripe_fake.answer("POST", "/v1/billing/meter_events", stripe_error(400))
    assert meter_events_send(now=NOW).failed == 1
    event = MeterEvent.objects.get()
    assert event.status == MeterEventStatus.FAILED and "InvalidRequestError 400" in event.last_error
    assert len(stripe_fake.requests) == 1
    # Staff see it; a failed event is not re-queued as a difference either.
    assert meter_events_prepare(now=NOW) == 0


def test_reconciliation_compares_stripe_summaries_with_the_ledger(stripe_fake, meters, org):
    subscribe(org, since=T0)
    usage_record_batch([usage(org.pk, T0 + timedelta(minutes=1))])
    usage_rollup(now=NOW)
    meter_events_prepare(now=NOW)
    stripe_fake.answer("POST", "/v1/billing/meter_events", _meter_event_answer(stripe_fake))
    meter_events_send(now=NOW)
    path = "/v1/billing/meters/mtr_tokens/event_summaries"
    summary = stripe_fake.obj("billing.meter_event_summary", aggregated_value=1250)
    stripe_fake.answer("GET", path, {"object": "list", "data": [summary], "has_more": False})
    stripe_fake.answer(
        "GET",
        "/v1/billing/meters/mtr_uptime/event_summaries",
        {"object": "list", "data": [], "has_more": False},
    )
    results = {r.meter_key: r for r in meter_reconcile(day=T0.date())}
    assert results["tokens"].matches and results["tokens"].stripe_value == 1250
    assert results["uptime"].matches and results["uptime"].ledger_micros == 0
    [call] = stripe_fake.calls("GET", path)
    day = datetime(2026, 3, 10, tzinfo=UTC)
    assert call.params == {
        "customer": "cus_acme",
        "start_time": str(int(day.timestamp())),
        "end_time": str(int((day + timedelta(days=1)).timestamp())),
        "value_grouping_window": "day",
    }
    # Stripe counting less than we sent shows up as a difference for staff.
    summary["aggregated_value"] = 1000
    stripe_fake.answer("GET", path, {"object": "list", "data": [summary], "has_more": False})
    stripe_fake._answers[("GET", path)].popleft()
    row = {r.meter_key: r for r in meter_reconcile(day=T0.date())}["tokens"]
    assert not row.matches and "Stripe 1000" in row.detail


def test_a_customer_stripe_cannot_answer_for_does_not_stop_the_other_orgs_reconciliation(
    stripe_fake, meters, org, caplog
):
    beta = OrgFactory(name="Beta", slug="beta")
    subscribe(org, since=T0, customer="cus_missing")
    subscribe(beta, since=T0, customer="cus_beta")
    usage_record_batch([usage(beta.pk, T0 + timedelta(minutes=1))])
    usage_rollup(now=NOW)
    meter_events_prepare(now=NOW)
    stripe_fake.answer("POST", "/v1/billing/meter_events", _meter_event_answer(stripe_fake))
    meter_events_send(now=NOW)
    summary = stripe_fake.obj("billing.meter_event_summary", aggregated_value=1250)
    stripe_fake.answer(
        "GET",
        "/v1/billing/meters/mtr_tokens/event_summaries",
        stripe_error(400),  # acme's customer, deleted in Stripe's dashboard
        {"object": "list", "data": [summary], "has_more": False},
    )
    stripe_fake.answer(
        "GET",
        "/v1/billing/meters/mtr_uptime/event_summaries",
        {"object": "list", "data": [], "has_more": False},
    )
    rows = {(r.org.slug, r.meter_key): r for r in meter_reconcile(day=T0.date())}
    assert sorted(rows) == [
        ("acme", "tokens"),
        ("acme", "uptime"),
        ("beta", "tokens"),
        ("beta", "uptime"),
    ]
    assert rows[("beta", "tokens")].matches and rows[("beta", "tokens")].stripe_value == 1250
    unread = rows[("acme", "tokens")]
    assert not unread.matches and unread.stripe_value is None
    assert "Stripe's summary could not be read: InvalidRequestError" in unread.detail
    [logged] = [r for r in caplog.records if "could not be read" in r.getMessage()]
    assert logged.levelname == "ERROR"
    assert (logged.org, logged.meter, logged.customer) == ("acme", "tokens", "cus_missing")


def test_stripe_setup_command_refuses_in_local_ledger_mode(settings):
    from django.core.management import CommandError, call_command

    settings.STRIPE_API_KEY = ""
    with pytest.raises(CommandError, match="local-ledger"):
        call_command("stripe_setup")


def test_closing_an_org_lets_the_subscription_end_with_its_period(stripe_fake, meters, org, owner):
    subscribe(org, since=T0)
    usage_record_batch([usage(org.pk, T0 + timedelta(hours=1, minutes=5))])
    stripe_fake.answer(
        "POST",
        "/v1/subscriptions/sub_acme",
        stripe_fake.obj("subscription", id="sub_acme", status="active", cancel_at_period_end=True),
    )
    closed = org_close(org=org, actor=owner, confirm=org.slug)
    assert closed.subscription_ending
    [call] = stripe_fake.requests
    assert (call.method, call.path) == ("POST", "/v1/subscriptions/sub_acme")
    assert call.params == {"cancel_at_period_end": "true"}
    assert call.idempotency_key == "subscription-end-sub_acme"
    # Still billed in arrears: the usage before the close is reported as usual afterwards, for
    # the period's invoice.
    usage_rollup(now=NOW)
    assert meter_events_prepare(now=NOW) == 1
    assert MeterEvent.objects.get().value == UsageRecord.objects.get().cost_micros


def test_stripe_refusing_to_end_the_subscription_closes_nothing(
    stripe_fake, meters, org, owner, settings
):
    settings.STRIPE_MAX_RETRIES = 1
    subscribe(org, since=T0)
    stripe_fake.answer("POST", "/v1/subscriptions/sub_acme", stripe_error(500))
    with pytest.raises(ValidationError, match="nothing was closed"):
        org_close(org=org, actor=owner, confirm=org.slug)
    org.refresh_from_db()
    assert org.closed_at is None and org.memberships.count() == 1
    assert len(stripe_fake.calls("POST", "/v1/subscriptions/sub_acme")) == 2


def test_closing_an_org_without_a_subscription_asks_stripe_nothing(stripe_fake, meters, org, owner):
    assert not org_close(org=org, actor=owner, confirm=org.slug).subscription_ending
    assert stripe_fake.requests == []
