"""The two plans and the platform's fallback price, so that nothing is ever served unpriced.

Staff change all of these in the admin (a price change is a new version, not an edit)."""

from datetime import UTC, datetime

from django.db import migrations


def create(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    Price = apps.get_model("billing", "Price")
    Plan.objects.get_or_create(
        code="free",
        defaults={
            "name": "Free",
            "kind": "free",
            "monthly_credit_micros": 5_000_000,
            "requires_payment_method": False,
            "is_default": True,
            "description": "A monthly credit of $5.00; then requests are refused until next month.",
        },
    )
    Plan.objects.get_or_create(
        code="payg",
        defaults={
            "name": "Pay as you go",
            "kind": "payg",
            "monthly_credit_micros": 0,
            "requires_payment_method": True,
            "is_default": False,
            "description": "Billed monthly for what you use; needs a payment method.",
        },
    )
    if not Price.objects.filter(org=None, model="", deployment_id=None).exists():
        Price.objects.create(
            model="",
            unit="tokens",
            input_micros_per_million=500_000,
            output_micros_per_million=1_500_000,
            effective_from=datetime(2020, 1, 1, tzinfo=UTC),
            note="Platform fallback for models without a price of their own",
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
