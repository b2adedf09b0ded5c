"""Outcome files: the routing data's CSV format, and errors that name the row."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.scorer.outcomes import (
    OutcomeFileError,
    OutcomeSet,
    outcomes_from_bytes,
    read_outcomes,
)

HEADER = "prompt,weak/model,strong/model\n"


def parse(text: str) -> OutcomeSet:
    return outcomes_from_bytes(text.encode())


def test_reads_prompts_and_both_models_outcomes() -> None:
    result = parse(HEADER + 'What is 2+2?,True,True\n"Multi\nline, quoted",False,True\n')
    assert (result.weak_model, result.strong_model) == ("weak/model", "strong/model")
    assert [(r.prompt, r.weak_correct, r.strong_correct) for r in result.rows] == [
        ("What is 2+2?", True, True),
        ("Multi\nline, quoted", False, True),
    ]
    assert [r.weak_good_enough for r in result.rows] == [True, False]


def test_extra_columns_such_as_answers_are_ignored() -> None:
    text = 'prompt,weak,strong,weak_response,strong_response\nQ,False,False,"a\nb",c\n'
    (row,) = parse(text).rows
    assert (row.weak_correct, row.strong_correct) == (False, False)
    assert row.weak_good_enough  # both wrong: the strong model would not have helped


def test_a_byte_order_mark_and_blank_lines_are_accepted() -> None:
    result = outcomes_from_bytes(("\ufeff" + HEADER + "Q1,true,false\n\nQ2,FALSE,TRUE\n").encode())
    assert [r.prompt for r in result.rows] == ["Q1", "Q2"]


def test_a_bad_value_names_its_row_and_column() -> None:
    with pytest.raises(OutcomeFileError) as err:
        parse(HEADER + "Q1,True,True\nQ2,True,maybe\n")
    assert err.value.row == 3
    assert str(err.value) == "row 3: column 'strong/model' must be True or False, not 'maybe'"


def test_rows_are_counted_as_records_and_lines_are_given_too() -> None:
    with pytest.raises(OutcomeFileError) as err:
        parse(HEADER + '"two\nlines",True,True\nQ,yes please,True\n')
    assert (err.value.row, err.value.line) == (3, 4)
    assert str(err.value).startswith("row 3 (line 4): column 'weak/model'")


def test_a_row_with_too_few_fields_is_refused() -> None:
    with pytest.raises(OutcomeFileError, match=r"^row 2: expected at least 3 fields"):
        parse(HEADER + "only a prompt,True\n")


def test_an_empty_prompt_is_refused() -> None:
    with pytest.raises(OutcomeFileError, match=r"^row 2: the prompt is empty"):
        parse(HEADER + "  ,True,True\n")


@pytest.mark.parametrize(
    "header",
    ["question,weak,strong\n", "prompt,weak\n", "prompt,same,same\n"],
)
def test_a_wrong_header_is_row_1(header: str) -> None:
    with pytest.raises(OutcomeFileError) as err:
        parse(header + "Q,True,True\n")
    assert err.value.row == 1


def test_empty_and_header_only_files_are_refused() -> None:
    with pytest.raises(OutcomeFileError, match="empty"):
        parse("")
    with pytest.raises(OutcomeFileError, match="no rows"):
        parse(HEADER)


def test_a_file_that_is_not_utf8_is_refused_naming_the_row() -> None:
    with pytest.raises(OutcomeFileError, match=r"^row 2: byte 0xe9 is not UTF-8 text"):
        outcomes_from_bytes(HEADER.encode() + b"caf\xe9,True,True\n")
    # A spreadsheet saved as Windows-1252: only the accented row is wrong, far down the file.
    rows = [f"q{i},True,False" for i in range(40)]
    rows[30] = '"caf\xe9\nau lait",True,False'  # after a quoted prompt of two lines
    rows[3] = '"two\nlines",True,False'
    data = (HEADER + "\n".join(rows) + "\n").encode("latin-1")
    with pytest.raises(OutcomeFileError) as err:
        outcomes_from_bytes(data)
    assert (err.value.row, err.value.line) == (32, 33)


def test_a_nul_character_is_refused_naming_the_row() -> None:
    # PostgreSQL cannot store it in the text the file is kept in until it is fitted.
    with pytest.raises(OutcomeFileError, match=r"^row 3: the prompt contains a NUL character"):
        parse(HEADER + "Q,True,True\nA\x00B,True,False\n")


def test_a_long_document_as_a_prompt_is_read() -> None:
    document = "Summarise this contract. " + "lorem ipsum dolor sit amet " * 6000  # 160 KB
    result = parse(HEADER + f'"{document}",True,True\nQ,True,False\n')
    assert [len(r.prompt) for r in result.rows] == [len(document), 1]


def test_a_quote_left_open_is_named() -> None:
    with pytest.raises(OutcomeFileError, match=r"^row 3 .*found 1 \(is a quote left open\?\)"):
        parse(HEADER + 'Q,True,True\n"Unclosed,True,True\nR,True,False\n')


def test_outcome_file_error_is_a_value_error() -> None:
    assert issubclass(OutcomeFileError, ValueError)


def test_every_shared_routing_file_reads(shared_data: Path) -> None:
    paths = sorted((shared_data / "routing").glob("*.csv"))
    assert paths, "the routing data folder has no CSV files"
    total = sum(len(read_outcomes(p).rows) for p in paths)
    # The data README: 1,319 GSM8K questions plus 29 MMLU subjects.
    assert len(read_outcomes(shared_data / "routing" / "gsm8k.csv").rows) == 1319
    assert total > 1319
