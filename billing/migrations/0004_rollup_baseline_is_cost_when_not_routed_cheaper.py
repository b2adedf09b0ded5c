"""Restate the rollups' baseline cost: it now counts a request that was not sent to a cheaper
target (and dedicated GPU time) at its own cost, as the savings report always did, instead of
nothing. Every org-hour that has rollups is recomputed from its records."""

from __future__ import annotations

from django.db import migrations


def restate(apps, schema_editor):  # type: ignore[no-untyped-def]
    from billing.rollups import rollup_hours

    rollup = apps.get_model("billing", "UsageRollup")
    pairs = rollup.objects.values_list("org_id", "hour").distinct().order_by()
    rollup_hours(pairs.iterator(chunk_size=2000))


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_usage_error_code")]

    operations = [migrations.RunPython(restate, migrations.RunPython.noop)]
