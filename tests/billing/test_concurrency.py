"""Races between billing's jobs and Stripe's webhooks that only row locks settle (PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from billing.models import BillingAccount, Invoice, StripeEvent
from billing.services import webhooks as webhooks_service
from billing.services.webhooks import grace_enforce, stripe_event_process
from tests.billing.conftest import subscribe
from tests.factories import OrgFactory
from tests.gateway.conftest import migration_rows

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: SQLite has no row locks, SELECT FOR UPDATE is a no-op there",
    ),
]


def _blocked_or_done(thread: threading.Thread, backend_pid: list[int]) -> None:
    """Wait until ``thread`` has finished or its connection waits for a lock."""
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        if backend_pid:
            with connection.cursor() as cursor:
                cursor.execute("SELECT cardinality(pg_blocking_pids(%s))", [backend_pid[0]])
                if cursor.fetchone()[0]:
                    return
        thread.join(timeout=0.01)


def test_an_invoice_paid_while_the_grace_period_is_enforced_leaves_the_org_running(
    transactional_db, monkeypatch
):
    migration_rows()  # a transactional test's flush removed them
    org = OrgFactory()
    subscribe(org, since=timezone.now() - timedelta(days=40))
    now = timezone.now()
    BillingAccount.objects.filter(org=org).update(payment_failed_at=now, grace_until=now)
    Invoice.objects.create(org=org, stripe_invoice_id="in_1", status="open", payment_failed_at=now)
    paid = StripeEvent.objects.create(
        event_id="evt_paid",
        type="invoice.paid",
        stripe_created=now,
        payload={
            "id": "evt_paid",
            "type": "invoice.paid",
            "data": {"object": {"id": "in_1", "customer": "cus_acme", "status": "paid"}},
        },
    )
    # The payment's webhook is handled, on a connection of its own, right after the job found
    # the invoice unpaid and before it suspends the org.
    backend_pid: list[int] = []

    def pay() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend_pid.append(cursor.fetchone()[0])
            stripe_event_process(event_pk=paid.pk)
        finally:
            connections.close_all()

    payer = threading.Thread(target=pay)
    original = webhooks_service._unpaid_failed

    def check_then_pay(account):  # type: ignore[no-untyped-def]
        unpaid = original(account)
        if payer.ident is None and threading.current_thread() is threading.main_thread():
            payer.start()
            _blocked_or_done(payer, backend_pid)
        return unpaid

    monkeypatch.setattr(webhooks_service, "_unpaid_failed", check_then_pay)
    grace_enforce(now=now + timedelta(seconds=1))
    payer.join(timeout=30)
    assert not payer.is_alive()
    org.refresh_from_db()
    account = BillingAccount.objects.get(org=org)
    assert Invoice.objects.get().status == "paid"
    assert not org.is_suspended
    assert not account.suspended_for_payment and account.grace_until is None
