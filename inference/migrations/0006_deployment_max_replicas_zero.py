from django.db import migrations
from django.utils import timezone


def pause_deployments_allowed_no_replicas(apps, schema_editor):
    """max_replicas 0 is no longer accepted. Such a deployment ran nothing and never would: it
    is paused, with max_replicas 1, so that resuming it scales between zero and one replica."""
    Deployment = apps.get_model("inference", "Deployment")
    Deployment.objects.filter(max_replicas=0, deleted_at__isnull=True).update(
        paused=True, max_replicas=1, desired_replicas=0, updated_at=timezone.now()
    )


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0005_refusal_counts"),
    ]

    operations = [
        migrations.RunPython(pause_deployments_allowed_no_replicas, migrations.RunPython.noop),
    ]
