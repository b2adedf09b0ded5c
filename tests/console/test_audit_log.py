"""The audit log: filters by action, who and UTC days in the console and the REST API, and the
CSV export."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from django.test import Client
from django.urls import reverse

from console.models import AuditEvent
from console.services.audit import audit_record
from console.services.keys import api_key_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def events(org, owner, member):  # type: ignore[no-untyped-def]
    manager = api_key_create(org=org, actor=owner, name="ops", scopes=["manage", "read"])
    AuditEvent.objects.filter(org=org).delete()
    made = [
        audit_record(org=org, action="key.created", actor=owner, data={"prefix": "sk-a"}),
        audit_record(org=org, action="key.revoked", actor=member),
        audit_record(org=org, action="member.invited", actor_key=manager.key),
        audit_record(org=org, action="deployment.failed", data={"reason": 'bad "model", x'}),
    ]
    days = ["2026-03-01T10:00", "2026-03-02T23:59", "2026-03-03T00:00", "2026-03-05T08:00"]
    for event, day in zip(made, days, strict=True):
        AuditEvent.objects.filter(pk=event.pk).update(
            created_at=datetime.fromisoformat(day).replace(tzinfo=UTC)
        )
    return manager


def _actions(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.action for e in response.context["page"].object_list]


def test_the_console_filters_by_action_who_and_day(org, owner, member, events, client_for):
    client = client_for(owner)
    url = reverse("audit_log", args=[org.slug])
    assert _actions(client.get(url)) == [
        "deployment.failed",
        "member.invited",
        "key.revoked",
        "key.created",
    ]
    assert _actions(client.get(url, {"action": "key."})) == ["key.revoked", "key.created"]
    assert _actions(client.get(url, {"actor": member.email.upper()})) == ["key.revoked"]
    assert _actions(client.get(url, {"actor": events.key.prefix + "…"})) == ["member.invited"]
    assert _actions(client.get(url, {"actor": "system"})) == ["deployment.failed"]
    assert _actions(client.get(url, {"start": "2026-03-02", "end": "2026-03-03"})) == [
        "member.invited",
        "key.revoked",
    ]
    bad = client.get(url, {"start": "2026-03-04", "end": "2026-03-01"})
    assert bad.status_code == 400
    assert bad.context["form"].errors["start"] == ["The start must not be after the end."]


def test_the_csv_export_holds_the_filtered_events(org, owner, events, client_for):
    response = client_for(owner).get(
        reverse("audit_log", args=[org.slug]), {"action": "deployment.", "format": "csv"}
    )
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"].startswith(f'attachment; filename="audit-{org.slug}-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 1
    row = rows[0]
    assert row["action"] == "deployment.failed" and row["actor"] == "system"
    assert json.loads(row["data"]) == {"reason": 'bad "model", x'}
    assert row["created_at"].startswith("2026-03-05T08:00")


def test_members_without_the_audit_permission_cannot_export(org, member, events, client_for):
    url = reverse("audit_log", args=[org.slug])
    assert client_for(member).get(url, {"format": "csv"}).status_code == 403


def test_the_rest_api_filters_too(org, owner, events):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {events.secret}")
    url = f"/api/orgs/{org.slug}/audit/"
    body = client.get(url, {"action": "key.", "start": "2026-03-02"}).json()
    assert [e["action"] for e in body["results"]] == ["key.revoked"]
    refused = client.get(url, {"start": "2026-03-04", "end": "2026-03-01"})
    assert refused.status_code == 400 and "start" in refused.json()["error"]["fields"]
    assert client.get(url, {"start": "yesterday"}).status_code == 400


def test_events_made_in_a_request_carry_the_clients_address(client_for, org, owner):
    console = client_for(owner)
    console.post(
        f"/api/orgs/{org.slug}/keys/",
        {"name": "from-console", "scopes": ["manage"]},
        content_type="application/json",
        REMOTE_ADDR="203.0.113.9",
    )
    made = AuditEvent.objects.get(action="key.created", target_repr__contains="from-console")
    assert made.ip_address == "203.0.113.9"
    secret = api_key_create(org=org, actor=owner, name="ops", scopes=["manage"]).secret
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}", REMOTE_ADDR="::ffff:198.51.100.4")
    key_id = made.target_id
    assert api.post(f"/api/orgs/{org.slug}/keys/{key_id}/revoke/").status_code == 200
    revoked = AuditEvent.objects.get(action="key.revoked")
    assert revoked.ip_address == "198.51.100.4"  # a dual-stack listener's view of IPv4
    listed = api.get(f"/api/orgs/{org.slug}/audit/", {"action": "key.revoked"}).json()
    assert listed["results"][0]["ip_address"] == "198.51.100.4"
    # Outside a request (a task, the platform itself) an event has no address.
    assert (
        AuditEvent.objects.get(action="key.created", target_repr__contains="ops").ip_address is None
    )


def test_rest_pages_neither_repeat_nor_skip_an_event_while_new_ones_are_written(org, owner, events):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {events.secret}")
    # Three more events at one instant: the cursor splits them by id.
    same = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    for n in range(3):
        made = audit_record(org=org, action=f"test.same{n}", actor=owner)
        AuditEvent.objects.filter(pk=made.pk).update(created_at=same)
    expected = list(
        AuditEvent.objects.filter(org=org)
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)
    )
    page = client.get(f"/api/orgs/{org.slug}/audit/?limit=2").json()
    assert set(page) == {"next", "results"}
    seen = [e["id"] for e in page["results"]]
    audit_record(org=org, action="test.meanwhile", actor=owner)  # newer than every page
    while page["next"]:
        assert "limit=2" in page["next"] and "before=" in page["next"]
        page = client.get(page["next"]).json()
        seen += [e["id"] for e in page["results"]]
    assert seen == [str(pk) for pk in expected]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("before=garbage", "before"),
        ("before=1_not-a-uuid", "before"),
        ("before=999999999999999999_0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "before"),
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("offset=50", "offset"),
    ],
)
def test_rest_paging_parameters_that_are_not_ours_are_refused(org, events, query, field):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {events.secret}")
    answer = client.get(f"/api/orgs/{org.slug}/audit/?{query}")
    assert answer.status_code == 400
    assert list(answer.json()["error"]["fields"]) == [field]
