"""Messy new-hire spreadsheets, as HR really makes them: one fixture per quirk, each with the
outcome expected for every row.

The tests build them in a temporary folder. To look at them in Excel:
    python tests/messy.py FOLDER
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from openpyxl import Workbook

from onboard.config import Config, PassSettings, load_config
from onboard.outcomes import Failed, PassRequest
from onboard.reader import check_rows, read_all


def read_files(config, paths, now):  # type: ignore[no-untyped-def]
    """The input files as `onboard run` reads them."""
    return read_all(paths, config.input, config.pass_, now)

# What a row must end as: ("ready", UPN) is sent as that user; ("failed", reason) and
# ("skipped", text in the reason) are decided before anything is sent.
Expected = dict[tuple[str, int], tuple[str, str]]
HEADERS = ["Name", "Work Email", "Start Date", "Lifetime"]


@dataclass
class Fixture:
    name: str
    quirk: str
    files: dict[str, Callable[[Path], None]]
    expected: Expected
    settings: dict[str, Any] = field(default_factory=dict)  # input.* for this fixture
    passes: dict[str, Any] = field(default_factory=dict)  # pass.* for this fixture

    def build(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for file_name, make in self.files.items():
            path = folder / file_name
            make(path)
            paths.append(path)
        return paths


def _xlsx(*sheets: tuple[str, list[list[Any]]], hidden: tuple[str, ...] = (),
          merge: dict[str, str] | None = None, formats: dict[str, str] | None = None,
          date1904: bool = False) -> Callable[[Path], None]:  # fmt: skip
    """A workbook written by openpyxl, then edited where openpyxl cannot write what Excel
    does: a cell given as error_cell("#N/A") becomes an error cell as Excel saves one (t="e", the
    formula behind it, the code as its value); date1904 sets the Mac date system in
    workbook.xml. `formats`: a number format per cell ("B2": "000000"), in styles.xml."""

    def make(path: Path) -> None:
        book = Workbook()
        book.remove(book.active)
        for title, rows in sheets:
            sheet = book.create_sheet(title)
            for row in rows:
                sheet.append(row)
            for ref, code in (formats or {}).items():
                sheet[ref].number_format = code
            if title in hidden:
                sheet.sheet_state = "hidden"
            if merge and title in merge:
                sheet.merge_cells(merge[title])
        book.save(path)
        _edit_parts(path, date1904)

    return make


def error_cell(code: str) -> str:
    """A cell that will hold Excel's error `code` (see _xlsx)."""
    return f"={_ERROR_MARK}{code}"


_ERROR_MARK = "ERRORCELL_"
# openpyxl writes ="..." as a formula cell with no value: <c r="B3"><f>ERRORCELL_#N/A</f><v/></c>
_MARKED = re.compile(
    rb'<c r="([A-Z]+)(\d+)"([^>]*)><f>'
    + _ERROR_MARK.encode()
    + rb"([^<]*)</f>(?:<v\s*/>|<v>\s*</v>)?</c>"
)


def _edit_parts(path: Path, date1904: bool) -> None:
    """Rewrite the saved workbook's XML as Excel writes it (see _xlsx)."""
    with zipfile.ZipFile(path) as source:
        parts = {info.filename: source.read(info.filename) for info in source.infolist()}

    def excel_error(match: re.Match[bytes]) -> bytes:
        column, row, attributes, code = match.groups()
        formula = b"VLOOKUP(A" + row + b",Staff!A:D,2,FALSE)"  # HR's lookup into a staff list
        return (b'<c r="' + column + row + b'"' + attributes + b' t="e"><f>' + formula
                + b"</f><v>" + code + b"</v></c>")  # fmt: skip

    for name, content in parts.items():
        if name.startswith("xl/worksheets/"):
            parts[name] = _MARKED.sub(excel_error, content)
        elif name == "xl/workbook.xml" and date1904:
            parts[name] = re.sub(rb"<workbookPr\s*/>", b'<workbookPr date1904="1"/>', content)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for name, content in parts.items():
            out.writestr(name, content)


def _text(content: str, encoding: str = "utf-8", newline: str = "\r\n") -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(content.replace("\n", newline).encode(encoding))

    return make


def _rows(*people: tuple[str, Any, Any]) -> list[list[Any]]:
    return [[name.title(), f"{name}@contoso.com", start, life] for name, start, life in people]


FIXTURES = [
    Fixture(
        "title_rows.xlsx",
        "a merged title, a blank row and a note above the headers",
        {
            "title_rows.xlsx": _xlsx(
                (
                    "New hires",
                    [
                        ["Contoso new hires - December 2026", None, None, None],
                        [None, None, None, None],
                        ["Prepared by HR. Questions: hr@contoso.com", None, None, None],
                        HEADERS,
                        *_rows(("ada", date(2026, 12, 7), 480), ("bo", date(2026, 12, 7), None)),
                    ],
                ),
                merge={"New hires": "A1:D1"},
            )
        },
        {
            ("title_rows.xlsx", 5): ("ready", "ada@contoso.com"),
            ("title_rows.xlsx", 6): ("ready", "bo@contoso.com"),
        },
    ),
    Fixture(
        "footer_rows.xlsx",
        "a blank row inside the data, then a totals row and a note below it",
        {
            "footer_rows.xlsx": _xlsx(
                (
                    "Sheet1",
                    [
                        HEADERS,
                        *_rows(("ada", date(2026, 12, 7), 480)),
                        [None, None, None, None],
                        *_rows(("bo", date(2026, 12, 7), 480)),
                        [None, None, None, None],
                        ["Total", 2, None, 960],
                        [
                            "Notes: laptops ship on the Friday before the start date",
                            None,
                            None,
                            None,
                        ],
                    ],
                )
            )
        },
        {
            ("footer_rows.xlsx", 2): ("ready", "ada@contoso.com"),
            ("footer_rows.xlsx", 3): ("skipped", "blank row"),
            ("footer_rows.xlsx", 4): ("ready", "bo@contoso.com"),
            ("footer_rows.xlsx", 5): ("skipped", "blank row"),
            ("footer_rows.xlsx", 6): (
                "skipped",
                "below the data (a total or a note): 'Total 2 960'",
            ),
            ("footer_rows.xlsx", 7): (
                "skipped",
                "below the data (a total or a note): 'Notes: lapt",
            ),
        },
    ),
    Fixture(
        "last_row_typo.xlsx",
        "the last hires' addresses mistyped, some without a date: failed rows, never notes",
        {
            "last_row_typo.xlsx": _xlsx(
                (
                    "Sheet1",
                    [
                        HEADERS,
                        *_rows(("ada", date(2026, 12, 7), 480)),
                        ["Bo", "bo.contoso.com", date(2026, 12, 7), None],
                        ["Sumaya Khan", "sumaya.khan", None, None],
                        [None, "jane doe", None, None],
                    ],
                )
            )
        },
        {
            ("last_row_typo.xlsx", 2): ("ready", "ada@contoso.com"),
            ("last_row_typo.xlsx", 3): ("failed", "Invalid Work Email"),
            ("last_row_typo.xlsx", 4): ("failed", "Invalid row"),  # address and date
            ("last_row_typo.xlsx", 5): ("failed", "Invalid row"),
        },
    ),
    Fixture(
        "employee_id_totals.xlsx",
        "input.match_by employeeId: a totals row whose count looks like an id is still a total",
        {
            "employee_id_totals.xlsx": _xlsx(
                (
                    "Sheet1",
                    [["Name", "Employee ID"], ["Amara", "E1001"], ["Ben", 1002], ["Total", 2]],
                )
            )
        },
        {
            ("employee_id_totals.xlsx", 2): ("ready", "E1001"),
            ("employee_id_totals.xlsx", 3): ("ready", "1002"),
            ("employee_id_totals.xlsx", 4): ("skipped", "below the data (a total or a note)"),
        },
        settings={"match_by": "employeeId"},
    ),
    Fixture(
        "surname_like_a_footer.xlsx",
        "a last hire whose name starts like a footer word (Page, Note...) is still a hire",
        {
            "surname_like_a_footer.xlsx": _xlsx(
                (
                    "Sheet1",
                    [
                        HEADERS,
                        *_rows(("ada", date(2026, 12, 7), 480)),
                        ["Page, Larry", "larry.page.contoso.com", "next week", None],
                        ["Note, Ann", "ann.note@contoso.com", None, None],
                    ],
                )
            )
        },
        {
            ("surname_like_a_footer.xlsx", 2): ("ready", "ada@contoso.com"),
            ("surname_like_a_footer.xlsx", 3): ("failed", "Invalid row"),
            ("surname_like_a_footer.xlsx", 4): ("failed", "Invalid Start Date"),
        },
    ),
    Fixture(
        "several_sheets.xlsx",
        "an instructions sheet first, a hidden old sheet, the data on the third",
        {
            "several_sheets.xlsx": _xlsx(
                ("Read me", [["Fill in one row per new hire on the Hires sheet."]]),
                ("Old", [HEADERS, *_rows(("old", date(2026, 1, 5), 480))]),
                ("Hires", [HEADERS, *_rows(("ada", date(2026, 12, 7), 480))]),
                hidden=("Old",),
            )
        },
        {("several_sheets.xlsx", 2): ("ready", "ada@contoso.com")},
    ),
    Fixture(
        "hidden_sheet_named.xlsx",
        "a hidden sheet is read when input.sheet names it",
        {
            "hidden_sheet_named.xlsx": _xlsx(
                ("Hires", [HEADERS, *_rows(("ada", date(2026, 12, 7), 480))]),
                ("Next month", [HEADERS, *_rows(("cy", date(2026, 12, 14), 480))]),
                hidden=("Next month",),
            )
        },
        {("hidden_sheet_named.xlsx", 2): ("ready", "cy@contoso.com")},
        settings={"sheet": "next month"},
    ),
    Fixture(
        "excel_dates.xlsx",
        "date cells, datetime cells with a time, serial numbers, ISO text, month names",
        {
            "excel_dates.xlsx": _xlsx(
                (
                    "Sheet1",
                    [
                        HEADERS,
                        *_rows(
                            ("ada", date(2026, 12, 7), None),
                            ("bo", datetime(2026, 12, 7, 9, 30), None),
                            ("cy", 46363, None),  # 2026-12-07 as Excel counts days
                            ("di", "2026-12-07", None),
                            ("ed", "7 Dec 2026", None),
                            ("flo", "December 7, 2026", None),
                            ("gus", "07/12/2026", None),
                            ("hal", "next Monday", None),
                        ),
                    ],
                )
            )
        },
        {
            ("excel_dates.xlsx", 2): ("ready", "ada@contoso.com 2026-12-07T08:00"),
            ("excel_dates.xlsx", 3): ("ready", "bo@contoso.com 2026-12-07T09:30"),
            ("excel_dates.xlsx", 4): ("ready", "cy@contoso.com 2026-12-07T08:00"),
            ("excel_dates.xlsx", 5): ("ready", "di@contoso.com 2026-12-07T08:00"),
            ("excel_dates.xlsx", 6): ("ready", "ed@contoso.com 2026-12-07T08:00"),
            ("excel_dates.xlsx", 7): ("ready", "flo@contoso.com 2026-12-07T08:00"),
            ("excel_dates.xlsx", 8): ("failed", "Invalid Start Date"),  # 7 Dec or 12 Jul?
            ("excel_dates.xlsx", 9): ("failed", "Invalid Start Date"),
        },
    ),
    Fixture(
        "day_first.csv",
        "day-first text dates, input.date_order: DMY",
        {
            "day_first.csv": _text(
                "Name,Work Email,Start Date\nAda,ada@contoso.com,07/12/2026\n"
                "Bo,bo@contoso.com,13/12/2026\nCy,cy@contoso.com,12/13/2026\n"
                "Di,di@contoso.com,2026-12-07\n"  # ISO: read as ISO, whatever the order
                "Ed,ed@contoso.com,12/01/2026\n"  # month first by mistake: 12 January
                "Flo,flo@contoso.com,26-12-07\n"  # two-digit year first: 26 Dec 2007
            )
        },
        {
            ("day_first.csv", 2): ("ready", "ada@contoso.com 2026-12-07T08:00"),
            ("day_first.csv", 3): ("ready", "bo@contoso.com 2026-12-13T08:00"),
            ("day_first.csv", 4): ("failed", "Invalid Start Date"),
            ("day_first.csv", 5): ("ready", "di@contoso.com 2026-12-07T08:00"),
            # far in the past, so a misreading, not a late hire: the row fails
            ("day_first.csv", 6): ("failed", "Invalid Start Date"),
            ("day_first.csv", 7): ("failed", "Invalid Start Date"),
        },
        settings={"date_order": "DMY"},
    ),
    Fixture(
        "month_first.csv",
        "month-first text dates, input.date_order: MDY",
        {
            "month_first.csv": _text(
                "Name,Work Email,Start Date\nAda,ada@contoso.com,12/07/2026\n"
                "Bo,bo@contoso.com,12/13/26\nCy,cy@contoso.com,2026-12-07\n"
                "Di,di@contoso.com,46363\n"  # a date column saved as General: the serial
            )
        },
        {
            ("month_first.csv", 2): ("ready", "ada@contoso.com 2026-12-07T08:00"),
            ("month_first.csv", 3): ("ready", "bo@contoso.com 2026-12-13T08:00"),
            ("month_first.csv", 4): ("ready", "cy@contoso.com 2026-12-07T08:00"),
            ("month_first.csv", 5): ("ready", "di@contoso.com 2026-12-07T08:00"),
        },
        settings={"date_order": "MDY"},
    ),
    Fixture(
        "daylight_saving.csv",
        "Europe/London: 08:00 local is 08:00 UTC in winter, 07:00 UTC once the clocks go forward",
        {
            "daylight_saving.csv": _text(
                "Work Email,Start Date\nada@contoso.com,2027-03-26\nbo@contoso.com,2027-03-29\n"
            )
        },
        {
            ("daylight_saving.csv", 2): ("ready", "ada@contoso.com 2027-03-26T08:00"),
            ("daylight_saving.csv", 3): ("ready", "bo@contoso.com 2027-03-29T07:00"),
        },
        passes={"timezone": "Europe/London"},
    ),
    Fixture(
        "messy_text.csv",
        "trailing and non-breaking spaces, zero-width characters, upper case, decomposed accents",
        {
            "messy_text.csv": _text(
                "Name,Work Email,Start Date\n"
                "Ada ,  ada@contoso.com  ,2026-12-07\n"
                "Bo,\u00a0bo@contoso.com\u200b,2026-12-07\n"
                "Ada again,ADA@Contoso.com,2026-12-07\n"
                "Zoe\u0308 Mu\u0308ller,zoe@contoso.com,2026-12-07\n"
            )
        },
        {
            ("messy_text.csv", 2): ("ready", "ada@contoso.com"),
            ("messy_text.csv", 3): ("ready", "bo@contoso.com"),
            ("messy_text.csv", 4): ("skipped", "same as row 2"),
            ("messy_text.csv", 5): ("ready", "zoe@contoso.com Zo\u00eb M\u00fcller"),
        },
    ),
    Fixture(
        "unicode_text.txt",
        "Excel's 'Unicode text': UTF-16 with a BOM, tab-separated",
        {
            "unicode_text.txt": _text(
                "Name\tWork Email\tStart Date\nZo\u00eb\tzoe@contoso.com\t"
                "2026-12-07\nBo\tbo@contoso.com\t2026-12-07\n",
                "utf-16",
            )
        },
        {
            ("unicode_text.txt", 2): ("ready", "zoe@contoso.com Zo\u00eb"),
            ("unicode_text.txt", 3): ("ready", "bo@contoso.com"),
        },
    ),
    Fixture(
        "semicolons_bom.csv",
        "UTF-8 with a BOM and semicolons (Excel in much of Europe), a title line first",
        {
            "semicolons_bom.csv": _text(
                "New hires;;\nName;Work Email;Start Date\n"
                "M\u00fcller, Jan;jan@contoso.com;2026-12-07\n",
                "utf-8-sig",
            )
        },
        {("semicolons_bom.csv", 3): ("ready", "jan@contoso.com M\u00fcller, Jan")},
    ),
    Fixture(
        "sep_hint.csv",
        "Excel's sep=; first line (a setting Excel shows no row for: the header is row 1)",
        {
            "sep_hint.csv": _text(
                "sep=;\nName;Work Email;Start Date\nAda;ada@contoso.com;2026-12-07\n"
            )
        },
        {("sep_hint.csv", 2): ("ready", "ada@contoso.com")},
    ),
    Fixture(
        "windows_1252.csv",
        "Windows-1252 (an older Excel's 'CSV'), accented names",
        {
            "windows_1252.csv": _text(
                "Name,Work Email,Start Date\nRen\u00e9e \u00c5berg,renee@contoso.com,2026-12-07\n",
                "cp1252",
            )
        },
        {("windows_1252.csv", 2): ("ready", "renee@contoso.com Ren\u00e9e \u00c5berg")},
    ),
    Fixture(
        "quoted_newlines.csv",
        "a quoted field holding a comma and a line break",
        {
            "quoted_newlines.csv": _text(
                'Name,Work Email,Start Date\n"Okafor, Amara\nMs",'
                "amara@contoso.com,2026-12-07\nBo,bo@contoso.com,"
                "2026-12-07\n"
            )
        },
        {
            ("quoted_newlines.csv", 2): ("ready", "amara@contoso.com Okafor, Amara Ms"),
            ("quoted_newlines.csv", 3): ("ready", "bo@contoso.com"),
        },
    ),
    Fixture(
        "duplicates.csv",
        "the same person twice (identical: skipped) and twice more (disagreeing: all failed)",
        {
            "duplicates.csv": _text(
                "Work Email,Start Date,Lifetime\nada@contoso.com,2026-12-07,"
                "480\nbo@contoso.com,2026-12-07,480\nADA@contoso.com,"
                "2026-12-07,480\nbo@contoso.com,2026-12-14,480\n"
            )
        },
        {
            ("duplicates.csv", 2): ("ready", "ada@contoso.com"),
            ("duplicates.csv", 3): ("failed", "Conflicting rows"),
            ("duplicates.csv", 4): ("skipped", "same as row 2"),
            ("duplicates.csv", 5): ("failed", "Conflicting rows"),
        },
    ),
    Fixture(
        "two_sites",
        "a sheet per site, one run: each row traced to its file; a person in both",
        {
            "site_london.xlsx": _xlsx(
                (
                    "London",
                    [
                        HEADERS,
                        *_rows(("ada", date(2026, 12, 7), 480), ("bo", date(2026, 12, 7), 480)),
                    ],
                )
            ),
            "site_oslo.csv": _text(
                "Name,Work Email,Start Date,Lifetime\nCy,cy@contoso.com,"
                "2026-12-07,480\nBo,bo@contoso.com,2026-12-07,480\n"
            ),
        },
        {
            ("site_london.xlsx", 2): ("ready", "ada@contoso.com"),
            ("site_london.xlsx", 3): ("ready", "bo@contoso.com"),
            ("site_oslo.csv", 2): ("ready", "cy@contoso.com"),
            ("site_oslo.csv", 3): ("skipped", "same as site_london.xlsx row 3"),
        },
    ),
]


# Files as real producers write them (Excel for Windows and Mac, Excel's CSV in other
# languages, HR systems' exports), with what openpyxl cannot write edited into their XML.
# TRUE, FALSE, TRUE, FALSE... as Excel in German, French, Italian, Spanish, Portuguese, Dutch,
# Swedish, Danish, Norwegian, Finnish, Polish, Hungarian, Czech, Turkish and Russian writes
# them; then yanlış as typed on a Turkish keyboard, and a word that is neither.
BOOLEAN_WORDS = [
    "WAHR", "FALSCH", "vrai", "Faux", "VERO", "FALSO", "VERDADERO", "FALSO", "VERDADEIRO",
    "FALSO", "WAAR", "ONWAAR", "SANT", "FALSKT", "SAND", "FALSK", "SANN", "USANN", "TOSI",
    "EPÄTOSI", "PRAWDA", "FAŁSZ", "IGAZ", "HAMIS", "PRAVDA", "NEPRAVDA", "DOĞRU", "YANLIŞ",
    "ИСТИНА", "ложь", "yanlış", "vielleicht",
]  # fmt: skip
PRODUCERS = [
    Fixture(
        "lookup_errors.xlsx",
        "Excel: each hire's address and start date looked up (VLOOKUP) in a staff list; two "
        "hires not in it yet: good, #N/A #N/A, good, #N/A #N/A",
        {
            "lookup_errors.xlsx": _xlsx(
                (
                    "Hires",
                    [
                        ["Work Email", "Start Date"],
                        ["ada@contoso.com", date(2027, 1, 5)],
                        [error_cell("#N/A"), error_cell("#N/A")],
                        ["cy@contoso.com", date(2027, 1, 5)],
                        [error_cell("#N/A"), error_cell("#N/A")],
                    ],
                )
            )
        },
        {
            ("lookup_errors.xlsx", 2): ("ready", "ada@contoso.com 2027-01-05T08:00"),
            ("lookup_errors.xlsx", 3): ("failed", "Invalid row"),  # was a "blank row"
            ("lookup_errors.xlsx", 4): ("ready", "cy@contoso.com 2027-01-05T08:00"),
            ("lookup_errors.xlsx", 5): ("failed", "Invalid row"),  # was not reported at all
        },
    ),
    Fixture(
        "every_error.xlsx",
        "Excel: each error value in a column onboard reads; one in a column it does not; a "
        "last row of errors only; errors python-calamine does not know (#SPILL!...)",
        {
            "every_error.xlsx": _xlsx(
                (
                    "Hires",
                    [
                        [*HEADERS, "Department"],
                        ["Ada", "ada@contoso.com", error_cell("#VALUE!"), None, "Sales"],
                        ["Bo", "bo@contoso.com", date(2027, 1, 5), error_cell("#DIV/0!"), "Sales"],
                        ["Cy", error_cell("#REF!"), date(2027, 1, 5), None, "Sales"],
                        [error_cell("#NAME?"), "di@contoso.com", date(2027, 1, 5), None, None],
                        ["Ed", "ed@contoso.com", error_cell("#NUM!"), None, None],
                        ["Flo", "flo@contoso.com", error_cell("#NULL!"), None, None],
                        ["Gus", "gus@contoso.com", error_cell("#SPILL!"), None, None],
                        ["Hal", "hal@contoso.com", error_cell("#CALC!"), None, None],
                        ["Ida", "ida@contoso.com", error_cell("#GETTING_DATA"), None, None],
                        ["Jo", "jo@contoso.com", date(2027, 1, 5), 480, error_cell("#N/A")],
                        [error_cell("#N/A"), None, None, None, None],
                    ],
                )
            )
        },
        {
            ("every_error.xlsx", 2): ("failed", "Invalid Start Date"),
            ("every_error.xlsx", 3): ("failed", "Invalid Lifetime"),
            ("every_error.xlsx", 4): ("failed", "Invalid Work Email"),
            ("every_error.xlsx", 5): ("failed", "Invalid Name"),
            ("every_error.xlsx", 6): ("failed", "Invalid Start Date"),
            ("every_error.xlsx", 7): ("failed", "Invalid Start Date"),
            ("every_error.xlsx", 8): ("failed", "Invalid Start Date"),
            ("every_error.xlsx", 9): ("failed", "Invalid Start Date"),
            ("every_error.xlsx", 10): ("failed", "Invalid Start Date"),
            ("every_error.xlsx", 11): ("ready", "jo@contoso.com 2027-01-05T08:00 Jo"),
            ("every_error.xlsx", 12): ("failed", "Invalid row"),  # name #N/A, no address
        },
    ),
    Fixture(
        "lookup_errors.csv",
        "Excel's CSV of a sheet with lookup errors: the error's text, #N/A (#NV in German)",
        {
            "lookup_errors.csv": _text(
                "Name,Work Email,Start Date\nAda,ada@contoso.com,2027-01-05\n#N/A,#N/A,#N/A\n"
                "Cy,cy@contoso.com,2027-01-05\nDi,di@contoso.com,#NV\n#N/A,#N/A,#N/A\n"
            )
        },
        {
            ("lookup_errors.csv", 2): ("ready", "ada@contoso.com"),
            ("lookup_errors.csv", 3): ("failed", "Invalid row"),
            ("lookup_errors.csv", 4): ("ready", "cy@contoso.com"),
            ("lookup_errors.csv", 5): ("failed", "Invalid Start Date"),
            ("lookup_errors.csv", 6): ("failed", "Invalid row"),
        },
    ),
    Fixture(
        "mac_1904.xlsx",
        "Mac Excel (1904 date system): a date cell, a datetime cell, and a date typed as a "
        "plain number (44930 is 5 January 2027 there, 4 January 2023 on Windows)",
        {
            "mac_1904.xlsx": _xlsx(
                (
                    "Sheet1",
                    [
                        HEADERS,
                        *_rows(
                            ("ada", 44930, None),
                            ("bo", 44930.375, None),
                            ("cy", 44930, None),
                            ("di", "2027-01-05", None),
                        ),
                    ],
                ),
                formats={"C2": "yyyy-mm-dd", "C3": "yyyy-mm-dd hh:mm"},
                date1904=True,
            )
        },
        {
            ("mac_1904.xlsx", 2): ("ready", "ada@contoso.com 2027-01-05T08:00"),
            ("mac_1904.xlsx", 3): ("ready", "bo@contoso.com 2027-01-05T09:00"),
            ("mac_1904.xlsx", 4): ("ready", "cy@contoso.com 2027-01-05T08:00"),
            ("mac_1904.xlsx", 5): ("ready", "di@contoso.com 2027-01-05T08:00"),
        },
    ),
    Fixture(
        "localized_booleans.csv",
        "Excel's CSV in other languages: the One-time column as TRUE/FALSE in 16 languages",
        {
            "localized_booleans.csv": _text(
                "sep=;\nWork Email;Start Date;One-time\n"
                + "".join(
                    f"u{row}@contoso.com;2027-01-05;{word}\n"
                    for row, word in enumerate(BOOLEAN_WORDS, start=2)  # 1: headers (sep=: none)
                ),
                "utf-8-sig",
            )
        },
        {
            **{
                ("localized_booleans.csv", row): ("ready", f"u{row}@contoso.com")
                for row in range(2, 33)
            },
            ("localized_booleans.csv", 33): ("failed", "Invalid One-time"),
        },
    ),
    Fixture(
        "padded_ids.xlsx",
        "input.match_by employeeId: ids in number cells Excel shows zero-padded (000000), "
        'with a letter ("E"0000), as text (@), General, and typed as text',
        {
            "padded_ids.xlsx": _xlsx(
                (
                    "Sheet1",
                    [
                        ["Name", "Employee ID", "Start Date"],
                        ["Ada", 1001, date(2027, 1, 5)],
                        ["Bo", 42, date(2027, 1, 5)],
                        ["Cy", 1003, date(2027, 1, 5)],
                        ["Di", 1004, date(2027, 1, 5)],
                        ["Ed", "001005", date(2027, 1, 5)],
                        ["Flo", 123456789, date(2027, 1, 5)],
                    ],
                ),
                formats={"B2": "000000", "B3": '"E"0000', "B4": "@", "B7": "000\\-00\\-0000"},
            )
        },
        {
            ("padded_ids.xlsx", 2): ("ready", "001001"),
            ("padded_ids.xlsx", 3): ("ready", "E0042"),
            ("padded_ids.xlsx", 4): ("ready", "1003"),
            ("padded_ids.xlsx", 5): ("ready", "1004"),
            ("padded_ids.xlsx", 6): ("ready", "001005"),
            ("padded_ids.xlsx", 7): ("ready", "123-45-6789"),
        },
        settings={"match_by": "employeeId"},
    ),
    Fixture(
        "forced_text.csv",
        'Excel\'s ="..." (text kept as typed) around ids, a date and a name, as a CSV holds it',
        {
            "forced_text.csv": _text(
                'Name,Employee ID,Start Date\nAda,="0042",="2027-01-05"\n'
                '"=""Bo""",="E1001",2027-01-05\nCy,"=""0043""",="20270105"\n'
            )
        },
        {
            ("forced_text.csv", 2): ("ready", "0042 2027-01-05T08:00 Ada"),
            ("forced_text.csv", 3): ("ready", "E1001 2027-01-05T08:00 Bo"),
            ("forced_text.csv", 4): ("ready", "0043 2027-01-05T08:00 Cy"),
        },
        settings={"match_by": "employeeId"},
    ),
    Fixture(
        "hr_datetimes.csv",
        "an HR system's export in New York: 12-hour times, ISO times with Z or an offset (which "
        'win over pass.timezone), YYYYMMDD, Excel\'s ="..."',
        {
            "hr_datetimes.csv": _text(
                "Work Email,Start Date\n"
                "ada@contoso.com,1/4/2027 9:30 AM\n"  # 09:30 in New York: 14:30 UTC
                "bo@contoso.com,1/4/2027 12:15 PM\n"
                "cy@contoso.com,1/4/2027 12:00 AM\n"  # midnight: the date alone, at 08:00
                "di@contoso.com,2027-01-05T09:30:00Z\n"
                "ed@contoso.com,2027-01-05T09:30:00+01:00\n"
                "flo@contoso.com,2027-01-05T09:30:00.000-08:00\n"
                "gus@contoso.com,20270105\n"
                'hal@contoso.com,="2027-01-05"\n'
                "ida@contoso.com,1/4/2027 13:30 PM\n"
                "jo@contoso.com,2027-01-05T09:30:00+25:00\n"
                "kim@contoso.com,20271305\n"
            )
        },
        {
            ("hr_datetimes.csv", 2): ("ready", "ada@contoso.com 2027-01-04T14:30"),
            ("hr_datetimes.csv", 3): ("ready", "bo@contoso.com 2027-01-04T17:15"),
            ("hr_datetimes.csv", 4): ("ready", "cy@contoso.com 2027-01-04T13:00"),
            ("hr_datetimes.csv", 5): ("ready", "di@contoso.com 2027-01-05T09:30"),
            ("hr_datetimes.csv", 6): ("ready", "ed@contoso.com 2027-01-05T08:30"),
            ("hr_datetimes.csv", 7): ("ready", "flo@contoso.com 2027-01-05T17:30"),
            ("hr_datetimes.csv", 8): ("ready", "gus@contoso.com 2027-01-05T13:00"),
            ("hr_datetimes.csv", 9): ("ready", "hal@contoso.com 2027-01-05T13:00"),
            ("hr_datetimes.csv", 10): ("failed", "Invalid Start Date"),
            ("hr_datetimes.csv", 11): ("failed", "Invalid Start Date"),
            ("hr_datetimes.csv", 12): ("failed", "Invalid Start Date"),
        },
        settings={"date_order": "MDY"},
        passes={"timezone": "America/New_York"},
    ),
    Fixture(
        "two_offices",
        "a London sheet (day first) and a New York sheet (month first) in one run, each read "
        "in its own order by input.date_order_by_file: 1/11/2027 is 1 November in one, 11 "
        "January in the other",
        {
            "london-hires.csv": _text(
                "Work Email,Start Date\nada@contoso.com,25/12/2026\nbo@contoso.com,1/11/2027\n"
            ),
            "ny-hires.csv": _text(
                "Work Email,Start Date\ncy@contoso.com,12/25/2026\ndi@contoso.com,1/11/2027\n"
            ),
        },
        {
            ("london-hires.csv", 2): ("ready", "ada@contoso.com 2026-12-25T08:00"),
            ("london-hires.csv", 3): ("ready", "bo@contoso.com 2027-11-01T08:00"),
            ("ny-hires.csv", 2): ("ready", "cy@contoso.com 2026-12-25T08:00"),
            ("ny-hires.csv", 3): ("ready", "di@contoso.com 2027-01-11T08:00"),
        },
        settings={"date_order": "DMY", "date_order_by_file": (("NY-*.csv", "MDY"),)},
    ),
]


def config_for(fixture: Fixture) -> Config:
    """The defaults, with the fixture's input.* and pass.* settings (pass.timezone UTC)."""
    base = load_config(None)
    return base.model_copy(update={
        "input": base.input.model_copy(update=fixture.settings),
        "pass_": PassSettings(timezone="UTC").model_copy(update=fixture.passes),
    })


def outcomes(
    fixture: Fixture, folder: Path, now: datetime
) -> dict[tuple[str, int], tuple[str, str]]:
    """What each row became: ("ready", "user start display"), ("failed", reason) or
    ("skipped", reason); a row reported twice fails the test."""
    paths = fixture.build(folder)
    files = read_files(config_for(fixture), paths, now)
    requests, checked = check_rows(files)
    found: dict[tuple[str, int], tuple[str, str]] = {}

    def put(key: tuple[str, int], value: tuple[str, str]) -> None:
        assert key not in found, f"row {key} reported twice"
        found[key] = value

    for r in requests:
        put((r.origin.source, r.origin.row), ("ready", describe(r)))
    for o in checked:
        kind = "failed" if isinstance(o, Failed) else "skipped"
        put((o.origin.source, o.origin.row), (kind, o.shown if isinstance(o, Failed) else o.detail))
    return found


def describe(request: PassRequest) -> str:
    start = f"{request.start:%Y-%m-%dT%H:%M}" if request.start else "now"
    return f"{request.user} {start} {request.display_name or ''}".rstrip()


_WHEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$")


def check_outcomes(fixture: Fixture, found: dict[tuple[str, int], tuple[str, str]]) -> None:
    """Every row of the fixture ended as written down for it, and no other row exists."""
    assert set(found) == set(fixture.expected), fixture.quirk
    for key, (kind, text) in fixture.expected.items():
        got_kind, got = found[key]
        assert got_kind == kind, (key, found[key])
        if kind == "ready":
            user, _, rest = text.partition(" ")
            got_user, got_start, *got_name = got.split(" ", 2)
            assert got_user == user, key
            if rest and _WHEN.match(rest.split(" ")[0]):
                when, _, rest = rest.partition(" ")
                assert got_start == when, key
            if rest:
                assert (got_name or [""])[0] == rest, key
        elif kind == "skipped":
            assert text in got, (key, got)
        else:
            assert got == text, (key, got)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "messy")
    for fixture in FIXTURES + PRODUCERS:
        for path in fixture.build(target / fixture.name.split(".")[0]):
            print(path, "-", fixture.quirk)
