"""Usage series benchmark: the console's usage page and the usage API read a month of an
organisation's hourly rollups. Summed by the database (``usage_series``) against the baseline of
reading every rollup row and adding them up in Python, as those pages once did.

Runs on a throwaway SQLite file by default, or on DATABASE_URL if set (use a scratch database:
the script creates its own org and rollups). Both arms run in the same process, interleaved
round by round; the script checks they agree and prints the median time of each and the ratio.

    .venv/bin/python bench/usage_series.py [--days 30] [--keys 5] [--routes 4] [--models 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_env import django_start  # noqa: E402  (bench/ is this script's own folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--routes", type=int, default=4)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory()
    django_start(default_database=f"sqlite:///{scratch.name}/bench.sqlite3")
    from django.db import connection

    from billing.models import UsageRollup
    from billing.rollups import COUNTED_FIELDS, LATENCY_BUCKETS_MS
    from billing.selectors import UsageFilters, UsageRow, usage_series
    from console.models import ApiKey, Organisation

    org = Organisation.objects.create(name="Bench", slug=f"bench-{uuid.uuid4().hex[:8]}")
    keys = [
        ApiKey.objects.create(
            org=org, name=f"key-{i}", prefix=f"sk-{i:07d}", digest=uuid.uuid4().hex * 2
        ).pk
        for i in range(args.keys)
    ]
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    chance = random.Random(1)
    buckets = len(LATENCY_BUCKETS_MS) + 1
    rows = []
    hour = start
    while hour < end:
        for model in range(args.models):
            for route in range(args.routes):
                for key in keys:
                    histogram = [chance.randint(0, 9) for _ in range(buckets)]
                    rows.append(
                        UsageRollup(
                            id=uuid.uuid4(),
                            org=org,
                            hour=hour,
                            source="tokens",
                            model=f"model-{model}",
                            route=f"route-{route}",
                            api_key_id=key,
                            requests=sum(histogram),
                            errors=chance.randint(0, 2),
                            prompt_tokens=chance.randint(0, 10**6),
                            completion_tokens=chance.randint(0, 10**5),
                            cost_micros=chance.randint(0, 10**7),
                            baseline_cost_micros=chance.randint(0, 10**7),
                            latency_histogram=histogram,
                        )
                    )
        hour += timedelta(hours=1)
    UsageRollup.objects.bulk_create(rows, batch_size=2_000)
    filters = UsageFilters(start=start.date(), end=end.date())
    group_by = ["day", "model"]  # the usage page's first table

    def one_by_one() -> list[UsageRow]:
        """The baseline: every rollup row as a model instance, added up in Python."""
        groups: dict[tuple, UsageRow] = defaultdict(UsageRow)
        begin = datetime.combine(filters.start, datetime.min.time(), tzinfo=UTC)
        stop = datetime.combine(filters.end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        for rollup in UsageRollup.objects.filter(
            org=org, hour__gte=begin, hour__lt=stop
        ).iterator():
            day = rollup.hour.astimezone(UTC).date()
            row = groups[(day, rollup.model)]
            row.day, row.model = day, rollup.model
            for name in COUNTED_FIELDS:
                setattr(row, name, getattr(row, name) + getattr(rollup, name))
            for index, count in enumerate(rollup.latency_histogram):
                row.histogram[index] += count
        return sorted(groups.values(), key=lambda row: (str(row.day), row.model or ""))

    summed_times, baseline_times = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        summed = usage_series(org=org, filters=filters, group_by=group_by)
        summed_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        baseline = one_by_one()
        baseline_times.append(time.perf_counter() - t)
        assert [vars(r) for r in summed] == [vars(r) for r in baseline], "the arms disagree"

    summed_ms = statistics.median(summed_times) * 1000
    baseline_ms = statistics.median(baseline_times) * 1000
    vendor = connection.vendor
    print(
        f"database: {vendor}; {len(rows)} hourly rollups ({args.days} days, {args.models} models, "
        f"{args.routes} routes, {args.keys} keys) summed by day and model into {len(summed)} rows"
    )
    print(f"summed by the database: {summed_ms:8.1f} ms (median of {args.rounds})")
    print(f"one by one in Python:   {baseline_ms:8.1f} ms (baseline)")
    print(f"ratio: {baseline_ms / summed_ms:.1f}x faster")
    UsageRollup.objects.filter(org=org).delete()
    ApiKey.objects.filter(org=org).delete()
    org.delete()


if __name__ == "__main__":
    main()
