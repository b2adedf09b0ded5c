from django.db import migrations, models
from django.db.models import F


def existing_users_verified(apps, schema_editor):  # type: ignore[no-untyped-def]
    # People who signed up before addresses were confirmed keep their access.
    User = apps.get_model("console", "User")
    User.objects.filter(email_verified_at=None).update(email_verified_at=F("date_joined"))


class Migration(migrations.Migration):
    dependencies = [("console", "0002_org_rate_limits")]

    operations = [
        migrations.AddField(
            model_name="user",
            name="email_verified_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(existing_users_verified, migrations.RunPython.noop),
    ]
