"""``manage.py usage_replay``: the events a meter spilled when the database was unreachable are
written through billing's door, idempotently, and the file is set aside."""

from __future__ import annotations

import shutil
import uuid
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone

from billing.ledger import UsageEvent, usage_record_batch
from billing.models import UsageRecord
from console.services.keys import api_key_create
from inference.gateway.metering import Meter


def event(org, key_id: uuid.UUID, n: int, **changes) -> UsageEvent:  # type: ignore[no-untyped-def]
    fields = {
        "request_id": f"req-replay-{n}",
        "org_id": org.pk,
        "model": "tiny",
        "served_at": timezone.now(),
        "prompt_tokens": 10 + n,
        "completion_tokens": 5,
        "cached_tokens": 2,
        "status_code": 200,
        "latency_ms": 40,
        "ttft_ms": 12,
        "api_key_id": key_id,
        "route": "chat",
        "target": "deployment:tiny",
        "deployment_id": uuid.uuid4(),
        "replica_id": uuid.uuid4(),
        "router_score": 0.25,
        "router_choice": "deployment:tiny",
        **changes,
    }
    return UsageEvent(**fields)


@pytest.fixture
def spilled(tmp_path: Path, org, owner) -> tuple[Path, list[UsageEvent]]:  # type: ignore[no-untyped-def]
    """A spill file written by a Meter whose database is unreachable at shutdown: four events
    (one of them already in the ledger), one the ledger refuses, and a line cut short."""
    key_id = api_key_create(org=org, actor=owner, name="k", scopes=["inference"]).key.id
    events = [event(org, key_id, n) for n in range(4)]
    invalid = event(org, key_id, 9, cached_tokens=50)  # more cached tokens than prompt tokens
    usage_record_batch(events[:1])

    def unreachable(batch: object) -> int:
        raise OperationalError("could not connect to server: Connection refused")

    meter = Meter(write=unreachable, spill_dir=tmp_path, close_connections=False)
    for item in [*events, invalid]:
        meter.record(item)
    meter.close(attempts=1)
    [path] = tmp_path.glob("unwritten-usage-*.jsonl")
    with path.open("a") as handle:
        handle.write('{"request_id": "req-replay-torn", "org_')  # the process died mid-line
    return path, events


def replay(directory: Path, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("usage_replay", "--dir", str(directory), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_replay_writes_the_spilled_events_and_sets_the_file_aside(spilled):
    path, events = spilled
    out, err = replay(path.parent)

    assert "6 event(s): 3 written, 1 already present, 2 refused" in out
    assert f"renamed to {path.name}.replayed" in out
    refused = path.with_name(path.name.removesuffix(".jsonl") + ".refused.jsonl")
    assert f"refused lines kept in {refused.name}" in out
    assert f"{path}:5: refused: usage event 'req-replay-9': cached_tokens exceeds" in err
    assert f"{path}:6: refused: not JSON" in err

    for original in events:
        record = UsageRecord.objects.get(request_id=original.request_id)
        assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (
            original.prompt_tokens,
            original.completion_tokens,
            original.cached_tokens,
        )
        assert record.served_at == original.served_at
        assert record.api_key_id == original.api_key_id
        assert record.deployment_id == original.deployment_id
        assert record.router_score == original.router_score
        assert record.ttft_ms == original.ttft_ms
    assert not UsageRecord.objects.filter(request_id="req-replay-9").exists()
    assert not path.exists()
    assert path.with_name(path.name + ".replayed").exists()
    kept = refused.read_text().splitlines()
    assert len(kept) == 2
    assert '"request_id": "req-replay-9"' in kept[0]
    assert kept[1] == '{"request_id": "req-replay-torn", "org_'


def test_dry_run_changes_nothing_and_replaying_again_writes_nothing_twice(spilled):
    path, _ = spilled
    out, _ = replay(path.parent, "--dry-run")
    assert "3 would be written, 1 already present, 2 refused" in out
    assert "dry run: nothing was changed" in out
    assert UsageRecord.objects.count() == 1
    assert path.exists() and len(list(path.parent.iterdir())) == 1

    replay(path.parent)
    assert UsageRecord.objects.count() == 4
    # The same file again (say, restored from a backup): nothing is written twice.
    shutil.copy(path.with_name(path.name + ".replayed"), path)
    out, _ = replay(path.parent)
    assert "0 written, 4 already present, 2 refused" in out
    assert UsageRecord.objects.count() == 4
    assert path.with_name(path.name + ".replayed.2").exists()


def test_nothing_to_replay_says_so(tmp_path: Path, db):  # type: ignore[no-untyped-def]
    (tmp_path / "unwritten-usage-1.refused.jsonl").write_text("{}\n")
    out, _ = replay(tmp_path)
    assert "No spill files" in out


def test_a_folder_that_does_not_exist_is_an_error_not_nothing_to_replay(tmp_path: Path, db):  # type: ignore[no-untyped-def]
    missing = tmp_path / "mistyped" / "run"
    with pytest.raises(CommandError, match=f"{missing} is not a folder"):
        replay(missing)
