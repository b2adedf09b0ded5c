from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from billing import stripe_client
from billing.models import BillingAccount, Plan, StripeMeter
from billing.services.meters import METERS
from console.models import Organisation
from tests.billing.stripe_fake import StripeFake, load_fixtures

WEBHOOK_SECRET = "whsec_test_secret"


@pytest.fixture
def stripe_fake(shared_data: Path, settings, monkeypatch) -> Iterator[StripeFake]:  # type: ignore[no-untyped-def]
    """Stripe enabled, with every request going to a recording fake; retries do not wait."""
    settings.STRIPE_API_KEY = "sk_test_contract"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    fake = StripeFake(load_fixtures(shared_data))
    monkeypatch.setattr(stripe_client, "pause", fake.waits.append)
    with stripe_client.http_client_override(fake):
        yield fake


@pytest.fixture
def meters(db) -> list[StripeMeter]:  # type: ignore[no-untyped-def]
    return [
        StripeMeter.objects.create(
            key=spec.key,
            event_name=spec.event_name,
            display_name=spec.display_name,
            stripe_meter_id=f"mtr_{spec.key}",
            stripe_product_id=f"prod_{spec.key}",
            stripe_price_id=f"price_{spec.key}",
        )
        for spec in METERS
    ]


def subscribe(org: Organisation, *, since: datetime, customer: str = "cus_acme") -> BillingAccount:
    """Put ``org`` on Pay as you go with a Stripe customer and a live subscription."""
    account, _ = BillingAccount.objects.update_or_create(
        org=org,
        defaults={
            "plan": Plan.objects.get(code="payg"),
            "stripe_customer_id": customer,
            "stripe_subscription_id": "sub_acme",
            "subscription_status": "active",
            "payment_method_id": "pm_card",
            "payment_method_label": "visa •••• 4242",
            "billable_from": since,
        },
    )
    return account
