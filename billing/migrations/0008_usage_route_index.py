# A route's requests, newest first (the request log filtered by the model asked for, a route's
# page, the auto router's calibration), are found through an index on (org, route, served_at)
# instead of by walking every request of the organisation until enough match.
#
# On PostgreSQL the index is built with CREATE INDEX CONCURRENTLY, so the gateways keep writing
# usage while it is built (minutes on a ledger of hundreds of millions of rows).

from django.db import migrations, models

from billing.migration_operations import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('billing', '0007_rollup_spend_index'),
        ('console', '0011_user_email_change_to'),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name='usagerecord',
            index=models.Index(fields=['org', 'route', 'served_at'], name='usage_org_route_served'),
        ),
    ]
