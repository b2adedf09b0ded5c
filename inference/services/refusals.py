"""Writing and pruning the per-minute counts of refused requests (``RefusalCount``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from console.models import ApiKey
from inference.models import RefusalCount

KEEP = timedelta(days=90)  # how long the counts are kept
BATCH = 500  # rows per INSERT

# (org id, key id, minute as a Unix timestamp, status, error code) -> count
RefusalKey = tuple[int, uuid.UUID, int, int, str]


def refusals_add(counts: dict[RefusalKey, int]) -> int:
    """Add the gateway's counts to the stored ones (an INSERT that adds on conflict, so several
    gateway processes can count the same key and minute). Counts of keys deleted meanwhile are
    dropped. Returns how many rows were written."""
    if not counts:
        return 0
    key_ids = {key_id for _, key_id, _, _, _ in counts}
    existing = set(ApiKey.objects.filter(id__in=key_ids).values_list("id", flat=True))
    rows = [
        (org_id, key_id, minute, status, code[:64], count)
        for (org_id, key_id, minute, status, code), count in counts.items()
        if key_id in existing and count > 0
    ]
    table = RefusalCount._meta.db_table
    key_field = RefusalCount._meta.get_field("api_key").target_field
    minute_field = RefusalCount._meta.get_field("minute")
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            params: list[Any] = []
            for org_id, key_id, minute, status, code, count in chunk:
                when = datetime.fromtimestamp(minute, UTC)
                params += [
                    org_id,
                    key_field.get_db_prep_value(key_id, connection),
                    minute_field.get_db_prep_value(when, connection),
                    status,
                    code,
                    count,
                ]
            values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
            cursor.execute(
                f"INSERT INTO {table} "  # noqa: S608 - the table name is our own
                "(org_id, api_key_id, minute, status_code, error_code, count) "
                f"VALUES {values} "
                "ON CONFLICT (org_id, api_key_id, minute, status_code, error_code) "
                f"DO UPDATE SET count = {table}.count + excluded.count",
                params,
            )
    return len(rows)


def refusals_prune(*, now: datetime | None = None) -> int:
    """Remove counts older than ``KEEP`` (beat, daily). Returns how many rows were removed."""
    before = (now or timezone.now()) - KEEP
    removed, _ = RefusalCount.objects.filter(minute__lt=before).delete()
    return removed
