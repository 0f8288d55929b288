"""The audit workbook's layout: times in the pass time zone, the input's other columns carried
through, the column order, the Summary's next steps, counts and settings, and the simulated mark."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

from openpyxl import Workbook, load_workbook
from openpyxl.worksheet.worksheet import Worksheet

from onboard.audit import (
    FAILED_COLUMNS,
    ISSUED_COLUMNS,
    SIMULATED,
    SKIPPED_COLUMNS,
    AuditOptions,
    FileSummary,
    RunSummary,
    audit_path,
    redacted_path,
    write_audit,
)
from onboard.config import InputSettings, PassSettings, load_config
from onboard.history import recover_unfinished, report
from onboard.journal import Journal, from_record, to_record
from onboard.outcomes import Failed, Issued, Origin, PassRequest, Reason, Skipped, not_sent
from onboard.reader import read_input

# British Summer Time: 07:00 UTC is 08:00 in London.
START = datetime(2027, 7, 5, 7, tzinfo=timezone.utc)
END = datetime(2027, 7, 5, 15, tzinfo=timezone.utc)
CREATED = datetime(2027, 7, 1, 12, tzinfo=timezone.utc)
LONDON = "Europe/London"
SUMMARY = RunSummary(
    "run-1", CREATED, CREATED, "1.0", [FileSummary("hires.xlsx", "ab" * 32, 3, "Sheet1")], []
)
PASS = ["Source file", "Row", "User", "Display name", "Temporary Access Pass"]
TECHNICAL = ["Method ID", "Created (UTC)", "Attempts", "Request ID"]


def request(
    row: int, user: str, *extra: tuple[str, str], source: str = "hires.xlsx"
) -> PassRequest:
    return PassRequest(
        Origin(source, row),
        user,
        user.split("@")[0].title(),
        START,
        480,
        True,
        "a note",
        extra=extra,
    )


def issued(req: PassRequest, value: str = "Tap-Value-1") -> Issued:
    return Issued(
        req,
        value,
        f"m-{req.origin.row}",
        START,
        END,
        480,
        True,
        CREATED,
        1,
        f"req-{req.origin.row}",
        req.note,
    )


def write(
    tmp_path: Path,
    summary: RunSummary = SUMMARY,
    issued: list[Issued] | None = None,
    failed: list[Failed] | None = None,
    skipped: list[Skipped] | None = None,
    options: AuditOptions | None = None,
) -> Path:
    return write_audit(
        tmp_path / "out" / "a.xlsx",
        summary,
        issued or [],
        failed or [],
        skipped or [],
        options or AuditOptions(),
    )


def issued_sheet(book: Any) -> Worksheet:
    """The Issued sheet, whether titled "Issued" or "Issued (SIMULATED)"."""
    (name,) = [n for n in book.sheetnames if n.startswith("Issued")]
    sheet: Worksheet = book[name]
    return sheet


def values(sheet: Worksheet) -> list[list[Any]]:
    return [list(row) for row in sheet.iter_rows(values_only=True)]


def summary_rows(path: Path) -> list[tuple[Any, ...]]:
    return list(load_workbook(path)["Summary"].iter_rows(values_only=True))


def summary_items(path: Path) -> dict[Any, Any]:
    return {row[0]: row[1] for row in summary_rows(path)}


# --- 1. Starts and Expires in the pass time zone ----------------------------------------------


def test_starts_and_expires_in_the_pass_zone_with_utc_at_the_end(tmp_path: Path) -> None:
    """With pass.timezone Europe/London, Starts/Expires are London wall-clock times, labelled so,
    and the UTC values close the row."""
    path = write(
        tmp_path, replace(SUMMARY, timezone=LONDON), [issued(request(2, "ada@contoso.com"))]
    )
    assert values(issued_sheet(load_workbook(path))) == [
        [
            *PASS,
            "Starts (Europe/London)",
            "Expires (Europe/London)",
            "Lifetime (minutes)",
            "One-time",
            "Note",
            "Found by (sheet value)",
            *TECHNICAL,
            "Starts (UTC)",
            "Expires (UTC)",
        ],
        [
            "hires.xlsx",
            2,
            "ada@contoso.com",
            "Ada",
            "Tap-Value-1",
            datetime(2027, 7, 5, 8),
            datetime(2027, 7, 5, 16),
            480,
            "yes",
            "a note",
            None,
            "m-2",
            datetime(2027, 7, 1, 12),
            1,
            "req-2",
            datetime(2027, 7, 5, 7),
            datetime(2027, 7, 5, 15),
        ],
    ]
    cell = issued_sheet(load_workbook(path))["F2"]
    assert cell.is_date  # a real Excel datetime, not text


def test_in_utc_the_times_are_not_repeated(tmp_path: Path) -> None:
    """With pass.timezone UTC the pass columns are labelled (UTC) and no UTC copy follows."""
    path = write(tmp_path, SUMMARY, [issued(request(2, "ada@contoso.com"))])
    rows = values(issued_sheet(load_workbook(path)))
    assert (
        rows[0]
        == list(ISSUED_COLUMNS)
        == [
            *PASS,
            "Starts (UTC)",
            "Expires (UTC)",
            "Lifetime (minutes)",
            "One-time",
            "Note",
            "Found by (sheet value)",
            *TECHNICAL,
        ]
    )
    assert rows[1][5:7] == [datetime(2027, 7, 5, 7), datetime(2027, 7, 5, 15)]


def test_rebuilt_audit_uses_the_recorded_time_zone_and_simulated_mark(tmp_path: Path) -> None:
    """`report` of a killed run: times in the run's recorded pass.timezone, its extra columns,
    the name and title marked simulated as the run's meta says."""
    with Journal(tmp_path / "journal.db") as journal:
        journal.begin(
            "run-9",
            CREATED,
            "key",
            {
                "files": [["hires.xlsx", "ab" * 32, 1, None]],
                "settings": [["pass.timezone", LONDON], ["pass.lifetime_minutes", "480"]],
                "simulated": True,
            },
            tenant="t1 simulator",
            tenant_name=None,
            simulated=True,
        )
        journal.record("run-9", issued(request(2, "ada@contoso.com", ("Manager", "Grace"))))
        path, _, with_values = report(journal, "run-9", tmp_path / "audit", AuditOptions())
    assert path.name == "onboard-run-9-simulated.xlsx" and with_values
    book = load_workbook(path)
    assert book.sheetnames == ["Summary", "Issued (SIMULATED)", "Failed", "Skipped"]
    assert values(book["Issued (SIMULATED)"]) == [
        [*PASS, "Starts (Europe/London)", "Expires (Europe/London)", "Lifetime (minutes)",
         "One-time", "Note", "Found by (sheet value)", "Manager", *TECHNICAL, "Starts (UTC)",
         "Expires (UTC)"],
        ["hires.xlsx", 2, "ada@contoso.com", "Ada", "Tap-Value-1", datetime(2027, 7, 5, 8),
         datetime(2027, 7, 5, 16), 480, "yes", "a note", None, "Grace", "m-2",
         datetime(2027, 7, 1, 12), 1, "req-2", datetime(2027, 7, 5, 7), datetime(2027, 7, 5, 15)],
    ]  # fmt: skip
    assert summary_rows(path)[0] == (SIMULATED, None, None)


def test_recovered_run_without_the_new_meta_is_utc_and_real(tmp_path: Path) -> None:
    """A run recorded before the zone and the mark were kept: UTC columns, a plain name."""
    with Journal(tmp_path / "journal.db") as journal:
        journal.begin("run-8", CREATED, "key", {"files": [], "settings": []}, tenant="t1 root",
                      tenant_name=None, simulated=False)  # fmt: skip
        journal.record("run-8", issued(request(2, "ada@contoso.com")))
        (tmp_path / "config.yaml").write_text(
            f"graph:\n  endpoint: simulator\noutput:\n  dir: {tmp_path / 'audit'}\n"
        )
        config = load_config(tmp_path / "config.yaml")
        (run,) = recover_unfinished(journal, config, AuditOptions(), exclude=None)
    path = Path(str(run.audit_path))
    assert path.name == "onboard-run-8.xlsx"
    book = load_workbook(path)
    assert values(book["Issued"])[0] == list(ISSUED_COLUMNS)


# --- 2. The input sheet's other columns ---------------------------------------------------------


def test_reader_captures_the_other_columns_as_the_sheet_shows_them(tmp_path: Path) -> None:
    """Every column onboard does not use is kept as (header, text), dates as dates, blank
    headers skipped, an empty cell as ""."""
    book = Workbook()
    sheet = book.active
    sheet.append(
        ["UPN", "Manager", "Start Date", "Hired", None, "At", "Staff no", "Remote", "Grade"]
    )
    sheet.append(
        [
            "ada@contoso.com",
            "Grace",
            date(2027, 7, 5),
            date(2019, 10, 24),
            "lost",
            time(9, 30),
            1234.0,
            True,
            2.5,
        ]
    )
    sheet.append(
        [
            "bo@contoso.com",
            None,
            date(2027, 7, 5),
            datetime(2019, 10, 24, 9, 30),
            None,
            None,
            "007",
            False,
            None,
        ]
    )
    book.save(tmp_path / "hires.xlsx")
    now = datetime(2027, 7, 1, tzinfo=timezone.utc)
    result = read_input(tmp_path / "hires.xlsx", InputSettings(), PassSettings(), now=now)
    assert [r.extra for r in result.requests] == [
        (
            ("Manager", "Grace"),
            ("Hired", "2019-10-24"),
            ("At", "09:30"),
            ("Staff no", "1234"),
            ("Remote", "TRUE"),
            ("Grade", "2.5"),
        ),
        (
            ("Manager", ""),
            ("Hired", "2019-10-24 09:30"),
            ("At", ""),
            ("Staff no", "007"),
            ("Remote", "FALSE"),
            ("Grade", ""),
        ),
    ]


def test_reader_captures_the_other_columns_of_a_csv(tmp_path: Path) -> None:
    """A CSV's other columns are kept as written; a short row leaves its missing cells ""."""
    (tmp_path / "hires.csv").write_text(
        "Department,UPN,Start Date,Location\nFinance,ada@contoso.com,2027-07-05,Leeds\n"
        "HR,bo@contoso.com,2027-07-05\n",
        encoding="utf-8",
    )
    now = datetime(2027, 7, 1, tzinfo=timezone.utc)
    result = read_input(tmp_path / "hires.csv", InputSettings(), PassSettings(), now=now)
    assert [r.extra for r in result.requests] == [
        (("Department", "Finance"), ("Location", "Leeds")),
        (("Department", "HR"), ("Location", "")),
    ]


def test_journal_keeps_the_other_columns(tmp_path: Path) -> None:
    """The extra columns survive the journal; a record written before them reads as none."""
    outcome = issued(request(2, "ada@contoso.com", ("Manager", "Grace"), ("Dept", "")))
    record = to_record(outcome)
    back = from_record(record, None)
    assert isinstance(back, Issued) and back.request.extra == (("Manager", "Grace"), ("Dept", ""))
    del record["request"]["extra"]
    old = from_record(record, None)
    assert isinstance(old, Issued) and old.request.extra == ()


def test_an_old_journal_record_is_read_by_its_values_not_its_words() -> None:
    """A record from before reasons were values: a skip is held elsewhere by its flag alone,
    whatever its text says; a failure shows the label it was recorded with (a renamed one, its
    reason's label today)."""
    skip = to_record(Skipped(Origin("a.xlsx", 3), "ada@contoso.com", Reason.REPEATED, "x"))
    del skip["detail"]
    words = "kept: a pass this journal did not issue"
    for flag, held in ((False, False), (True, True)):
        old = from_record({**skip, "reason": words, "held_elsewhere": flag}, None)
        assert isinstance(old, Skipped)
        assert (old.held_elsewhere, old.detail) == (held, words)
    failed = to_record(Failed(Origin("a.xlsx", 4), "bo@contoso.com", Reason.REFUSED, "why"))
    del failed["label"]
    read = {
        recorded: from_record({**failed, "reason": recorded}, None)
        for recorded in ("Start refused", "Invalid Start Date", "Interrupted")
    }
    assert {k: (f.reason, f.shown) for k, f in read.items() if isinstance(f, Failed)} == {
        "Start refused": (Reason.START_IN_PAST, "Start in the past"),
        "Invalid Start Date": (Reason.REFUSED, "Invalid Start Date"),
        "Interrupted": (Reason.INTERRUPTED, "Interrupted"),
    }


def test_other_columns_after_the_pass_columns_union_in_order(tmp_path: Path) -> None:
    """Two files with different extra headers: their union, in order of first appearance
    (case aside), between the pass columns and the technical ones; a missing one left empty."""
    rows = [
        issued(
            request(
                2,
                "ada@contoso.com",
                ("Manager", "Grace"),
                ("Department", "Finance"),
                source="a.xlsx",
            )
        ),
        issued(
            request(
                2, "bo@contoso.com", ("department", "HR"), ("Location", "Leeds"), source="b.xlsx"
            )
        ),
    ]
    fail = Failed(Origin("a.xlsx", 3), "x@contoso.com", Reason.USER_NOT_FOUND, "no such user")
    book = load_workbook(write(tmp_path, SUMMARY, rows, [fail]))
    header, first, second = values(issued_sheet(book))
    assert header == [
        *PASS,
        "Starts (UTC)",
        "Expires (UTC)",
        "Lifetime (minutes)",
        "One-time",
        "Note",
        "Found by (sheet value)",
        "Manager",
        "Department",
        "Location",
        *TECHNICAL,
    ]
    assert first[11:14] == ["Grace", "Finance", None]
    assert second[11:14] == [None, "HR", "Leeds"]
    assert first[14:] == ["m-2", datetime(2027, 7, 1, 12), 1, "req-2"]
    assert values(book["Failed"])[0] == list(FAILED_COLUMNS)  # no extras there


def test_other_columns_never_hide_ours_or_each_other(tmp_path: Path) -> None:
    """A sheet's "Note" column and a repeated header each get a column of their own."""
    row = issued(request(2, "ada@contoso.com", ("Note", "desk 4"), ("Phone", "1"), ("Phone", "2")))
    header, values_row = values(issued_sheet(load_workbook(write(tmp_path, SUMMARY, [row]))))
    assert header[11:14] == ["Note (input)", "Phone", "Phone (2)"]
    assert values_row[9] == "a note" and values_row[11:14] == ["desk 4", "1", "2"]


def test_other_columns_are_never_formulas(tmp_path: Path) -> None:
    """A hostile header or cell from the input sheet lands as text, in the header too."""
    row = issued(
        request(
            2,
            "ada@contoso.com",
            ('=HYPERLINK("http://x")', "=cmd|'/c calc'!A1"),
            ("Manager", "#N/A"),
        )
    )
    sheet = issued_sheet(load_workbook(write(tmp_path, SUMMARY, [row])))
    assert [sheet["L1"].value, sheet["L2"].value, sheet["M2"].value] == [
        '=HYPERLINK("http://x")',
        "=cmd|'/c calc'!A1",
        "#N/A",
    ]
    for ref in ("L1", "L2", "M2"):
        assert sheet[ref].data_type == "s", ref
    assert sheet["L1"].quotePrefix and sheet["L2"].quotePrefix
    assert sheet["L1"].font.bold


def test_redacted_copy_keeps_the_other_columns(tmp_path: Path) -> None:
    """The pass-free copy has the extra columns too (only the pass is masked)."""
    row = issued(request(2, "ada@contoso.com", ("Manager", "Grace")))
    path = write(tmp_path, SUMMARY, [row], options=AuditOptions(redacted_copy=True))
    header, masked = values(issued_sheet(load_workbook(redacted_path(path))))
    assert (header[4], header[11], masked[4], masked[11]) == (
        "Temporary Access Pass",
        "Manager",
        "(not in this copy)",
        "Grace",
    )


# --- 4-6. The Summary ---------------------------------------------------------------------------


def test_summary_layout_real_cells_and_settings_by_section(tmp_path: Path) -> None:
    """Next steps first, then the counts, the run, the notes, the files and the settings
    grouped under a bold row per section; numbers and flags are real cells."""
    summary = replace(
        SUMMARY,
        settings=[
            ("config file", "config.yaml"),
            ("graph.endpoint", "https://graph"),
            ("graph.timeout_seconds", "30.5"),
            ("auth.client_id", "0123"),
            ("pass.lifetime_minutes", "480"),
            ("pass.usable_once", "True"),
            ("graph.max_retries", "5"),
            ("pass.note", ""),
        ],
        notes=[("Retries", 3), ("Effective rate", 12.5, "requests/s"), ("Resumed", "=no")],
    )
    path = write(tmp_path, summary, [issued(request(2, "ada@contoso.com"))])
    assert summary_rows(path) == [
        ("Item", "Value", "Detail"),
        (
            "Next steps",
            "Hand out the 1 pass on the Issued sheet. Then delete this workbook: it "
            "holds the passes.",
            None,
        ),
        ("Issued", 1, None),
        ("Failed", 0, None),
        ("Not sent", 0, "the run stopped before sending them (on the Failed sheet)"),
        ("Skipped", 0, None),
        ("Hold a pass this journal did not issue", 0, "on the Skipped sheet"),
        ("Rows read", 3, None),
        ("Run ID", "run-1", None),
        ("Status", "completed", None),
        ("Started (UTC)", datetime(2027, 7, 1, 12), None),
        ("Finished (UTC)", datetime(2027, 7, 1, 12), None),
        ("Tool version", "onboard 1.0", None),
        ("Retries", 3, None),
        ("Effective rate", 12.5, "requests/s"),
        ("Resumed", "=no", None),
        ("Input file", "hires.xlsx", f"SHA-256 {'ab' * 32}; 3 rows, sheet 'Sheet1'"),
        ("Settings", None, None),
        ("config file", "config.yaml", None),
        ("graph", None, None),
        ("graph.endpoint", "https://graph", None),
        ("graph.timeout_seconds", 30.5, None),
        ("graph.max_retries", 5, None),
        ("auth", None, None),
        ("auth.client_id", "0123", None),
        ("pass", None, None),
        ("pass.lifetime_minutes", 480, None),
        ("pass.usable_once", True, None),
        ("pass.note", None, None),
    ]
    sheet = load_workbook(path)["Summary"]
    headings = [row[0] for row in sheet.iter_rows() if row[0].font.bold]
    assert [c.value for c in headings] == ["Item", "Settings", "graph", "auth", "pass"]
    assert sheet["B16"].data_type == "s" and sheet["B16"].quotePrefix  # a note stays text


def test_not_sent_rows_are_counted_apart_from_failed(tmp_path: Path) -> None:
    """Rows never sent because the run stopped count as "Not sent", not "Failed", and are
    still listed on the Failed sheet."""
    failed = [
        not_sent(request(2, "ada@contoso.com")),
        not_sent(request(3, "bo@contoso.com"), "sign-in failed"),
        Failed(Origin("hires.xlsx", 4), "x@contoso.com", Reason.USER_NOT_FOUND, "no such user"),
    ]
    assert {f.reason for f in failed[:2]} == {Reason.NOT_SENT}
    path = write(tmp_path, replace(SUMMARY, status="stopped"), [], failed)
    items = summary_items(path)
    assert (items["Failed"], items["Not sent"]) == (1, 2)
    assert items["Next steps"] == (
        "Fix the 1 row on the Failed sheet and run the same command again. 2 rows were not "
        "sent (the run stopped): run the same command again."
    )
    assert [r[3] for r in values(load_workbook(path)["Failed"])[1:]] == [
        str(Reason.NOT_SENT),
        str(Reason.NOT_SENT),
        "User not found",
    ]


def test_passes_this_journal_did_not_issue_are_counted_apart(tmp_path: Path) -> None:
    """Users holding a pass no journal record explains: their own Summary line and next step,
    and a column saying so on the Skipped sheet."""
    skipped = [
        Skipped(Origin("hires.xlsx", 2), "ada@contoso.com", Reason.ALREADY_ISSUED, "already issued",
                "run-0", CREATED),
        Skipped(
            Origin("hires.xlsx", 3),
            "bo@contoso.com",
            Reason.HELD_ELSEWHERE,
            "holds a pass created 2027-07-01 that this journal did not issue",
        ),
    ]
    path = write(tmp_path, SUMMARY, [], [], skipped)
    items = summary_items(path)
    assert (items["Skipped"], items["Hold a pass this journal did not issue"]) == (1, 1)
    assert items["Next steps"] == (
        "1 user holds a pass this journal did not issue (Skipped sheet): to replace such a "
        "pass, run again with --reissue-user or pass.existing: replace."
    )
    assert values(load_workbook(path)["Skipped"]) == [
        list(SKIPPED_COLUMNS),
        [
            "hires.xlsx",
            2,
            "ada@contoso.com",
            "already issued",
            "run-0",
            datetime(2027, 7, 1, 12),
            "no",
        ],
        [
            "hires.xlsx",
            3,
            "bo@contoso.com",
            "holds a pass created 2027-07-01 that this journal did not issue",
            None,
            None,
            "yes",
        ],
    ]
    assert SKIPPED_COLUMNS[-1] == "Holds a pass this journal did not issue"


def test_next_steps_when_there_is_nothing_to_do(tmp_path: Path) -> None:
    """A run that issued nothing and failed nothing says there is nothing to do."""
    skipped = [Skipped(Origin("hires.xlsx", 2), "", Reason.BLANK_ROW, "blank row")]
    assert summary_items(write(tmp_path, SUMMARY, [], [], skipped))["Next steps"] == (
        "Nothing to do: no pass to hand out and no row to fix."
    )


def test_next_steps_of_the_redacted_copy_point_to_the_full_workbook(tmp_path: Path) -> None:
    """The pass-free copy does not tell its reader to hand out passes it does not hold."""
    path = write(
        tmp_path,
        SUMMARY,
        [issued(request(2, "ada@contoso.com"))],
        options=AuditOptions(redacted_copy=True),
    )
    assert summary_items(redacted_path(path))["Next steps"] == (
        "This workbook does not hold the pass values: hand out the 1 pass from the run's full "
        "audit workbook."
    )


# --- 7. Simulated runs ----------------------------------------------------------------------


def test_audit_path_marks_simulated_runs(tmp_path: Path) -> None:
    """A simulated run's workbook name ends -simulated.xlsx; a real run's does not."""
    assert audit_path(tmp_path, "r1", simulated=True) == tmp_path / "onboard-r1-simulated.xlsx"
    assert audit_path(tmp_path, "r1", simulated=False) == tmp_path / "onboard-r1.xlsx"


def test_simulated_run_is_marked_in_the_summary_and_the_issued_title(tmp_path: Path) -> None:
    """The first Summary row says SIMULATED in bold; the Issued sheet (and its redacted copy's)
    is titled "Issued (SIMULATED)"; the next steps hand nothing out."""
    path = write(
        tmp_path,
        replace(SUMMARY, simulated=True),
        [issued(request(2, "a@contoso.com"))],
        options=AuditOptions(redacted_copy=True),
    )
    for workbook in (path, redacted_path(path)):
        book = load_workbook(workbook)
        assert book.sheetnames == ["Summary", "Issued (SIMULATED)", "Failed", "Skipped"]
        sheet = book["Summary"]
        assert (sheet["A1"].value, sheet["A1"].font.bold) == (SIMULATED, True)
        assert [c.value for c in sheet[2]] == ["Item", "Value", "Detail"]
        assert sheet.freeze_panes == "A3"
    assert summary_items(path)["Next steps"] == (
        "Nothing to hand out: the 1 pass came from the simulator, not a tenant."
    )


def test_real_run_has_no_simulated_mark(tmp_path: Path) -> None:
    """A real run: the header in row 1, no SIMULATED anywhere, the sheet titled "Issued"."""
    book = load_workbook(write(tmp_path, SUMMARY, [issued(request(2, "ada@contoso.com"))]))
    assert book.sheetnames == ["Summary", "Issued", "Failed", "Skipped"]
    assert [c.value for c in book["Summary"][1]] == ["Item", "Value", "Detail"]
    assert SIMULATED not in {c.value for row in book["Summary"].iter_rows() for c in row}
