"""Ledger benchmark: the ledger's door in batches (as the gateway's flusher calls it) against one
call per request (the baseline), then the hourly rollup and month-to-date spend on the result.

Runs on a throwaway SQLite file by default, or on DATABASE_URL if set (use a scratch database:
the script creates its own org and records). Both arms run in the same process, interleaved,
and the script prints records per second for each and their ratio.

    .venv/bin/python bench/billing_ledger.py [--records 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_env import django_start  # noqa: E402  (bench/ is this script's own folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--single", type=int, default=1_000, help="records for the baseline arm")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory()
    django_start(default_database=f"sqlite:///{scratch.name}/bench.sqlite3")
    from billing.ledger import UsageEvent, usage_record_batch
    from billing.rollups import usage_rollup
    from billing.selectors import month_to_date_spend
    from console.models import Organisation

    org = Organisation.objects.create(name="Bench", slug=f"bench-{uuid.uuid4().hex[:8]}")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)

    def events(n: int) -> list[UsageEvent]:
        return [
            UsageEvent(
                request_id=uuid.uuid4().hex,
                org_id=org.pk,
                model=f"model-{i % 3}",
                route="chat",
                served_at=start + timedelta(seconds=(i * 7) % 21_600),
                prompt_tokens=100 + i % 50,
                completion_tokens=64,
                latency_ms=20 + i % 200,
            )
            for i in range(n)
        ]

    batched_time = single_time = 0.0
    batched_n = single_n = 0
    rounds = 4
    for _ in range(rounds):  # interleave the two arms
        chunk = events(args.records // rounds)
        t = time.perf_counter()
        for i in range(0, len(chunk), args.batch):
            batched_n += usage_record_batch(chunk[i : i + args.batch])
        batched_time += time.perf_counter() - t
        singles = events(args.single // rounds)
        t = time.perf_counter()
        for event in singles:
            single_n += usage_record_batch([event])
        single_time += time.perf_counter() - t
    batched_rate, single_rate = batched_n / batched_time, single_n / single_time
    t = time.perf_counter()
    run = usage_rollup()
    rollup_s = time.perf_counter() - t
    t = time.perf_counter()
    again = usage_rollup()
    t_again = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(20):
        month_to_date_spend()
    mtd_ms = (time.perf_counter() - t) / 20 * 1000
    from django.db import connection

    engine = connection.vendor
    print(f"database: {engine}; records: {batched_n} batched ({args.batch}/call),", end=" ")
    print(f"{single_n} one per call")
    print(f"batched: {batched_rate:,.0f} records/s; one per call: {single_rate:,.0f} records/s")
    print(f"ratio batched/single: {batched_rate / single_rate:.1f}x")
    print(f"rollup of {batched_n + single_n} records ({run.org_hours} org-hours): {rollup_s:.2f}s;")
    print(f"  re-run with nothing new ({again.org_hours} org-hours): {t_again * 1000:.0f} ms")
    print(f"month_to_date_spend (all orgs): {mtd_ms:.1f} ms")


if __name__ == "__main__":
    main()
