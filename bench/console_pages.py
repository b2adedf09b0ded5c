"""Console and admin pages over a busy organisation: how long each takes, and its slowest query.

Seeds one organisation with ``--records`` usage records spread over 30 days (5 keys, 4 routes,
3 models, 1% errors), rolls them up, then requests each page three times with Django's test
client, signed in as the organisation's owner (or as staff for the admin) and prints the median
time, the number of queries and the slowest. Use a scratch database: DATABASE_URL is required and
the script refuses one that already has organisations. To compare two versions of the code, run
it on each against the same seeded database with ``--reuse``.

    createdb -h 127.0.0.1 -U postgres console_pages
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/console_pages \\
        .venv/bin/python bench/console_pages.py --records 1000000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_env import django_start  # noqa: E402  (bench/ is this script's own folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--reuse", action="store_true", help="time the pages of an earlier seed")
    args = parser.parse_args()
    django_start()
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from billing.ledger import UsageEvent, usage_record_batch
    from billing.rollups import usage_rollup_range
    from console.models import ApiKey, Membership, Organisation, Role, User
    from console.services.keys import api_key_create

    if args.reuse:
        org = Organisation.objects.get(slug="busy")
        owner = User.objects.get(email="busy-owner@example.com")
        staff = User.objects.get(email="busy-staff@example.com")
    else:
        if Organisation.objects.exists():
            sys.exit("The database has organisations already: use a scratch database.")
        org = Organisation.objects.create(name="Busy", slug="busy")
        owner = User.objects.create_user(email="busy-owner@example.com", password=None)
        Membership.objects.create(org=org, user=owner, role=Role.OWNER)
        staff = User.objects.create_superuser(email="busy-staff@example.com", password=None)
        keys = [
            api_key_create(org=org, actor=None, name=f"key-{i}", scopes=["inference"]).key.pk
            for i in range(5)
        ]
        chance = random.Random(1)
        now = timezone.now()
        start = now - timedelta(days=30)
        models = ["tiny-llama", "big-model", "embedder"]
        deployments = [uuid.uuid4() for _ in models]
        t = time.perf_counter()
        batch: list[UsageEvent] = []
        for _ in range(args.records):
            failed = chance.random() < 0.01
            m = chance.randrange(3)
            batch.append(
                UsageEvent(
                    request_id="req-" + uuid.UUID(int=chance.getrandbits(128)).hex,
                    org_id=org.pk,
                    model=models[m],
                    served_at=start + timedelta(seconds=chance.random() * 30 * 86400),
                    prompt_tokens=chance.randint(10, 2000),
                    completion_tokens=0 if failed else chance.randint(1, 500),
                    status_code=chance.choice([500, 503, 429, 400]) if failed else 200,
                    latency_ms=chance.randint(20, 4000),
                    ttft_ms=chance.randint(5, 500),
                    api_key_id=chance.choice(keys),
                    route=chance.choice(["chat", "cheap", "auto-route", "embed"]),
                    target=f"deployment:{models[m]}",
                    deployment_id=deployments[m],
                    error_code="upstream_error" if failed else "",
                )
            )
            if len(batch) == 5_000:
                usage_record_batch(batch)
                batch = []
        if batch:
            usage_record_batch(batch)
        print(f"seeded {args.records} records in {time.perf_counter() - t:.0f} s")
        usage_rollup_range(start=start - timedelta(hours=1), end=now + timedelta(hours=1))
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")  # as autovacuum would have by now

    settings.ALLOWED_HOSTS = ["*"]
    as_owner, as_staff = Client(), Client()
    as_owner.force_login(owner)
    as_staff.force_login(staff)
    key = ApiKey.objects.filter(org=org).first()
    assert key is not None
    today = date.today()
    pages = [
        (as_owner, "/o/busy/"),
        (as_owner, "/o/busy/usage/"),
        (as_owner, f"/o/busy/usage/?start={today - timedelta(days=30)}&end={today}"),
        (as_owner, "/o/busy/requests/"),
        (as_owner, f"/o/busy/requests/?key={key.pk}"),
        (as_owner, "/o/busy/requests/?status=error"),
        (as_owner, "/o/busy/requests/?route=embed"),
        (as_owner, "/o/busy/billing/"),
        (as_owner, "/api/orgs/busy/usage/"),
        (as_staff, "/admin/"),
        (as_staff, "/admin/billing/usagerecord/"),
        (as_staff, "/admin/billing/usagerecord/?q=busy"),
        (as_staff, "/admin/billing/usagerecord/?outcome=5xx"),
        (as_staff, "/admin/billing/usagerollup/"),
    ]
    request_id = org.usage_records.values_list("request_id", flat=True).first()
    pages.append((as_staff, f"/admin/billing/usagerecord/?q={request_id}"))
    print(f"database: {connection.vendor}; {org.usage_records.count()} usage records")
    for client, url in pages:
        times = []
        for _ in range(3):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url, HTTP_HOST="127.0.0.1")
                times.append(time.perf_counter() - started)
        slowest = max((float(q["time"]) for q in queries.captured_queries), default=0.0)
        print(
            f"{response.status_code} {statistics.median(times) * 1000:7.0f} ms "
            f"{len(queries.captured_queries):3} queries (slowest {slowest * 1000:4.0f} ms)  {url}"
        )


if __name__ == "__main__":
    main()
