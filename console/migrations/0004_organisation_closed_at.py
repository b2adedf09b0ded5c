from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("console", "0003_user_email_verified_at")]

    operations = [
        migrations.AddField(
            model_name="organisation",
            name="closed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
