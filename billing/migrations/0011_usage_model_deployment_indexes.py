# A served model's and a deployment's requests, newest first (the request log's filters; a
# deployment's page links to its requests), are found through indexes instead of by walking
# every request of the organisation until enough match: a model or deployment with little
# traffic in a busy organisation took seconds.
#
# On PostgreSQL the indexes are built with CREATE INDEX CONCURRENTLY, so the gateways keep
# writing usage while they are built.

from django.db import migrations, models

from billing.migration_operations import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('billing', '0010_rollup_hour_index'),
        ('console', '0011_user_email_change_to'),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name='usagerecord',
            index=models.Index(fields=['org', 'model', 'served_at'], name='usage_org_model_served'),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name='usagerecord',
            index=models.Index(fields=['deployment_id', 'served_at'], name='usage_deployment_served'),
        ),
    ]
