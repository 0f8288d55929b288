"""Files as real spreadsheet programs write them (tests/messy.py, PRODUCERS): Excel's error
cells, Mac Excel's 1904 date system, Excel's CSV in other languages, zero-padded ids, HR
systems' date-times, offices that write dates in different orders. Every row of every file
ends as written down for it, exactly once."""

from __future__ import annotations

import re
import zipfile
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

import pytest
from messy import (
    HEADERS,
    PRODUCERS,
    Fixture,
    _text,
    _xlsx,
    check_outcomes,
    config_for,
    error_cell,
    outcomes,
)

from onboard.cli import EXIT_ROWS_FAILED, main
from onboard.config import PassSettings, load_config
from onboard.errors import ConfigError, InputFileError
from onboard.excel import EPOCH_1904, whole_number_format
from onboard.reader import InputFile, check_rows, parse_start, read_all, read_input


def read_files(config, paths, now):  # type: ignore[no-untyped-def]
    """The input files as `onboard run` reads them."""
    return read_all(paths, config.input, config.pass_, now)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def producer(name: str) -> Fixture:
    return next(f for f in PRODUCERS if f.name == name)


def read(name: str, folder: Path) -> list[InputFile]:
    fixture = producer(name)
    return read_files(config_for(fixture), fixture.build(folder), NOW)


@pytest.mark.parametrize("fixture", PRODUCERS, ids=[f.name for f in PRODUCERS])
def test_each_producers_file_gives_the_expected_outcome_per_row(
    fixture: Fixture, tmp_path: Path
) -> None:
    """Every row is ready (as the right user and start), failed or skipped as written down,
    each exactly once: none vanishes."""
    check_outcomes(fixture, outcomes(fixture, tmp_path / "in", NOW))


def test_every_row_of_the_producers_files_is_reported_once_in_one_run(tmp_path: Path) -> None:
    """The files that need no setting of their own, all in one run: one outcome per row."""
    together = [f for f in PRODUCERS if not f.settings and not f.passes]
    paths = [p for index, f in enumerate(together) for p in f.build(tmp_path / str(index))]
    requests, checked = check_rows(read_files(load_config(None), paths, NOW))
    keys = [(r.origin.source, r.origin.row) for r in requests]
    keys += [(o.origin.source, o.origin.row) for o in checked]
    assert len(keys) == len(set(keys))
    assert set(keys) == {key for f in together for key in f.expected}


def test_an_error_cell_names_the_column_the_error_and_what_it_means(tmp_path: Path) -> None:
    """A lookup that found nothing fails its row naming each cell: never an empty cell, never
    a blank row."""
    (file,) = read("lookup_errors.xlsx", tmp_path)
    failed = {f.origin.row: f for f in file.failed}
    assert (failed[3].user, failed[3].column, failed[3].detail) == (
        "",
        "Work Email, Start Date",
        "Work Email is #N/A: the formula behind it found nothing (a lookup with no match); "
        "Start Date is #N/A: the formula behind it found nothing (a lookup with no match)",
    )
    assert file.row_count == 4 and file.skipped == []


def test_each_error_value_says_what_it_means(tmp_path: Path) -> None:
    """#VALUE!, #DIV/0!, #REF!... each in plain words; errors python-calamine does not know
    (#SPILL!, #CALC!, #GETTING_DATA) too, and the workbook is still read."""
    (file,) = read("every_error.xlsx", tmp_path)
    detail = {f.origin.row: f.detail for f in file.failed}
    assert detail[2] == (
        "Start Date is #VALUE!: the formula behind it was given the wrong kind of value"
    )
    assert detail[3].startswith("Lifetime is #DIV/0!: the formula behind it divides by zero")
    assert detail[4].startswith("Work Email is #REF!: the formula behind it points at cells")
    assert detail[5].startswith("Name is #NAME?: ")
    assert detail[8] == "Start Date is #SPILL!: the formula's results have no room to spill into"
    assert detail[9].startswith("Start Date is #CALC!: ")
    assert detail[10].startswith("Start Date is #GETTING_DATA: the workbook was saved while")


def test_an_error_in_a_column_onboard_does_not_read_is_carried_as_shown(tmp_path: Path) -> None:
    """A Department lookup that failed does not stop the hire: the audit shows #N/A."""
    (file,) = read("every_error.xlsx", tmp_path)
    (jo,) = file.requests
    assert jo.extra == (("Department", "#N/A"),)


def test_a_sheet_whose_cells_leave_their_position_implied_is_read_in_order(
    tmp_path: Path,
) -> None:
    """Cells without r="B3" (some producers write none): error cells are still where they are."""
    fixture = producer("lookup_errors.xlsx")
    make = fixture.files["lookup_errors.xlsx"]
    sheet = "xl/worksheets/sheet1.xml"

    def without_references(path: Path) -> None:
        make(path)
        with zipfile.ZipFile(path) as source:
            parts = {name: source.read(name) for name in source.namelist()}
        parts[sheet] = re.sub(rb'(<c) r="[A-Z]+\d+"', rb"\1", parts[sheet])
        assert b' t="e"' in parts[sheet] and b'<c r="' not in parts[sheet]
        with zipfile.ZipFile(path, "w") as out:
            for name, content in parts.items():
                out.writestr(name, content)

    implied = replace(fixture, files={"lookup_errors.xlsx": without_references})
    check_outcomes(implied, outcomes(implied, tmp_path, NOW))


def test_validate_counts_every_row_of_a_sheet_with_lookup_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """good, #N/A #N/A, good, #N/A #N/A: four rows, two with problems, exit 1 (it was three
    rows and exit 0, a hire missing)."""
    soon = date.today() + timedelta(days=10)
    path = tmp_path / "hires.xlsx"
    _xlsx(("Hires", [["Work Email", "Start Date"], ["ada@contoso.com", soon],
                     [error_cell("#N/A"), error_cell("#N/A")], ["cy@contoso.com", soon],
                     [error_cell("#N/A"), error_cell("#N/A")]]))(path)  # fmt: skip
    code = main(["validate", str(path), "-c", str(ROOT / "config.yaml"), "--out",
                 str(tmp_path / "out")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == EXIT_ROWS_FAILED
    assert f"{path}: 4 rows, sheet 'Hires'" in out
    assert "2 rows ready to send, 2 with problems, 0 to skip" in out


def test_a_1904_workbook_counts_plain_numbers_from_1904(tmp_path: Path) -> None:
    """44930 typed in a Mac workbook is 5 January 2027 (the 1900 count would make it 2023 and
    fail the row as long past)."""
    (file,) = read("mac_1904.xlsx", tmp_path)
    assert [r.start_date for r in file.requests] == [date(2027, 1, 5)] * 4
    assert parse_start(44930, None) == (date(2023, 1, 4), None)
    assert parse_start(44930, None, epoch=EPOCH_1904) == (date(2027, 1, 5), None)
    assert parse_start(44930.375, None, epoch=EPOCH_1904) == (date(2027, 1, 5), time(9, 0))


def test_booleans_in_excels_languages_are_read_as_what_they_say(tmp_path: Path) -> None:
    """WAHR/FALSCH, VRAI/FAUX... in the One-time column: true, false, true, false..."""
    (file,) = read("localized_booleans.csv", tmp_path)
    flags = [r.usable_once for r in file.requests]
    assert flags == [True, False] * 15 + [False]  # the last: yanlış, as typed in Turkey
    (failed,) = file.failed
    assert failed.detail.startswith("One-time 'vielleicht' is not yes/no, true/false (also as")


def test_padded_ids_are_looked_up_as_excel_shows_them(tmp_path: Path) -> None:
    """The employee id Excel shows (001001) is the one sent, not the number under it (1001)."""
    (file,) = read("padded_ids.xlsx", tmp_path)
    assert [r.sheet_value for r in file.requests] == [
        "001001", "E0042", "1003", "1004", "001005", "123-45-6789"]  # fmt: skip


@pytest.mark.parametrize(
    ("code", "value", "shown"),
    [("000000", 1001, "001001"), ("00000", 1234567, "1234567"), ('"E"0000', 42, "E0042"),
     ("\\E0000", 42, "E0042"), ("000\\-00\\-0000", 123456789, "123-45-6789"),
     ("[Blue]000000;[Red]-000000", 7, "000007"), ("#000", 5, "005"), ("0000", 12.5, None),
     ("0000", -3, None)],
)  # fmt: skip
def test_zero_padding_formats_show_a_whole_number_as_excel_does(
    code: str, value: float, shown: str | None
) -> None:
    """Digits fill the placeholders from the right; the leftmost takes any left over."""
    formatter = whole_number_format(code)
    assert formatter is not None
    assert formatter(value) == shown


@pytest.mark.parametrize(
    "code",
    ["General", "0", "#,##0", "0.00", "@", "yyyy-mm-dd", "0%", "[<=9999999]###-####", "# ?/?"],
)
def test_formats_that_show_a_whole_number_as_general_does_are_left_alone(code: str) -> None:
    """Only formats that change a whole number's text matter for an id."""
    assert whole_number_format(code) is None


def test_an_offset_in_the_text_wins_over_pass_timezone(tmp_path: Path) -> None:
    """09:30Z is 09:30 UTC and 09:30+01:00 is 08:30 UTC, though pass.timezone is New York."""
    (file,) = read("hr_datetimes.csv", tmp_path)
    starts = {r.user: r.start for r in file.requests}
    assert starts["di@contoso.com"] == datetime(2027, 1, 5, 9, 30, tzinfo=UTC)
    assert starts["ed@contoso.com"] == datetime(2027, 1, 5, 8, 30, tzinfo=UTC)
    detail = {f.origin.row: f.detail for f in file.failed}
    assert detail[10] == "Start Date '1/4/2027 13:30 PM' has a time that is not h:mm AM/PM"
    assert detail[11] == (
        "Start Date '2027-01-05T09:30:00+25:00' has an offset from UTC that no place uses"
    )
    assert detail[12].startswith("Start Date '20271305' is not a date; use an Excel date cell")


@pytest.mark.parametrize(
    ("value", "order", "expected"),
    [("1/4/2027 9:30 AM", "MDY", (date(2027, 1, 4), time(9, 30))),
     ("1/4/2027 9:30 pm", "MDY", (date(2027, 1, 4), time(21, 30))),
     ("04/01/2027 12:05 a.m.", "DMY", (date(2027, 1, 4), time(0, 5))),
     ("2027-01-05T09:30:00Z", None, (date(2027, 1, 5), time(9, 30, tzinfo=UTC))),
     ("2027-01-05T09:30:00+01:00", None,
      (date(2027, 1, 5), time(9, 30, tzinfo=timezone(timedelta(hours=1))))),
     ("2027-01-05 09:30 -0530", None,
      (date(2027, 1, 5), time(9, 30, tzinfo=timezone(-timedelta(hours=5, minutes=30))))),
     ("2027-01-05T00:00:00Z", None, (date(2027, 1, 5), None)),
     ("20270105", None, (date(2027, 1, 5), None)), (20270105, None, (date(2027, 1, 5), None)),
     ("5 Jan 2027 9:30 AM", None, (date(2027, 1, 5), time(9, 30)))],
)  # fmt: skip
def test_text_date_times_as_excel_and_hr_exports_write_them(
    value: object, order: str | None, expected: tuple[date, time | None]
) -> None:
    """12-hour clocks, ISO with Z or an offset (kept on the time), YYYYMMDD; midnight is the
    date alone, whatever its offset."""
    assert parse_start(value, order) == expected


def test_two_offices_each_in_their_own_order_by_file_name(tmp_path: Path) -> None:
    """input.date_order_by_file: the New York file month first, London by input.date_order."""
    files = read("two_offices", tmp_path)
    assert [(f.path.name, f.date_order, f.order_setting) for f in files] == [
        ("london-hires.csv", "DMY", "input.date_order"),
        ("ny-hires.csv", "MDY", "input.date_order_by_file 'NY-*.csv'"),
    ]


@pytest.mark.parametrize("order", [None, "DMY"])
def test_files_whose_dates_show_different_orders_are_refused(
    tmp_path: Path, order: str | None
) -> None:
    """London writes 25/12/2026, New York 12/25/2026, one order for both (or none): exit 2
    naming both files and the setting, rather than 1/11/2027 read one way for both."""
    fixture = replace(producer("two_offices"), settings={"date_order": order})
    paths = fixture.build(tmp_path)
    with pytest.raises(InputFileError) as caught:
        read_files(config_for(fixture), paths, NOW)
    assert str(caught.value) == (
        f"{paths[1]}: its dates are written month first ('12/25/2026' in row 2), but "
        "london-hires.csv's are day first ('25/12/2026' in row 2): one input.date_order cannot "
        "read both (1/11/2027 would be misread in one of them); set the order per file, e.g. "
        'input.date_order_by_file: {"london-hires.csv": DMY, "ny-hires.csv": MDY}'
    )


def test_a_file_whose_dates_contradict_its_order_is_refused(tmp_path: Path) -> None:
    """A New York sheet alone under input.date_order DMY: its 12/25/2026 shows the order is
    wrong for it, so its 1/11/2027 would be misread: exit 2 naming the setting."""
    path = tmp_path / "ny.csv"
    _text("Work Email,Start Date\ncy@contoso.com,12/25/2026\ndi@contoso.com,1/11/2027\n"
          "ed@contoso.com,12/28/2026\n")(path)  # fmt: skip
    fixture = replace(producer("two_offices"), settings={"date_order": "DMY"})
    with pytest.raises(InputFileError, match=re.escape(
        "ny.csv: its dates are written month first ('12/25/2026' in row 2, and 1 more), but "
        "input.date_order reads them day first (DMY)")):  # fmt: skip
        read_files(config_for(fixture), [path], NOW)


def test_a_file_two_patterns_give_two_orders_is_refused(tmp_path: Path) -> None:
    fixture = replace(
        producer("two_offices"),
        settings={"date_order_by_file": (("*-hires.csv", "DMY"), ("ny-*", "MDY"))},
    )
    with pytest.raises(InputFileError, match=re.escape(
        "ny-hires.csv: input.date_order_by_file gives this file two date orders "
        "('*-hires.csv': DMY, 'ny-*': MDY)")):  # fmt: skip
        read_files(config_for(fixture), fixture.build(tmp_path), NOW)


def test_one_order_shown_by_every_file_needs_no_setting(tmp_path: Path) -> None:
    """Two London sheets: both day first, nothing to refuse; their one-way dates are read."""
    for name, who in (("a.csv", "ada"), ("b.csv", "bo")):
        _text(f"Work Email,Start Date\n{who}@contoso.com,25/12/2026\n")(tmp_path / name)
    files = read_files(load_config(None), [tmp_path / "a.csv", tmp_path / "b.csv"], NOW)
    assert [f.written_order for f in files] == ["DMY", "DMY"]


def test_date_order_by_file_is_read_from_the_config_file_and_the_environment(
    tmp_path: Path,
) -> None:
    """Patterns in the file's order, orders in any case; a wrong order names the key."""
    path = tmp_path / "config.yaml"
    path.write_text('graph:\n  endpoint: simulator\ninput:\n  date_order_by_file: '
                    '{"ny-*.csv": mdy, "*.xlsx": DMY}\n')  # fmt: skip
    config = load_config(path, {})
    assert config.input.date_order_by_file == (("ny-*.csv", "MDY"), ("*.xlsx", "DMY"))
    env = {"ONBOARD_INPUT_DATE_ORDER_BY_FILE": '{"x.csv": YMD}'}
    assert load_config(path, env).input.date_order_by_file == (("x.csv", "YMD"),)
    with pytest.raises(ConfigError, match=r"input.date_order_by_file .*'x.csv' must be DMY"):
        load_config(path, {"ONBOARD_INPUT_DATE_ORDER_BY_FILE": '{"x.csv": DYM}'})


def test_messages_quote_a_date_cell_as_the_sheet_shows_it(tmp_path: Path) -> None:
    """'2019-10-24', or '2019-10-24 09:30' with its time: never '2019-10-24 00:00:00'."""
    path = tmp_path / "old.xlsx"
    _xlsx(("Sheet1", [HEADERS, ["Ada", "ada@contoso.com", datetime(2019, 10, 24), None],
                      ["Bo", "bo@contoso.com", datetime(2019, 10, 24, 9, 30), None],
                      ["Cy", datetime(2019, 10, 24), date(2027, 1, 5), None]]))(path)  # fmt: skip
    file = read_input(path, load_config(None).input, PassSettings(), now=NOW)
    assert [f.detail for f in file.failed] == [
        "Start Date '2019-10-24' is 2019-10-24, more than 30 days ago: check the year",
        "Start Date '2019-10-24 09:30' is 2019-10-24, more than 30 days ago: check the year",
        "Work Email '2019-10-24' is not a UPN (name@domain) or an object id (GUID)",
    ]


def test_a_flood_of_error_cells_is_read_within_the_limits(tmp_path: Path) -> None:
    """Every cell of 2,000 rows an error: each row fails once, the file is read in one go."""
    path = tmp_path / "errors.xlsx"
    rows = [[error_cell("#N/A")] * 4 for _ in range(2000)]
    _xlsx(("Sheet1", [HEADERS, *rows]))(path)
    file = read_input(path, load_config(None).input, PassSettings(), now=NOW)
    assert (file.row_count, len(file.failed), len(file.skipped)) == (2000, 2000, 0)


def test_a_header_of_two_rows_is_read_as_one(tmp_path: Path) -> None:
    """Group titles merged over two header rows (LibreOffice, Excel): "UPN" merged down, "Dates"
    over "Start Date" | "End Date". The start date column is found (never "no start date
    column: usable at once"), and the first hire is the sheet's row 3."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["UPN", "Dates", None, "Department"])
    sheet.append([None, "Start Date", "End Date", None])
    sheet.append(["ada@contoso.com", "2027-01-25", "2027-12-31", "Finance"])
    sheet.append(["bo@contoso.com", "2027-02-15", "2027-12-31", "Legal"])
    sheet.merge_cells("A1:A2")
    sheet.merge_cells("B1:C1")
    sheet.merge_cells("D1:D2")
    path = tmp_path / "two_rows.xlsx"
    book.save(path)
    found = read_input(path, load_config(None).input, PassSettings(timezone="UTC"), now=NOW)
    assert found.failed == [] and found.header_row == 2
    assert [(r.origin.row, r.user, r.start) for r in found.requests] == [
        (3, "ada@contoso.com", datetime(2027, 1, 25, 8, tzinfo=UTC)),
        (4, "bo@contoso.com", datetime(2027, 2, 15, 8, tzinfo=UTC)),
    ]
    assert found.requests[0].extra == (("End Date", "2027-12-31"), ("Department", "Finance"))


@pytest.mark.parametrize("written", ["10.000", "20.000", "1.440", "1,440", "10 000"])
def test_a_lifetime_with_a_thousands_separator_is_refused_not_shrunk(
    tmp_path: Path, written: str
) -> None:
    """German Excel writes ten thousand minutes as 10.000: never read as 10 minutes (a pass
    that expires ten minutes after the start); the row fails naming the cell."""
    path = tmp_path / "de.csv"
    path.write_text(f"UPN;Start Date;Lifetime\nada@contoso.com;2027-01-05;{written}\n", "utf-8")
    found = read_input(path, load_config(None).input, PassSettings(timezone="UTC"), now=NOW)
    (failed,) = found.failed
    assert failed.shown == "Invalid Lifetime" and repr(written) in failed.detail


def test_columns_onboard_does_not_read_reach_the_audit(tmp_path: Path) -> None:
    """match_by upn: an Email column (a private address to hand the pass to) and an Employee
    ID column are not the person's key, so they are carried to the Issued sheet like any
    other column."""
    path = tmp_path / "hires.csv"
    path.write_text(
        "UPN,Start Date,Email,Employee ID,Department\n"
        "ada@contoso.com,2027-01-05,ada.home@example.com,E1001,Finance\n",
        "utf-8",
    )
    found = read_input(path, load_config(None).input, PassSettings(timezone="UTC"), now=NOW)
    (request,) = found.requests
    assert request.extra == (
        ("Email", "ada.home@example.com"), ("Employee ID", "E1001"), ("Department", "Finance")
    )


@pytest.mark.parametrize("label", ["Ergebnis", "Summe", "Totaal", "Totale", "Somme"])
def test_a_totals_row_in_another_language_is_below_the_data(tmp_path: Path, label: str) -> None:
    """An Excel table's totals row as German, Dutch, Italian or French Excel labels it, with its
    count in the UPN column: skipped as below the data, not a hire that fails."""
    path = tmp_path / "table.csv"
    path.write_text(
        f"Name,UPN,Start Date\nAda,ada@contoso.com,2027-01-05\n{label},1,\n", "utf-8"
    )
    found = read_input(path, load_config(None).input, PassSettings(timezone="UTC"), now=NOW)
    assert found.failed == [] and len(found.requests) == 1
    (skipped,) = found.skipped
    assert skipped.detail.startswith("below the data")


def test_libreoffices_error_codes_in_a_csv_are_errors(tmp_path: Path) -> None:
    """LibreOffice writes Err:502 into a CSV where Excel has #VALUE!: an error, never a name
    or a date."""
    path = tmp_path / "lo.csv"
    path.write_text(
        "Name,UPN,Start Date\nErr:502,ada@contoso.com,2027-01-05\nBo,bo@contoso.com,Err:504\n",
        "utf-8",
    )
    found = read_input(path, load_config(None).input, PassSettings(timezone="UTC"), now=NOW)
    reasons = {f.origin.row: f.detail for f in found.failed}
    assert set(reasons) == {2, 3}
    assert "Err:502" in reasons[2] and "LibreOffice's error code" in reasons[2]
    assert "Err:504" in reasons[3]
