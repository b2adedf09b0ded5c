"""A paying tenant's scale: seed one large organisation and 500 small ones, then time every page.

``seed`` fills an empty scratch database: organisation ``bigco`` with 2,000 API keys (a tenth
revoked), 200 members, 100 deployments (1 to 3 replicas each), 50 external endpoints, 300 routes
(single, weighted, fallback, conditional and auto), ``--records`` usage records over 90 days
written through the ledger's door (traffic skewed towards a few keys and routes, as real traffic
is), three days of hourly uptime for ten dedicated deployments, 100,000 audit events, 5 webhook
endpoints with 10,000 deliveries, 20,000 refusal counts and 30 pending invitations; then 500
small organisations (an owner, 2 keys, a route, 20 records and 20 audit events each). It runs
the rollup task as the platform would and ANALYZEs the tables.

``measure`` requests every console page an owner can reach, every REST list endpoint and the
admin's changelists for the big models (as staff), with Django's test client, and prints per URL
the status, median time of ``--rounds`` requests, number of SQL queries, the slowest query and
the response size. ``--only`` keeps the URLs containing a text (or ending with it: ``text$``).

    createdb -h 127.0.0.1 -U postgres large_tenant
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/large_tenant \\
        .venv/bin/python bench/large_tenant.py seed --records 1000000
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/large_tenant \\
        .venv/bin/python bench/large_tenant.py measure
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import random
import statistics
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_env import django_start  # noqa: E402  (bench/ is this script's own folder)

SLUG = "bigco"
OWNER = "bigco-owner@example.com"
STAFF = "bigco-staff@example.com"


def _zipf_picker(chance: random.Random, n: int, s: float = 1.1) -> Any:
    """A function that picks an index in [0, n) with probability falling as 1 / (rank ** s)."""
    weights = [1 / (rank**s) for rank in range(1, n + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    return lambda: min(bisect.bisect_left(cumulative, chance.random() * total), n - 1)


def seed(records: int) -> None:
    from django.contrib.auth.hashers import make_password
    from django.db import connection
    from django.utils import timezone

    from billing.ledger import UptimeEvent, UsageEvent, uptime_record_batch, usage_record_batch
    from billing.rollups import usage_rollup
    from console.models import (
        ApiKey,
        AuditEvent,
        DeliveryStatus,
        Invitation,
        Membership,
        Organisation,
        Role,
        User,
        WebhookDelivery,
        WebhookEndpoint,
    )
    from console.services.webhooks import _SECRETS
    from inference.models import (
        Deployment,
        DeploymentState,
        ExternalEndpoint,
        Replica,
        ReplicaState,
        Route,
        Runner,
    )
    from inference.models.refusals import RefusalCount
    from inference.routing.secrets import secret_encrypt

    if Organisation.objects.exists():
        sys.exit("The database has organisations already: use a scratch database.")
    chance = random.Random(7)
    unusable = make_password(None)
    now = timezone.now()
    start = now - timedelta(days=90)
    t0 = time.perf_counter()

    def ago() -> Any:
        return start + timedelta(seconds=chance.random() * 90 * 86400)

    org = Organisation.objects.create(name="BigCo", slug=SLUG, created_at=start)
    owner = User.objects.create_user(email=OWNER, password=None, email_verified_at=start)
    User.objects.create_superuser(email=STAFF, password=None, email_verified_at=start)
    Membership.objects.create(org=org, user=owner, role=Role.OWNER, created_at=start)
    roles = [Role.ADMIN] * 10 + [Role.DEVELOPER] * 120 + [Role.VIEWER] * 69
    people = User.objects.bulk_create(
        User(email=f"person{i}@bigco.example", email_verified_at=start, password=unusable)
        for i in range(len(roles))
    )
    Membership.objects.bulk_create(
        Membership(org=org, user=u, role=r, created_at=ago())
        for u, r in zip(people, roles, strict=True)
    )
    members = [owner, *people]
    Invitation.objects.bulk_create(
        Invitation(
            org=org,
            email=f"invitee{i}@bigco.example",
            role=Role.DEVELOPER,
            token_digest=hashlib.sha256(f"bigco-invite-{i}".encode()).hexdigest(),
            invited_by=owner,
            expires_at=now + timedelta(hours=48),
        )
        for i in range(30)
    )

    def key(o: Organisation, i: int, creator: User) -> ApiKey:
        secret = f"sk-{o.slug}-{i}-{uuid.uuid4().hex}"
        revoked = chance.random() < 0.1
        return ApiKey(
            org=o,
            name=f"key {i}",
            prefix=secret[:10],
            digest=hashlib.sha256(secret.encode()).hexdigest(),
            scopes=["inference"] if i % 10 else ["inference", "read"],
            allowed_models=[] if i % 7 else ["route-000", "route-001"],
            rpm_limit=None if i % 5 else 600,
            monthly_budget_micros=None if i % 11 else 50_000_000,
            created_by=creator,
            created_at=ago(),
            revoked_at=ago() if revoked else None,
            last_used_at=None if revoked else now - timedelta(minutes=chance.randrange(10_000)),
        )

    keys = ApiKey.objects.bulk_create(key(org, i, chance.choice(members)) for i in range(2_000))
    live_keys = [k for k in keys if k.revoked_at is None]

    deployments = []
    for i in range(100):
        pooling = i % 10 == 9
        deployments.append(
            Deployment(
                org=org,
                name=f"dep-{i:03}",
                served_model_name=f"model-{i:03}",
                source="huggingface",
                model=f"bigco/model-{i:03}",
                runner=Runner.POOLING if pooling else Runner.GENERATE,
                min_replicas=1,
                max_replicas=3,
                desired_replicas=1 + i % 3,
                state=DeploymentState.READY if i % 13 else DeploymentState.IDLE,
                created_by=owner,
                created_at=ago(),
            )
        )
    deployments = Deployment.objects.bulk_create(deployments)
    replicas = []
    for d in deployments:
        for r in range(d.desired_replicas):
            replicas.append(
                Replica(
                    deployment=d,
                    host="10.0.0.1",
                    port=18000 + len(replicas),
                    pid=1000 + len(replicas),
                    state=ReplicaState.READY,
                    started_at=now - timedelta(hours=3),
                    ready_at=now - timedelta(hours=2),
                    metrics={"running": r, "waiting": 0, "kv_cache": 0.1},
                )
            )
        for _ in range(3):  # earlier replicas, stopped
            replicas.append(
                Replica(
                    deployment=d,
                    state=ReplicaState.STOPPED,
                    started_at=ago(),
                    stopped_at=now - timedelta(hours=4),
                )
            )
    Replica.objects.bulk_create(replicas)
    externals = ExternalEndpoint.objects.bulk_create(
        ExternalEndpoint(
            org=org,
            name=f"ext-{i:02}",
            base_url=f"https://api{i}.example.com/v1",
            model=f"vendor-model-{i}",
            api_key_encrypted=secret_encrypt(f"vendor-secret-{i}"),
            api_key_hint="…abcd",
            created_by=owner,
        )
        for i in range(50)
    )
    generate = [d for d in deployments if d.runner == Runner.GENERATE]
    routes: list[Route] = []
    route_models: list[list[str]] = []
    for i in range(300):
        kind = i % 6
        a, b, c = chance.sample(generate, 3)
        ext = chance.choice(externals)
        if kind == 0:
            policy, config = "single", {"target": f"deployment:{a.name}"}
            served = [a.served_model_name]
        elif kind == 1:
            policy = "weighted"
            config = {
                "targets": [
                    {"target": f"deployment:{a.name}", "weight": 90},
                    {"target": f"deployment:{b.name}", "weight": 10},
                ]
            }
            served = [a.served_model_name, b.served_model_name]
        elif kind == 2:
            policy = "fallback"
            config = {"targets": [f"deployment:{a.name}", f"external:{ext.name}"]}
            served = [a.served_model_name, ext.model]
        elif kind == 3:
            policy = "conditional"
            config = {
                "rules": [
                    {"when": {"prompt_tokens_max": 500}, "target": f"deployment:{a.name}"},
                    {"when": {"has_tools": True}, "target": f"deployment:{b.name}"},
                ],
                "default": f"deployment:{c.name}",
            }
            served = [a.served_model_name, b.served_model_name, c.served_model_name]
        elif kind == 4:
            policy = "auto"
            config = {
                "targets": [f"deployment:{a.name}", f"deployment:{b.name}"],
                "thresholds": [0.6],
            }
            served = [a.served_model_name, b.served_model_name]
        else:
            policy, config = "single", {"target": f"external:{ext.name}"}
            served = [ext.model]
        routes.append(
            Route(
                org=org,
                name=f"route-{i:03}",
                description=f"Route {i}",
                policy=policy,
                config=config,
                created_by=owner,
                created_at=ago(),
            )
        )
        route_models.append(served)
    routes = Route.objects.bulk_create(routes)
    print(f"tenant objects in {time.perf_counter() - t0:.0f} s", flush=True)

    # Usage: routes and keys picked with a skew, as a few of each carry most traffic.
    pick_route = _zipf_picker(chance, len(routes))
    by_served = {d.served_model_name: d for d in deployments}
    pick_key = _zipf_picker(chance, len(live_keys))
    t = time.perf_counter()
    batch: list[UsageEvent] = []
    errors = [(500, "upstream_error"), (503, "no_replica"), (429, "rate_limited")]
    for n in range(records):
        r = pick_route()
        failed = chance.random() < 0.01
        status, code = chance.choice(errors) if failed else (200, "")
        model = chance.choice(route_models[r])
        dep = by_served.get(model)
        batch.append(
            UsageEvent(
                request_id=f"req-{n:08}-{chance.getrandbits(64):016x}",
                org_id=org.pk,
                model=model,
                served_at=ago(),
                prompt_tokens=chance.randint(10, 4000),
                completion_tokens=0 if failed else chance.randint(1, 800),
                status_code=status,
                latency_ms=chance.randint(20, 6000),
                ttft_ms=chance.randint(5, 500),
                api_key_id=live_keys[pick_key()].pk,
                route=routes[r].name,
                target=f"deployment:{dep.name}" if dep else f"external:{model}",
                deployment_id=dep.pk if dep else None,
                error_code=code,
            )
        )
        if len(batch) == 5_000:
            usage_record_batch(batch)
            batch = []
            if (n + 1) % 100_000 == 0:
                print(f"  {n + 1} records, {time.perf_counter() - t:.0f} s", flush=True)
    if batch:
        usage_record_batch(batch)
    uptime = []
    for d in deployments[:10]:
        replica = d.replicas.filter(state=ReplicaState.READY).first()
        assert replica is not None
        for h in range(72):
            began = now - timedelta(hours=72 - h)
            uptime.append(
                UptimeEvent(
                    event_id=f"up-{replica.pk}-{h}",
                    org_id=org.pk,
                    deployment_id=d.pk,
                    replica_id=replica.pk,
                    model=d.served_model_name,
                    gpus=1,
                    started_at=began,
                    ended_at=began + timedelta(hours=1),
                )
            )
    uptime_record_batch(uptime)
    print(f"usage records in {time.perf_counter() - t:.0f} s", flush=True)

    actions = [
        "key.created", "key.updated", "key.revoked", "key.rolled", "route.created",
        "route.updated", "deployment.updated", "deployment.scaled", "member.invited",
        "member.joined", "member.role_changed", "endpoint.updated", "webhook.created",
    ]  # fmt: skip
    t = time.perf_counter()
    for chunk in range(20):
        AuditEvent.objects.bulk_create(
            AuditEvent(
                org=org,
                actor=chance.choice(members) if n % 4 else None,
                actor_key=chance.choice(keys) if n % 4 == 0 else None,
                action=chance.choice(actions),
                target_type="apikey",
                target_id=str(uuid.uuid4()),
                target_repr=f"key {n}",
                data={"name": f"key {n}"},
                ip_address="203.0.113.7",
                created_at=ago(),
            )
            for n in range(chunk * 5_000, (chunk + 1) * 5_000)
        )
    endpoints = WebhookEndpoint.objects.bulk_create(
        WebhookEndpoint(
            org=org,
            url=f"https://hooks{i}.bigco.example/in",
            events=[] if i else ["key."],
            secret_encrypted=_SECRETS.seal(f"whsec-{i}"),
            created_by=owner,
        )
        for i in range(5)
    )
    for chunk in range(5):
        WebhookDelivery.objects.bulk_create(
            WebhookDelivery(
                endpoint=chance.choice(endpoints),
                event_type=chance.choice(actions),
                payload={"action": "key.created", "target": {"id": str(uuid.uuid4())}},
                status=DeliveryStatus.DELIVERED if n % 20 else DeliveryStatus.FAILED,
                attempts=1 if n % 20 else 8,
                response_status=200 if n % 20 else 500,
                created_at=ago(),
                finished_at=now,
            )
            for n in range(chunk * 2_000, (chunk + 1) * 2_000)
        )
    seen: set[tuple[Any, ...]] = set()
    refusals = []
    while len(refusals) < 20_000:
        minute = ago().replace(second=0, microsecond=0)
        k = live_keys[pick_key()]
        status, code = chance.choice([(429, "rate_limited"), (402, "budget_exceeded")])
        if (k.pk, minute, status) in seen:
            continue
        seen.add((k.pk, minute, status))
        refusals.append(
            RefusalCount(
                org=org,
                api_key=k,
                minute=minute,
                status_code=status,
                error_code=code,
                count=chance.randint(1, 50),
            )
        )
    RefusalCount.objects.bulk_create(refusals, batch_size=5_000)
    print(f"audit, webhooks and refusals in {time.perf_counter() - t:.0f} s", flush=True)

    t = time.perf_counter()
    smalls = Organisation.objects.bulk_create(
        Organisation(name=f"Small {i}", slug=f"small-{i}", created_at=ago()) for i in range(500)
    )
    small_owners = User.objects.bulk_create(
        User(email=f"owner@small-{i}.example", email_verified_at=start, password=unusable)
        for i in range(500)
    )
    Membership.objects.bulk_create(
        Membership(org=o, user=u, role=Role.OWNER)
        for o, u in zip(smalls, small_owners, strict=True)
    )
    small_keys = ApiKey.objects.bulk_create(
        key(o, i, u) for o, u in zip(smalls, small_owners, strict=True) for i in range(2)
    )
    Route.objects.bulk_create(
        Route(org=o, name="chat", policy="single", config={"target": "external:vendor"})
        for o in smalls
    )
    ExternalEndpoint.objects.bulk_create(
        ExternalEndpoint(org=o, name="vendor", base_url="https://api.example.com/v1", model="m")
        for o in smalls
    )
    usage_record_batch(
        [
            UsageEvent(
                request_id=f"small-{o.pk}-{n}",
                org_id=o.pk,
                model="m",
                served_at=ago(),
                prompt_tokens=100,
                completion_tokens=50,
                latency_ms=300,
                api_key_id=small_keys[2 * i].pk,
                route="chat",
                target="external:vendor",
            )
            for i, o in enumerate(smalls)
            for n in range(20)
        ]
    )
    AuditEvent.objects.bulk_create(
        (
            AuditEvent(org=o, actor=u, action="key.created", target_repr="key", created_at=ago())
            for o, u in zip(smalls, small_owners, strict=True)
            for _ in range(20)
        ),
        batch_size=5_000,
    )
    print(f"small organisations in {time.perf_counter() - t:.0f} s", flush=True)

    t = time.perf_counter()
    run = usage_rollup()
    print(f"rollup of {run.org_hours} org-hours in {time.perf_counter() - t:.0f} s", flush=True)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # as autovacuum would have by now
    print(f"seeded in {time.perf_counter() - t0:.0f} s")


def urls() -> list[tuple[str, str]]:
    """(who, URL) for every page measured: "owner" or "staff"."""
    from django.db.models import Count, Sum

    from billing.models import UsageRecord, UsageRollup
    from console.models import ApiKey, AuditEvent, Organisation
    from inference.models import Deployment, Route

    org = Organisation.objects.get(slug=SLUG)
    key = ApiKey.objects.filter(org=org, revoked_at__isnull=True).order_by("name").first()
    route = Route.objects.filter(org=org, name="route-004").first()  # an auto route
    route_busy = Route.objects.filter(org=org, name="route-000").first()
    deployment = Deployment.objects.filter(org=org).order_by("name").first()
    assert key and route and route_busy and deployment

    def rarest(column: str) -> Any:
        """The value of a rollup column with the least traffic: filters that match little."""
        used = UsageRollup.objects.filter(org=org).exclude(**{column: ""})
        return used.values_list(column).annotate(n=Sum("requests")).order_by("n")[0][0]

    rare_route, rare_model = rarest("route"), rarest("model")
    served = UsageRecord.objects.filter(org=org).exclude(deployment_id=None)
    rare_deployment = (
        served.values_list("deployment_id").annotate(n=Count("id")).order_by("n")[0][0]
    )
    today = date.today()
    o, a = f"/o/{SLUG}/", f"/api/orgs/{SLUG}/"
    owner = [
        o,
        o + "usage/",
        *(o + f"usage/?group={split}" for split in ("model", "route", "key")),
        o + f"usage/?start={today - timedelta(days=89)}&end={today}",
        o + f"usage/?start={today - timedelta(days=89)}&end={today}&group=key",
        o + f"usage/?key={key.pk}",
        o + "usage/?route=route-000",
        o + "usage/?model=model-001",
        o + "requests/",
        o + f"requests/?key={key.pk}",
        o + "requests/?status=error",
        o + "requests/?route=route-000",
        o + f"requests/?route={rare_route}",
        o + f"requests/?deployment={rare_deployment}",
        o + "routes/",
        o + f"routes/{route.pk}/",
        o + f"routes/{route_busy.pk}/",
        o + "deployments/",
        o + f"deployments/{deployment.pk}/",
        o + "deployments/new/",
        o + "keys/",
        o + "keys/?page=20",
        o + f"keys/{key.pk}/edit/",
        o + "members/",
        o + "audit/",
        o + "audit/?page=100",
        o + "webhooks/",
        o + "billing/",
        o + "settings/",
        "/account/",
        # REST
        "/api/orgs/",
        a,
        a + "keys/",
        a + "members/",
        a + "invitations/",
        a + "audit/",
        a + "webhooks/",
        a + "webhooks/deliveries/",
        a + "deployments/",
        a + f"deployments/{deployment.pk}/",
        a + "routes/",
        a + f"routes/{route.pk}/savings/",
        a + f"routes/{route.pk}/requests/",
        a + "endpoints/",
        a + "requests/",
        a + f"requests/?key={key.pk}",
        a + f"requests/?route={rare_route}",
        a + f"requests/?model={rare_model}",
        a + "refusals/",
        a + "usage/",
        a + "usage/?group_by=key",
        a + f"usage/?group_by=day,key&start={today - timedelta(days=89)}&end={today}",
        a + "spend/",
    ]
    request_id = UsageRecord.objects.filter(org=org).values_list("request_id", flat=True)[:1][0]
    event = AuditEvent.objects.filter(org=org).first()
    assert event is not None
    staff = [
        "/admin/",
        "/admin/billing/usagerecord/",
        f"/admin/billing/usagerecord/?q={request_id}",
        "/admin/billing/usagerecord/?q=bigco",
        "/admin/billing/usagerollup/",
        "/admin/billing/uptimerecord/",
        "/admin/console/auditevent/",
        "/admin/console/auditevent/?q=bigco",
        f"/admin/console/auditevent/{event.pk}/change/",
        "/admin/console/apikey/",
        "/admin/console/apikey/?q=bigco",
        f"/admin/console/apikey/{key.pk}/change/",
        "/admin/console/organisation/",
        f"/admin/console/organisation/{org.pk}/change/",
        "/admin/console/user/",
        "/admin/console/membership/",
        "/admin/console/webhookdelivery/",
        "/admin/inference/deployment/",
        "/admin/inference/replica/",
        "/admin/inference/route/",
        "/admin/inference/refusalcount/",
    ]
    return [("owner", u) for u in owner] + [("staff", u) for u in staff]


def measure(rounds: int, only: list[str]) -> None:
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from console.models import User

    settings.ALLOWED_HOSTS = ["*"]
    clients = {"owner": Client(), "staff": Client()}
    clients["owner"].force_login(User.objects.get(email=OWNER))
    clients["staff"].force_login(User.objects.get(email=STAFF))
    print(f"{'status':>6} {'median':>8} {'queries':>7} {'slowest':>8} {'size':>9}  url")
    for who, url in urls():
        if only and not any(url.endswith(o[:-1]) if o.endswith("$") else o in url for o in only):
            continue
        times = []
        for _ in range(rounds):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = clients[who].get(url, HTTP_HOST="127.0.0.1")
                body = b"".join(response) if response.streaming else response.content
                times.append(time.perf_counter() - started)
        slowest = max((float(q["time"]) for q in queries.captured_queries), default=0.0)
        print(
            f"{response.status_code:>6} {statistics.median(times) * 1000:6.0f} ms "
            f"{len(queries.captured_queries):7} {slowest * 1000:5.0f} ms {len(body) / 1024:7.0f} KB"
            f"  {url}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    seeding = sub.add_parser("seed")
    seeding.add_argument("--records", type=int, default=1_000_000)
    measuring = sub.add_parser("measure")
    measuring.add_argument("--rounds", type=int, default=3)
    measuring.add_argument(
        "--only",
        action="append",
        default=[],
        help="measure the URLs containing this (ending with it, if it ends with $); repeatable",
    )
    args = parser.parse_args()
    django_start()
    if args.command == "seed":
        seed(args.records)
    else:
        measure(args.rounds, args.only)


if __name__ == "__main__":
    main()
