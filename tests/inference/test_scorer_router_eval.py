"""`manage.py router_eval`: scores outcome files with the shipped scorer and prints the metrics."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

ROWS = [
    ("What is 2 + 2?", True, True),
    ("Name the capital of Italy.", True, True),
    ("Prove that there are infinitely many primes of the form 4k + 3.", False, True),
    ("Compute the integral of x^2 e^x dx from 0 to 3, exactly.", False, True),
    ("What colour is the sky on a clear day?", True, True),
    ("Which planet is known as the red planet?", True, False),
    ("Find all integer solutions of x^2 - 7y^2 = 1 with y < 50.", False, False),
    ("Spell 'necessary'.", True, True),
    (
        "A bag has 3 red and 5 blue balls; two are drawn without replacement. P(both red)?",
        False,
        True,
    ),
    ("Who wrote Hamlet?", True, True),
    ("How many sides does a hexagon have?", True, True),
    ("Summarise the causes of the First World War in one sentence.", True, True),
]


def write_csv(path: Path, rows: list[tuple[str, bool, bool]]) -> Path:
    lines = ["prompt,weak,strong"] + [f'"{p}",{w},{s}' for p, w, s in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prints_the_curve_and_metrics_for_each_file_and_pooled(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "first.csv", ROWS)
    second = write_csv(tmp_path / "second.csv", ROWS[::-1])
    out = StringIO()
    call_command("router_eval", "--data", str(first), "--data", str(second), stdout=out)
    text = out.getvalue()
    assert "first.csv: 12 prompts; weak model 66.7% correct, strong model 83.3%" in text
    assert "second.csv: 12 prompts" in text
    assert "all 2 files pooled: 24 prompts" in text
    for label in ("APGR", "CPT(50%)", "CPT(80%)", "random (10 seeds)", "oracle"):
        assert label in text
    # Eleven thresholds per table, three tables.
    assert text.count("      p0  ") == 3 and text.count("    p100  ") == 3


def test_a_bad_file_fails_with_its_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,weak,strong\nQ1,True,True\nQ2,True,perhaps\n")
    with pytest.raises(CommandError, match=r"bad\.csv: row 3: column 'strong' must be True or"):
        call_command("router_eval", data=[bad], stdout=StringIO())


def test_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="No such file"):
        call_command("router_eval", data=[tmp_path / "nope.csv"], stdout=StringIO())


def test_a_missing_or_bad_weights_file_fails_clearly(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "o.csv", ROWS)
    with pytest.raises(CommandError, match=r"nope\.json: No such file"):
        call_command("router_eval", data=[data], weights=tmp_path / "nope.json", stdout=StringIO())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CommandError, match=r"bad\.json: not a head weights file"):
        call_command("router_eval", data=[data], weights=bad, stdout=StringIO())


def test_a_file_where_the_strong_model_is_no_better_says_why_there_is_no_figure(
    tmp_path: Path,
) -> None:
    same = write_csv(tmp_path / "same.csv", [(p, True, True) for p, _, _ in ROWS])
    out = StringIO()
    call_command("router_eval", data=[same], stdout=out)
    text = out.getvalue()
    assert "nan" not in text
    assert "APGR" in text and "n/a: the strong model answers no more of these prompts" in text
