from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing.services.meters import stripe_setup
from billing.stripe_client import stripe_enabled


class Command(BaseCommand):
    help = "Create the Billing Meters and their metered prices in Stripe (once; safe to repeat)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not stripe_enabled():
            raise CommandError("STRIPE_API_KEY is not set (local-ledger mode needs no setup).")
        for meter in stripe_setup():
            self.stdout.write(
                f"{meter.key}: meter {meter.stripe_meter_id}, price {meter.stripe_price_id}"
            )
