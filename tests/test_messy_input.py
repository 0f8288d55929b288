"""Spreadsheets as HR really makes them (tests/messy.py): every row of every fixture ends as
the outcome written down for it, traced to its file and sheet row."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from messy import FIXTURES, HEADERS, Fixture, _rows, _xlsx, check_outcomes, config_for, outcomes

from onboard.config import InputSettings, load_config
from onboard.errors import InputFileError
from onboard.outcomes import Failed, Skipped
from onboard.reader import check_rows, read_all


def read_files(config, paths, now):  # type: ignore[no-untyped-def]
    """The input files as `onboard run` reads them."""
    return read_all(paths, config.input, config.pass_, now)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_each_messy_file_gives_the_expected_outcome_per_row(
    fixture: Fixture, tmp_path: Path
) -> None:
    """Every row is ready (as the right user, start and name), failed or skipped as written
    down in tests/messy.py, each exactly once."""
    check_outcomes(fixture, outcomes(fixture, tmp_path / "in", NOW))


def test_a_bad_date_names_the_file_row_and_column(tmp_path: Path) -> None:
    """An ambiguous date says which cell, both readings, and the setting that decides."""
    fixture = next(f for f in FIXTURES if f.name == "excel_dates.xlsx")
    paths = fixture.build(tmp_path)
    (read,) = read_files(config_for(fixture), paths, NOW)
    failed = {f.origin.row: f for f in read.failed}
    assert failed[8].column == "Start Date"
    assert failed[8].detail == (
        "Start Date '07/12/2026' could be 7 December 2026 or 12 July 2026: set "
        "input.date_order to DMY or MDY (how the sheet writes dates), or use YYYY-MM-DD"
    )
    assert failed[9].detail.startswith("Start Date 'next Monday' is not a date")


def test_the_header_row_is_reported_where_it_was_found(tmp_path: Path) -> None:
    fixture = next(f for f in FIXTURES if f.name == "title_rows.xlsx")
    (read,) = read_files(config_for(fixture), fixture.build(tmp_path), NOW)
    assert (read.sheet, read.header_row, read.row_count) == ("New hires", 4, 2)


def test_two_sheets_with_the_user_column_are_refused_not_guessed(tmp_path: Path) -> None:
    """Reading only the first would silently drop the other sheet's people."""
    path = tmp_path / "both.xlsx"
    _xlsx(("London", [HEADERS, *_rows(("ada", date(2026, 12, 7), 480))]),
          ("Oslo", [HEADERS, *_rows(("bo", date(2026, 12, 7), 480))]))(path)  # fmt: skip
    with pytest.raises(InputFileError, match="sheets 'London', 'Oslo' each have a user column"):
        read_files(load_config(None), [path], NOW)
    settings = InputSettings(sheet="Oslo")
    (read,) = read_files(load_config(None).model_copy(update={"input": settings}), [path], NOW)
    assert [r.user for r in read.requests] == ["bo@contoso.com"]


def test_a_hidden_sheet_alone_is_named_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "hidden.xlsx"
    data = [HEADERS, *_rows(("ada", date(2026, 12, 7), 480))]
    _xlsx(("Cover", [["Nothing here"]]), ("Data", data), hidden=("Data",))(path)
    with pytest.raises(InputFileError, match=r"hidden sheet 'Data' has one: name it in input"):
        read_files(load_config(None), [path], NOW)


def test_headers_below_the_search_rows_are_not_found(tmp_path: Path) -> None:
    """The header is looked for in the first 30 rows, and the message says so."""
    path = tmp_path / "deep.csv"
    path.write_text("\n" * 30 + "Work Email\nada@contoso.com\n", encoding="utf-8")
    with pytest.raises(InputFileError, match="no user column in the first 30 rows"):
        read_files(load_config(None), [path], NOW)
    path.write_text("\n" * 29 + "Work Email\nada@contoso.com\n", encoding="utf-8")
    (read,) = read_files(load_config(None), [path], NOW)
    assert [(r.origin.row, r.user) for r in read.requests] == [(31, "ada@contoso.com")]


def test_employee_ids_from_excel_numbers_and_mail_need_their_column(tmp_path: Path) -> None:
    """match_by employeeId: a number cell 1001 is the id '1001'; the user column is not needed."""
    path = tmp_path / "ids.xlsx"
    _xlsx(("Sheet1", [["Employee ID", "Start Date"], [1001, date(2026, 12, 7)],
                      ["E-2002", date(2026, 12, 7)], [None, date(2026, 12, 7)]]))(path)  # fmt: skip
    config = load_config(None)
    by_id = config.model_copy(
        update={"input": config.input.model_copy(update={"match_by": "employeeId"})})
    (read,) = read_files(by_id, [path], NOW)
    assert [(r.user, r.sheet_value) for r in read.requests] == [
        ("1001", "1001"),
        ("E-2002", "E-2002"),
    ]
    assert [(f.origin.row, f.shown) for f in read.failed] == [(4, "Invalid Employee ID")]
    by_mail = config.model_copy(
        update={"input": config.input.model_copy(update={"match_by": "mail"})})
    with pytest.raises(InputFileError, match=r"no mail column \(input.match_by: mail\)"):
        read_files(by_mail, [path], NOW)


def test_every_outcome_is_reported_once_across_files(tmp_path: Path) -> None:
    """All fixtures together in one run: one outcome per row, none twice, none missing."""
    paths: list[Path] = []
    expected = 0
    for index, fixture in enumerate(f for f in FIXTURES if not f.settings and not f.passes):
        paths += fixture.build(tmp_path / str(index))
        expected += len(fixture.expected)
    files = read_files(load_config(None), paths, NOW)
    requests, checked = check_rows(files)
    keys = [(r.origin.source, r.origin.row) for r in requests]
    keys += [(o.origin.source, o.origin.row) for o in checked]
    assert len(keys) == len(set(keys)) == expected
    assert all(isinstance(o, (Failed, Skipped)) for o in checked)
