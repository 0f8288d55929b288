"""Reading and validating the new-hire spreadsheet."""

from __future__ import annotations

import csv
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook

from onboard.config import InputSettings, PassSettings, load_config
from onboard.errors import InputFileError
from onboard.outcomes import Failed, Origin, PassRequest, Reason, Skipped
from onboard.reader import InputFile, parse_start, plan, read_input

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
SETTINGS = InputSettings()
UTC8 = PassSettings(lifetime_minutes=480, usable_once=True, timezone="UTC")


def input_file(*requests: PassRequest) -> InputFile:
    return InputFile(Path("a.csv"), "0" * 64, None, ("UPN",), len(requests), list(requests))


def write_csv(tmp_path: Path, text: str, name: str = "hires.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_rows_become_requests_with_utc_start(tmp_path: Path) -> None:
    """A clean row becomes a request; the start is the start date at 08:00 in the zone, in UTC."""
    path = write_csv(
        tmp_path,
        "Display Name,Work Email,Start Date,Lifetime,One-time\n"
        "Ada Lovelace,ada@contoso.com,2027-01-04,,\n"
        "Alan Turing,alan@contoso.com,2027-07-05,240,no\n",
    )
    london = PassSettings(timezone="Europe/London")
    result = read_input(path, SETTINGS, london, now=NOW)
    assert result.failed == [] and result.skipped == []
    assert result.requests == [
        PassRequest(Origin("hires.csv", 2), "ada@contoso.com", "Ada Lovelace",
                    datetime(2027, 1, 4, 8, 0, tzinfo=timezone.utc), 480, True,
                    start_date=date(2027, 1, 4),
                    intended_start=datetime(2027, 1, 4, 8, 0, tzinfo=timezone.utc)),
        # British Summer Time: 08:00 local is 07:00 UTC
        PassRequest(Origin("hires.csv", 3), "alan@contoso.com", "Alan Turing",
                    datetime(2027, 7, 5, 7, 0, tzinfo=timezone.utc), 240, False,
                    start_date=date(2027, 7, 5),
                    intended_start=datetime(2027, 7, 5, 7, 0, tzinfo=timezone.utc)),
    ]
    assert result.row_count == 2
    assert len(result.sha256) == 64


def test_each_bad_cell_fails_its_row_naming_the_column(tmp_path: Path) -> None:
    """Bad user, lifetime, flag and date each fail the row with the column and the problem."""
    path = write_csv(
        tmp_path,
        "Work Email,Start Date,Lifetime,One-time\n"
        "not-an-email,2027-01-04,,\n"
        "b@contoso.com,next Monday,,\n"
        "c@contoso.com,2027-01-04,5,\n"
        "d@contoso.com,2027-01-04,60.5,\n"
        "e@contoso.com,2027-01-04,,maybe\n"
        ",2027-01-04,,\n"
        "f@contoso.com,,,\n"
        "g@contoso.com,2027-02-30,99999,perhaps\n",
    )
    result = read_input(path, SETTINGS, UTC8, now=NOW)
    assert result.requests == []
    got = [(f.origin.row, f.user, f.shown, f.column) for f in result.failed]
    assert got == [
        (2, "not-an-email", "Invalid Work Email", "Work Email"),
        (3, "b@contoso.com", "Invalid Start Date", "Start Date"),
        (4, "c@contoso.com", "Invalid Lifetime", "Lifetime"),
        (5, "d@contoso.com", "Invalid Lifetime", "Lifetime"),
        (6, "e@contoso.com", "Invalid One-time", "One-time"),
        (7, "", "Invalid Work Email", "Work Email"),
        (8, "f@contoso.com", "Invalid Start Date", "Start Date"),
        (9, "g@contoso.com", "Invalid row", "Lifetime, One-time, Start Date"),
    ]
    by_row = {f.origin.row: f.detail for f in result.failed}
    assert by_row[3] == (
        "Start Date 'next Monday' is not a date; use an Excel date cell, YYYY-MM-DD (a time may "
        "follow: 2027-01-05 09:30, 2027-01-05T09:30+01:00), YYYYMMDD, 5 Jan 2027, or "
        "day/month/year text with input.date_order set"
    )
    assert by_row[4] == "Lifetime '5' is not a whole number of minutes between 10 and 43200"
    assert "'maybe' is not yes/no" in by_row[6]


def test_start_in_the_past_means_usable_at_once_with_a_note(tmp_path: Path) -> None:
    """A start date already past (within 30 days: a late hire) is sent without a start time,
    and the audit note says so; further back is a typo, and the row fails."""
    path = write_csv(tmp_path, "UPN,Start Date\nold@contoso.com,2026-11-05\n"
                               "older@contoso.com,2026-10-28\n")
    result = read_input(path, SETTINGS, UTC8, now=NOW)
    (request,) = result.requests
    assert request.start is None
    assert request.note == "start 2026-11-05 08:00 UTC is in the past: pass usable at once"
    (failed,) = result.failed
    assert failed.detail == ("Start Date '2026-10-28' is 2026-10-28, more than 30 days ago: "
                             "check the year")


def test_guest_users_fail_before_sending(tmp_path: Path) -> None:
    """An #EXT# guest UPN fails with Microsoft's reason and is never sent."""
    path = write_csv(tmp_path, "UPN\nbob_fabrikam.com#EXT#@contoso.onmicrosoft.com\n")
    result = read_input(path, SETTINGS, UTC8, now=NOW)
    assert result.requests == []
    assert result.failed[0].reason == "External guest user"
    assert "cannot be added to an external guest user" in result.failed[0].detail


def test_xlsx_with_real_dates_serials_and_booleans(tmp_path: Path) -> None:
    """Excel date cells, serial numbers and TRUE/FALSE cells are read as what they mean."""
    book = Workbook()
    sheet = book.active
    sheet.append(["userPrincipalName", "Hire Date", "Usable Once", "Name"])
    sheet.append(["a@contoso.com", datetime(2027, 3, 1), True, "  Ana  "])
    sheet.append(["b@contoso.com", 46388, False, None])  # 46388 = 2027-01-01
    sheet.append([None, None, None, None])
    sheet.append(["c@contoso.com", date(2027, 3, 2), "yes", "Cy"])
    path = tmp_path / "hires.xlsx"
    book.save(path)
    result = read_input(path, SETTINGS, UTC8, now=NOW)
    assert [(r.origin.row, r.user, r.start, r.usable_once, r.display_name)
            for r in result.requests] == [
        (2, "a@contoso.com", datetime(2027, 3, 1, 8, tzinfo=timezone.utc), True, "Ana"),
        (3, "b@contoso.com", datetime(2027, 1, 1, 8, tzinfo=timezone.utc), False, None),
        (5, "c@contoso.com", datetime(2027, 3, 2, 8, tzinfo=timezone.utc), True, "Cy"),
    ]
    assert result.skipped == [Skipped(Origin("hires.xlsx", 4), "", Reason.BLANK_ROW, "blank row")]
    assert result.sheet == "Sheet"


def test_sheet_is_found_by_its_user_column(tmp_path: Path) -> None:
    """With no input.sheet, the first sheet holding a user column is used."""
    book = Workbook()
    book.active.title = "Notes"
    book.active.append(["Read me first"])
    hires = book.create_sheet("Hires")
    hires.append(["Email"])
    hires.append(["a@contoso.com"])
    path = tmp_path / "hires.xlsx"
    book.save(path)
    result = read_input(path, SETTINGS, UTC8, now=NOW)
    assert result.sheet == "Hires"
    assert [r.user for r in result.requests] == ["a@contoso.com"]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.xlsx", "missing.xlsx: file not found"),
        (b"hello", "renamed.xlsx", "is a text file (a CSV?), not an .xlsx workbook"),
        (b"Name,Department\nAda,Eng\n", "hires.csv",
         "no user column in the first 30 rows: expected a header named one of "
         "userPrincipalName, UPN, Work Email, Email; first row with text: 'Name', 'Department'"),
        (b"", "empty.csv", "the file is empty"),
        (b"a,b", "hires.pdf", "unsupported file type '.pdf'"),
        (b"\x00\x01\x02garbage\x00", "binary.csv", "contains binary data"),
    ],
)
def test_unusable_files_stop_with_a_message_naming_the_file(
    tmp_path: Path, content: bytes | None, name: str, message: str
) -> None:
    """A missing, unreadable or wrong file raises InputFileError naming it (and the headers)."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputFileError) as caught:
        read_input(path, SETTINGS, UTC8, now=NOW)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_csv_with_bom_and_semicolons(tmp_path: Path) -> None:
    """Excel's UTF-8-with-BOM and ';' delimited CSV reads like any other."""
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffUPN;Start Date;Name\nzoë@contoso.com;2027-01-04;Zoë\n".encode())
    (request,) = read_input(path, SETTINGS, UTC8, now=NOW).requests
    assert (request.user, request.display_name) == ("zoë@contoso.com", "Zoë")


def test_plan_keeps_one_request_per_user() -> None:
    """Identical repeats are skipped as 'same as row N'; disagreeing repeats all fail."""
    def req(row: int, user: str, lifetime: int = 480) -> PassRequest:
        return PassRequest(Origin("a.csv", row), user, None, None, lifetime, True)

    requests, failed, skipped = plan([input_file(req(2, "a@x.com"), req(3, "A@X.com"),
                                                 req(4, "b@x.com", 60), req(5, "b@x.com", 120),
                                                 req(6, "c@x.com"))])
    assert [r.origin.row for r in requests] == [2, 6]
    assert skipped == [Skipped(Origin("a.csv", 3), "A@X.com", Reason.REPEATED, "same as row 2")]
    assert [(f.origin.row, f.reason) for f in failed] == [
        (4, "Conflicting rows"), (5, "Conflicting rows")]
    assert isinstance(failed[0], Failed) and "a.csv row 4, a.csv row 5" in failed[0].detail


@pytest.mark.parametrize(
    ("value", "order", "expected"),
    [("2027-01-04", None, (date(2027, 1, 4), None)),
     ("2027-01-04 00:00:00", None, (date(2027, 1, 4), None)),
     ("2027-01-04T09:30", None, (date(2027, 1, 4), time(9, 30))),
     (46388, None, (date(2027, 1, 1), None)), (46388.0, None, (date(2027, 1, 1), None)),
     (46388.375, None, (date(2027, 1, 1), time(9, 0))),
     (datetime(2027, 1, 4, 10, 15), None, (date(2027, 1, 4), time(10, 15))),
     (date(2027, 1, 4), None, (date(2027, 1, 4), None)),
     ("25/12/2026", None, (date(2026, 12, 25), None)),
     ("12/25/2026", None, (date(2026, 12, 25), None)),
     ("04/01/2027", "DMY", (date(2027, 1, 4), None)),
     ("04/01/2027", "MDY", (date(2027, 4, 1), None)),
     ("4.1.27", "DMY", (date(2027, 1, 4), None)),
     ("05/05/2027", None, (date(2027, 5, 5), None)),
     ("2027/01/04", "YMD", (date(2027, 1, 4), None)),
     ("1 Dec 2026", None, (date(2026, 12, 1), None)),
     ("01-Dec-2026", None, (date(2026, 12, 1), None)),
     ("December 1, 2026", None, (date(2026, 12, 1), None)),
     ("01/12/2026 13:45", "DMY", (date(2026, 12, 1), time(13, 45))),
     ("27-01-11", "YMD", (date(2027, 1, 11), None)),
     ("2026-12-07", "DMY", (date(2026, 12, 7), None)), ("46363", None, (date(2026, 12, 7), None))],
)
def test_parse_start(value: object, order: str | None, expected: tuple[date, time | None]) -> None:
    """Excel dates, datetimes and serials, ISO text, text in the configured order, month names."""
    assert parse_start(value, order) == expected


@pytest.mark.parametrize(
    ("value", "order", "message"),
    [("04/01/2027", None, "could be 4 January 2027 or 1 April 2027: set input.date_order"),
     ("2027-13-01", None, "not a valid date"), ("12/25/2026", "DMY", "not a valid date in DMY"),
     ("04/01/2027", "YMD", "not written year first"), (12, None, "is a number, not a date"),
     ("", None, "is not a date"), (True, None, "is not a date"), ("soon", None, "is not a date"),
     ("01/12/2026 25:00", "DMY", "not HH:MM")],
)
def test_parse_start_refuses(value: object, order: str | None, message: str) -> None:
    """Ambiguous text without input.date_order, impossible dates, and text in another order."""
    with pytest.raises(ValueError, match=message):
        parse_start(value, order)


def test_sample_sheet_has_the_intended_rows() -> None:
    """The shipped sample reads as 55 rows: one bad date fails in the reader, one repeat skips."""
    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "config.yaml")
    for name in ("new_hires.xlsx", "new_hires.csv"):
        result = read_input(root / "samples" / name, config.input, config.pass_, now=NOW)
        assert result.row_count == 55
        assert [(f.origin.row, f.shown) for f in result.failed] == [(32, "Invalid Start Date")]
        requests, failed, skipped = plan([result])
        assert (len(requests), len(failed)) == (53, 0)
        assert [(s.origin.row, s.detail) for s in skipped] == [(56, "same as row 5")]


def test_control_characters_and_far_starts_fail_the_row(tmp_path: Path) -> None:
    """A UPN with a control character, or a start more than a year ahead, fails its row."""
    path = write_csv(tmp_path, "UPN,Start Date\nbo\x01b@contoso.com,2027-01-04\n"
                     "far@contoso.com,2029-01-04\n")
    result = read_input(path, SETTINGS, UTC8, now=NOW)
    assert result.requests == []
    assert [(f.origin.row, f.column) for f in result.failed] == [(2, "UPN"), (3, "Start Date")]
    assert "more than 366 days ahead; check the year" in result.failed[1].detail


def test_mixing_object_ids_and_upns_fails_the_id_rows() -> None:
    """An object id might be the same person as a UPN row: those rows fail instead of risking two
    passes for one user."""
    guid = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

    by_upn = PassRequest(Origin("a.csv", 2), "ada@contoso.com", None, None, 480, True)
    by_id = PassRequest(Origin("a.csv", 3), guid, None, None, 480, True)
    requests, failed, _ = plan([input_file(by_upn, by_id)])
    assert [r.user for r in requests] == ["ada@contoso.com"]
    assert [(f.origin.row, f.reason) for f in failed] == [(3, "Mixed user identifiers")]
    only_ids, failed, _ = plan([input_file(by_id)])
    assert [r.user for r in only_ids] == [guid] and failed == []


def test_a_huge_csv_cell_is_refused_by_its_size_not_by_csvs_wording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cell over csv's field limit is named as such, however csv words its error (another
    Python's wording here); a quoted one holding a separator, quotes and a line break too."""
    real_reader = csv.reader

    class Reworded:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.rows = real_reader(*args, **kwargs)

        @property
        def line_num(self) -> int:
            return self.rows.line_num

        def __iter__(self) -> Reworded:
            return self

        def __next__(self) -> list[str]:
            try:
                return next(self.rows)
            except csv.Error:
                raise csv.Error("the field is too long") from None

    monkeypatch.setattr(csv, "reader", Reworded)
    huge = "x" * (csv.field_size_limit() + 1)
    for line, cell in ((2, huge), (3, f'"a, ""b""\n{huge}"')):  # csv counts the line it read
        path = write_csv(tmp_path, f"UPN,Name\nada@contoso.com,{cell}\n")
        with pytest.raises(InputFileError) as caught:
            read_input(path, SETTINGS, UTC8, now=NOW)
        assert f"line {line}: a cell of more than 131,072 characters" in str(caught.value)
