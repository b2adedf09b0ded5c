# A served model's and a deployment's requests, newest first (the request log's filters; a
# deployment's page links to its requests), are found through indexes instead of by walking
# every request of the organisation until enough match: a model or deployment with little
# traffic in a busy organisation took seconds.
#
# On PostgreSQL the indexes are built with CREATE INDEX CONCURRENTLY, so the gateways keep
# writing usage while they are built.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on PostgreSQL; a plain CREATE INDEX elsewhere (SQLite)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == 'postgresql':
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == 'postgresql':
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


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
