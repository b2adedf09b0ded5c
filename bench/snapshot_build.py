"""Gateway snapshot rebuild over a platform with many tenants: wall and CPU time of one rebuild.

Every gateway process rebuilds its snapshot of keys, organisations, routes and deployments in a
thread whenever the control plane changes (and at least every GATEWAY_SNAPSHOT_TTL_S), so its
cost is CPU taken from serving, on every process, after every change. Seeds ``--orgs``
organisations with ``--keys`` keys each (Organisation and ApiKey rows only) unless there are
that many already, then times ``--rounds`` rebuilds that read every key, and as many that keep
the previous snapshot's keys (after a change that cannot concern keys). Use a scratch database;
DATABASE_URL is required. To compare two versions of the code, run each against the same
database.

    createdb -h 127.0.0.1 -U postgres snapshot_build
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/snapshot_build \\
        .venv/bin/python bench/snapshot_build.py --orgs 5000 --keys 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_env import django_start  # noqa: E402  (bench/ is this script's own folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orgs", type=int, default=5_000)
    parser.add_argument("--keys", type=int, default=10, help="keys per organisation")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    django_start()
    from console.models import ApiKey, Organisation
    from inference.gateway.snapshot import snapshot_build

    have = Organisation.objects.filter(slug__startswith="bench-").count()
    if have < args.orgs:
        orgs = Organisation.objects.bulk_create(
            [Organisation(name=f"Bench {i}", slug=f"bench-{i}") for i in range(have, args.orgs)]
        )
        ApiKey.objects.bulk_create(
            [
                ApiKey(
                    org=org,
                    name=f"key {k}",
                    prefix=f"sk-{uuid.uuid4().hex[:7]}",
                    digest=uuid.uuid4().hex * 2,
                    # Most keys share a few lists; some carry their own model list.
                    scopes=["inference"] if k % 4 else ["inference", "read"],
                    allowed_models=[f"model-{org.pk}"] if k % 5 == 0 else [],
                )
                for org in orgs
                for k in range(args.keys)
            ],
            batch_size=5_000,
        )
    previous = snapshot_build(1)  # warm: imports, connection
    for reuse_keys, what in (
        (False, "a rebuild that reads every key"),
        (True, "a rebuild after a change that cannot concern keys (a replica's state)"),
    ):
        walls, cpus = [], []
        for _ in range(args.rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            snapshot = snapshot_build(2, previous, reuse_keys=reuse_keys)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(
            f"{Organisation.objects.count()} organisations, {len(snapshot.keys)} keys: {what} "
            f"takes {statistics.median(walls) * 1000:.0f} ms "
            f"({statistics.median(cpus) * 1000:.0f} ms of CPU), median of {args.rounds}"
        )


if __name__ == "__main__":
    main()
