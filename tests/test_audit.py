"""The audit workbook: sheets, columns, real dates, text that stays text, owner-only file."""

from __future__ import annotations

import stat
from datetime import datetime, timezone
from pathlib import Path

from openpyxl import load_workbook

from onboard.audit import (
    FAILED_COLUMNS,
    ISSUED_COLUMNS,
    SKIPPED_COLUMNS,
    FileSummary,
    RunSummary,
    write_audit,
)
from onboard.outcomes import Failed, Issued, Origin, PassRequest, Reason, Skipped

START = datetime(2027, 1, 4, 8, tzinfo=timezone.utc)
END = datetime(2027, 1, 4, 16, tzinfo=timezone.utc)


def sample(tmp_path: Path) -> Path:
    request = PassRequest(Origin("hires.xlsx", 2), "=cmd|'/c calc'!A1@contoso.com",
                          "@SUM(A1)", START, 480, True, "a note")
    issued = Issued(request, "+drkzqAD", "m-1", START, END, 480, True, START, 2, "req-1",
                    "a note")
    equals = Issued(PassRequest(Origin("hires.xlsx", 3), "bo@contoso.com", None, START, 60,
                                False), "=Ab12-x", "m-2", START, END, 60, False, None, 1, None)
    failed = Failed(Origin("hires.xlsx", 4), "x@contoso.com", Reason.USER_NOT_FOUND,
                    "-no such user", 404, "Request_ResourceNotFound", 1, "req-2")
    skipped = Skipped(Origin("hires.xlsx", 5), "bo@contoso.com", Reason.REPEATED, "same as row 3")
    summary = RunSummary("run-1", START, END, "0.1.0",
                         [FileSummary("hires.xlsx", "ab" * 32, 4, "Sheet1")],
                         [("pass.timezone", "UTC")])
    return write_audit(tmp_path / "out" / "audit.xlsx", summary, [equals, issued], [failed],
                       [skipped])


def test_sheets_and_header_rows(tmp_path: Path) -> None:
    """Summary, Issued, Failed and Skipped, in order, each with its header in row 1."""
    book = load_workbook(sample(tmp_path))
    assert book.sheetnames == ["Summary", "Issued", "Failed", "Skipped"]
    assert [c.value for c in book["Issued"][1]] == list(ISSUED_COLUMNS)
    assert [c.value for c in book["Failed"][1]] == list(FAILED_COLUMNS)
    assert [c.value for c in book["Skipped"][1]] == list(SKIPPED_COLUMNS)
    for name in book.sheetnames:
        assert book[name]["A1"].font.bold
        assert book[name].freeze_panes == "A2"
    assert book["Issued"].auto_filter.ref == "A1:O3"


def test_rows_hold_exact_values_and_real_dates(tmp_path: Path) -> None:
    """Rows are sorted by file and row; passes are exact; dates are Excel datetimes in UTC."""
    book = load_workbook(sample(tmp_path))
    rows = [[c.value for c in row] for row in book["Issued"].iter_rows(min_row=2)]
    assert rows == [
        ["hires.xlsx", 2, "=cmd|'/c calc'!A1@contoso.com", "@SUM(A1)", "+drkzqAD",
         datetime(2027, 1, 4, 8), datetime(2027, 1, 4, 16), 480, "yes", "a note", None, "m-1",
         datetime(2027, 1, 4, 8), 2, "req-1"],
        ["hires.xlsx", 3, "bo@contoso.com", None, "=Ab12-x", datetime(2027, 1, 4, 8),
         datetime(2027, 1, 4, 16), 60, "no", None, None, "m-2", None, 1, None],
    ]
    failed = [[c.value for c in row] for row in book["Failed"].iter_rows(min_row=2)]
    assert failed == [["hires.xlsx", 4, "x@contoso.com", Reason.USER_NOT_FOUND, "-no such user",
                       404, "Request_ResourceNotFound", 1, "req-2", None, None]]


def test_text_from_input_is_never_a_formula(tmp_path: Path) -> None:
    """Cells starting with = + - @ are stored as text (type 's'), not formulas."""
    book = load_workbook(sample(tmp_path))
    issued = book["Issued"]
    for ref in ("C2", "D2", "E2", "E3"):
        assert issued[ref].data_type == "s", ref
        assert issued[ref].quotePrefix, ref
    assert book["Failed"]["E2"].data_type == "s"


def test_summary_names_files_counts_and_settings(tmp_path: Path) -> None:
    """The Summary sheet holds the run id, counts, each file's SHA-256 and the settings."""
    book = load_workbook(sample(tmp_path))
    items = {row[0].value: (row[1].value, row[2].value)
             for row in book["Summary"].iter_rows(min_row=2)}
    assert items["Run ID"][0] == "run-1"
    assert (items["Issued"][0], items["Failed"][0], items["Skipped"][0]) == (2, 1, 1)
    assert items["Input file"] == ("hires.xlsx", f"SHA-256 {'ab' * 32}; 4 rows, sheet 'Sheet1'")
    assert items["pass.timezone"][0] == "UTC"
    assert items["Started (UTC)"][0] == datetime(2027, 1, 4, 8)


def test_file_is_owner_only_and_written_whole(tmp_path: Path) -> None:
    """The workbook is mode 0600 in an owner-only folder, with no temporary file left behind."""
    path = sample(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["audit.xlsx"]


def test_control_characters_are_escaped_not_fatal(tmp_path: Path) -> None:
    """A control character from the sheet is shown escaped; the workbook is still written."""
    failed = Failed(Origin("a.csv", 2), "bob@contoso.com", Reason.INVALID, "Name 'Bob\x01' x")
    summary = RunSummary("r", START, END, "0", [], [])
    path = write_audit(tmp_path / "a.xlsx", summary, [], [failed], [])
    assert load_workbook(path)["Failed"]["E2"].value == "Name 'Bob\\x01' x"
