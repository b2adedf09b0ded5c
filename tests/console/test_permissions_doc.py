from __future__ import annotations

from pathlib import Path

from console.permissions import MATRIX, SCOPE_MATRIX, Action, Role

DOC = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"


def test_written_matrix_matches_the_code():
    rows = {}
    allows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = [cell == "yes" for cell in cells[2:]]
            allows[cells[0].strip("`")] = cells[1]
    assert set(rows) == {a.value for a in Action}
    for action in Action:
        expected = [action in MATRIX[role] for role in Role]
        expected += [action in SCOPE_MATRIX["manage"], action in SCOPE_MATRIX["read"]]
        assert rows[action.value] == expected, action
        # What an action allows is said alike too (the API's schema quotes the code's words).
        assert allows[action.value] == action.label, action
