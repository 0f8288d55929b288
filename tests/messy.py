"""Messy new-hire spreadsheets, as HR really makes them: one fixture per quirk, each with the
outcome expected for every row.

The tests build them in a temporary folder. To look at them in Excel:
    python tests/messy.py FOLDER
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from openpyxl import Workbook

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
          merge: dict[str, str] | None = None) -> Callable[[Path], None]:  # fmt: skip
    def make(path: Path) -> None:
        book = Workbook()
        book.remove(book.active)
        for title, rows in sheets:
            sheet = book.create_sheet(title)
            for row in rows:
                sheet.append(row)
            if title in hidden:
                sheet.sheet_state = "hidden"
            if merge and title in merge:
                sheet.merge_cells(merge[title])
        book.save(path)

    return make


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
        "Excel's sep=; first line",
        {
            "sep_hint.csv": _text(
                "sep=;\nName;Work Email;Start Date\nAda;ada@contoso.com;2026-12-07\n"
            )
        },
        {("sep_hint.csv", 3): ("ready", "ada@contoso.com")},
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


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "messy")
    for fixture in FIXTURES:
        for path in fixture.build(target / fixture.name.split(".")[0]):
            print(path, "-", fixture.quirk)
