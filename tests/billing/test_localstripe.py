"""Round trips against localstripe, a stateful fake Stripe server, on 127.0.0.1.

Covered here: our customer creation, saving a payment method from a confirmed SetupIntent as the
customer's default, and real webhook delivery (signed by the server) of subscription events into
our endpoint. localstripe has no Prices, Billing Meters, meter events or summaries, Checkout or
Customer Portal, and it emits no ``invoice.paid``/``invoice.finalized``; those are covered by the
contract tests (test_stripe_contract.py) and signed-webhook tests (test_webhooks.py). It also
ignores idempotency keys, so deduplication is asserted on our side only.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from billing import tasks as billing_tasks
from billing.models import BillingAccount, Plan, StripeEvent
from billing.services.accounts import account_for, customer_ensure
from billing.services.webhooks import stripe_event_process
from billing.stripe_client import stripe_client
from tests.billing.conftest import WEBHOOK_SECRET

localstripe_server = pytest.importorskip("localstripe.server")
from aiohttp import web  # noqa: E402  (installed with localstripe)
from localstripe.resources import store  # noqa: E402
from localstripe.webhooks import _webhooks as registered_webhooks  # noqa: E402

# Transactional: the live server's thread must see what the test commits. The rows the data
# migrations create (plans, the fallback price), which a transactional test's flush removes, are
# put back by the fixture below rather than by a serialized rollback, which fails when another
# transactional test ran just before (its flush re-creates content types that the rollback then
# inserts again).
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _migration_rows(transactional_db: None) -> None:
    from tests.gateway.conftest import migration_rows

    migration_rows()


class Handled:
    """Signals, per event type, that our endpoint has handled a delivered event. The test waits
    on these instead of polling the database, which the live server's thread shares with it on
    SQLite."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: dict[str, threading.Event] = {}
        original = billing_tasks.stripe_event_process

        def process(*, event_pk: int) -> bool:
            done = original(event_pk=event_pk)
            kind = StripeEvent.objects.get(pk=event_pk).type
            self.of(kind).set()
            return done

        monkeypatch.setattr(billing_tasks, "stripe_event_process", process)

    def of(self, kind: str) -> threading.Event:
        return self.events.setdefault(kind, threading.Event())

    def wait(self, kind: str, timeout: float = 20.0) -> None:
        if not self.of(kind).wait(timeout):
            raise AssertionError(f"{kind} was not delivered in {timeout} s")


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """localstripe on a free port of 127.0.0.1, in its own thread, once per test session (its
    aiohttp app is a module global bound to one event loop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(localstripe_server.app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        store.clear()


@pytest.fixture
def localstripe(localstripe_url, settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A clean localstripe (no objects, no webhooks), with our settings pointing at it."""
    store.clear()
    registered_webhooks.clear()
    settings.STRIPE_API_KEY = "sk_test_localstripe"
    settings.STRIPE_API_BASE = localstripe_url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    yield localstripe_url
    registered_webhooks.clear()


def test_customer_and_default_payment_method_round_trip(localstripe, org, owner):
    account = account_for(org=org)
    customer_id = customer_ensure(account=account)
    assert customer_ensure(account=account) == customer_id
    client = stripe_client()
    customer = client.v1.customers.retrieve(customer_id)
    assert customer.name == "Acme" and customer.email == owner.email
    assert customer.metadata["org_id"] == str(org.public_id)

    # What the browser does in Checkout: a card, confirmed on a SetupIntent for the customer.
    method = client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    intent = client.v1.setup_intents.create({"customer": customer_id})
    client.v1.setup_intents.confirm(intent.id, {"payment_method": method.id})
    # Then Stripe tells us the session completed; localstripe has no Checkout, so this event
    # is stored as our endpoint would store it, and handled by the real handler.
    event = StripeEvent.objects.create(
        event_id="evt_checkout_local",
        type="checkout.session.completed",
        stripe_created=datetime.now(UTC),
        payload={
            "id": "evt_checkout_local",
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "id": "cs_local",
                    "mode": "setup",
                    "customer": customer_id,
                    "setup_intent": intent.id,
                    "metadata": {},
                }
            },
        },
    )
    assert stripe_event_process(event_pk=event.pk)
    account.refresh_from_db()
    assert account.payment_method_id == method.id
    assert account.payment_method_label == "visa •••• 4242"
    customer = client.v1.customers.retrieve(customer_id)
    assert customer.invoice_settings.default_payment_method == method.id


def test_subscription_webhooks_are_delivered_signed_and_handled(
    localstripe, live_server, org, monkeypatch
):
    account = account_for(org=org)
    BillingAccount.objects.filter(pk=account.pk).update(plan=Plan.objects.get(code="payg"))
    customer_id = customer_ensure(account=account)
    handled = Handled(monkeypatch)
    httpx.post(
        f"{localstripe}/_config/webhooks/console",
        data={
            "url": f"{live_server.url}/billing/stripe/webhook/",
            "secret": WEBHOOK_SECRET,
            "events[0]": "customer.subscription.created",
            "events[1]": "customer.subscription.deleted",
        },
    ).raise_for_status()
    client = stripe_client()
    method = client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    client.v1.payment_methods.attach(method.id, {"customer": customer_id})
    client.v1.customers.update(
        customer_id, {"invoice_settings": {"default_payment_method": method.id}}
    )
    # localstripe only knows legacy plans, so the test subscribes with one directly; what
    # matters here is the real, signed delivery of the subscription events to our endpoint.
    plan = httpx.post(
        f"{localstripe}/v1/plans",
        auth=("sk_test_localstripe", ""),
        data={
            "id": "tokens-legacy",
            "amount": "0",
            "currency": "usd",
            "interval": "month",
            "product[name]": "Inference",
        },
    )
    plan.raise_for_status()
    subscription = httpx.post(
        f"{localstripe}/v1/subscriptions",
        auth=("sk_test_localstripe", ""),
        data={"customer": customer_id, "items[0][plan]": "tokens-legacy"},
    ).json()
    handled.wait("customer.subscription.created")
    account.refresh_from_db()
    assert account.stripe_subscription_id == subscription["id"]
    assert account.subscription_status == "active" and account.billable_from is not None

    client.v1.subscriptions.cancel(subscription["id"])
    handled.wait("customer.subscription.deleted")
    account.refresh_from_db()
    assert account.subscription_status == "canceled" and account.billable_until is not None
