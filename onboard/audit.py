"""The audit workbook: every pass issued and every row that failed or was skipped, with why.

Written with openpyxl's write-only mode (constant memory however many rows) and renamed into
place whole: a reader never sees half a workbook, and only the owner can read it (mode 0600,
in a folder created 0700). With a password (output.password_env) the workbook is encrypted
with standard Office encryption (msoffcrypto-tool, ECMA-376 agile: AES-256) and is built in
memory, so its unencrypted bytes never touch the disk. A redacted copy (output.redacted_copy)
is the same workbook with the pass column masked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msoffcrypto
from msoffcrypto.format.ooxml import OOXMLFile
from openpyxl import Workbook, load_workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from openpyxl.worksheet._writer import WorksheetWriter
from openpyxl.writer.excel import ExcelWriter

from .config import OutputSettings
from .files import private_dir
from .outcomes import Failed, Issued, Origin, PassRequest, Skipped

UTC_ZONE = "UTC"
# The person and the pass first: what whoever hands the passes out reads. The pass's start and
# end are shown in the pass time zone (pass.timezone); `issued_columns` labels them with it.
PASS_COLUMNS = (
    "Source file",
    "Row",
    "User",
    "Display name",
    "Temporary Access Pass",
    "Starts",
    "Expires",
    "Lifetime (minutes)",
    "One-time",
    "Note",
    "Found by (sheet value)",  # input.match_by mail / employeeId: what the sheet named them by
)
# With delivery by mail (delivery.method, `onboard deliver`), after the pass columns: who the
# pass was mailed to, when (UTC), and how that went (sent, failed: why, unknown, not sent).
DELIVERY_COLUMNS = ("Delivered to", "Delivered at", "Delivery")
# Then the input sheet's own other columns, then these, for support and for checking.
TECHNICAL_COLUMNS = ("Method ID", "Created (UTC)", "Attempts", "Request ID")
UTC_COLUMNS = ("Starts (UTC)", "Expires (UTC)")  # only when the pass time zone is not UTC
FAILED_COLUMNS = (
    "Source file",
    "Row",
    "User",
    "Reason",
    "Detail",
    "HTTP status",
    "Graph error code",
    "Attempts",
    "Request ID",
    "Column",
    "Method ID",  # a pass Graph made but nobody can use (outside the policy's groups)
)
HELD_ELSEWHERE = "Holds a pass this journal did not issue"  # the Skipped sheet's column
SUMMARY_HELD_ELSEWHERE = "Hold a pass this journal did not issue"  # the Summary's count
SETTINGS_HEADING = "Settings"  # the Summary's heading for settings outside any section
SKIPPED_COLUMNS = (
    "Source file",
    "Row",
    "User",
    "Reason",
    "Previous run",
    "Issued at",
    HELD_ELSEWHERE,
)
PROBLEM_COLUMNS = ("Source file", "Row", "Column", "User", "Kind", "Problem", "What to do")
SUMMARY_COLUMNS = ("Item", "Value", "Detail")
REDACTED = "(not in this copy)"
SIMULATED = "SIMULATED: no pass was issued in a tenant"
ISSUED_SHEET = "Issued"
SIMULATED_SUFFIX = "-simulated"
# What XML cannot hold: control characters (openpyxl refuses them) and lone surrogates (from a
# file name that is not UTF-8; openpyxl would write a broken character reference).
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Text starting with these would be read as a formula (or DDE) by a spreadsheet program.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_WIDTHS = {
    "Source file": 22,
    "Row": 6,
    "User": 34,
    "Display name": 24,
    "Temporary Access Pass": 24,
    "Starts (UTC)": 20,
    "Expires (UTC)": 20,
    "Created (UTC)": 20,
    "Lifetime (minutes)": 10,
    "One-time": 9,
    "Method ID": 38,
    "Attempts": 9,
    "Request ID": 38,
    "Note": 50,
    "Reason": 30,
    "Detail": 80,
    "HTTP status": 8,
    "Graph error code": 22,
    "Column": 16,
    "Item": 40,
    "Value": 66,
    "Previous run": 22,
    "Issued at": 20,
    HELD_ELSEWHERE: 20,
    "Delivered to": 30,
    "Delivered at": 20,
    "Delivery": 40,
}
# A column not in _WIDTHS (the sheet's own, the time zone's) is as wide as its header, within these.
WIDTH_RANGE = (16, 40)


@dataclass(frozen=True, slots=True)
class FileSummary:
    path: str
    sha256: str
    rows: int
    sheet: str | None


# A Summary figure: a number, a flag or a time is written as such, text as text.
NoteValue = str | int | float | bool | datetime | None
# (item, value) or (item, value, detail): ("Effective rate", 12.5, "requests/s").
Note = tuple[str, NoteValue] | tuple[str, NoteValue, str]


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    started: datetime
    finished: datetime
    version: str
    files: Sequence[FileSummary]
    # (name, value), names "section.key" (config.public_settings); a value given as text that
    # is a whole number, a decimal or True/False is written as a number or a flag.
    settings: Sequence[tuple[str, str | int | float | bool]]
    status: str = "completed"
    notes: Sequence[Note] = field(default_factory=tuple)
    timezone: str = UTC_ZONE  # pass.timezone: the Issued sheet shows Starts/Expires in it
    simulated: bool = False  # issued by the simulator: marked in the file name and the sheets
    # False when the Issued sheet cannot hold the pass values (a redacted copy, or a workbook
    # rebuilt after the run's own audit took them): the next steps then say where they are.
    pass_values: bool = True


@dataclass(frozen=True, slots=True)
class Delivered:
    """A pass's delivery as the Issued sheet shows it: the address it was mailed to (empty:
    nobody), when it was sent (UTC), and how that went, for people ("sent", "failed: ...")."""

    to: str
    at: datetime | None
    state: str


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """How the workbook is protected: the password that encrypts it (None: not encrypted), and
    whether a pass-free copy is written too. The repr never shows the password."""

    password: str | None = field(default=None, repr=False)
    redacted_copy: bool = False


def audit_options(output: OutputSettings, env: Mapping[str, str]) -> AuditOptions:
    """Read output.password (raising ConfigError if it is configured but missing)."""
    return AuditOptions(output.password.read(env), output.redacted_copy)


def audit_path(directory: Path, run_id: str, *, simulated: bool) -> Path:
    """Where a run's audit workbook goes: a simulated run's name says so."""
    return directory / f"onboard-{run_id}{SIMULATED_SUFFIX if simulated else ''}.xlsx"


def redacted_path(path: Path) -> Path:
    """Where the pass-free copy of the workbook at `path` goes."""
    return path.with_name(f"{path.stem}-redacted{path.suffix}")


def write_audit(
    path: Path,
    summary: RunSummary,
    issued: Sequence[Issued],
    failed: Sequence[Failed],
    skipped: Sequence[Skipped],
    options: AuditOptions = AuditOptions(),
    *,
    deliveries: Mapping[Origin, Delivered] | None = None,
) -> Path:
    """Write the workbook atomically at `path` (mode 0600), encrypted when options has a
    password, and with `redacted_copy` also its pass-free copy at `redacted_path(path)`.
    `deliveries` (delivery by mail was on): the Issued sheet's delivery columns.

    Unencrypted, openpyxl's per-sheet scratch files go to an owner-only folder beside the
    workbook (`.<name>.partial`), removed once it is in place (one left by a killed write is
    cleared by the next write). Encrypted, nothing but the encrypted bytes is written.
    """
    private_dir(path.parent)
    _write(path, summary, issued, failed, skipped, password=options.password, masked=False,
           deliveries=deliveries)  # fmt: skip
    if options.redacted_copy:
        _write(redacted_path(path), summary, issued, failed, skipped, password=None, masked=True,
               deliveries=deliveries)  # fmt: skip
    return path


def _write(
    path: Path,
    summary: RunSummary,
    issued: Sequence[Issued],
    failed: Sequence[Failed],
    skipped: Sequence[Skipped],
    *,
    password: str | None,
    masked: bool,
    deliveries: Mapping[Origin, Delivered] | None = None,
) -> None:
    with _scratch(path) as scratch:
        in_memory = password is not None
        workbook = Workbook(write_only=True)
        sheets = _Sheets(workbook, None if in_memory else scratch)
        if masked:
            summary = replace(
                summary, notes=(*summary.notes, ("Pass values", REDACTED)), pass_values=False
            )
        _summary_sheet(sheets, summary, issued, failed, skipped)
        _issued_sheet(sheets, summary, issued, masked=masked, deliveries=deliveries)
        sheets.add(
            "Failed",
            FAILED_COLUMNS,
            (
                (
                    f.origin.source,
                    f.origin.row,
                    _Text(f.user),
                    f.shown,
                    _Text(f.detail),
                    f.http_status,
                    f.graph_code,
                    f.attempts or None,
                    f.request_id,
                    _Text(f.column),
                    f.method_id,
                )
                for f in sorted(failed, key=lambda f: (f.origin.source, f.origin.row))
            ),
        )
        sheets.add(
            "Skipped",
            SKIPPED_COLUMNS,
            (
                (
                    s.origin.source,
                    s.origin.row,
                    _Text(s.user),
                    _Text(s.detail),
                    s.previous_run,
                    s.issued_at,
                    _yes_no(s.held_elsewhere),
                )
                for s in sorted(skipped, key=lambda s: (s.origin.source, s.origin.row))
            ),
        )
        if password is None:
            _save_atomically(path, scratch, lambda handle: _save(workbook, handle))
        else:
            plain = io.BytesIO()
            _save(workbook, plain)
            sealed = io.BytesIO()
            OOXMLFile(plain).encrypt(password, sealed)
            plain.seek(0)
            plain.truncate()
            _save_atomically(path, scratch, lambda handle: handle.write(sealed.getbuffer()))


def issued_title(*, simulated: bool) -> str:
    """The Issued sheet's title: a simulated run's says so."""
    return f"{ISSUED_SHEET} (SIMULATED)" if simulated else ISSUED_SHEET


def issued_columns(
    timezone: str = UTC_ZONE, extra: Sequence[str] = (), *, delivery: bool = False
) -> tuple[str, ...]:
    """The Issued sheet's header: the pass columns (Starts and Expires labelled with the pass
    time zone), the delivery columns (`delivery`), the input sheet's other columns (`extra`),
    then the technical columns, and the UTC start and end last, unless the pass time zone is
    UTC (the columns would repeat)."""
    labelled = tuple(
        f"{name} ({timezone})" if name in ("Starts", "Expires") else name for name in PASS_COLUMNS
    )
    mailed = DELIVERY_COLUMNS if delivery else ()
    tail = () if timezone == UTC_ZONE else UTC_COLUMNS
    return (*labelled, *mailed, *extra, *TECHNICAL_COLUMNS, *tail)


# The Issued header of a run whose pass time zone is UTC, from a sheet with no other columns.
ISSUED_COLUMNS = issued_columns()


def _issued_sheet(
    sheets: _Sheets,
    summary: RunSummary,
    issued: Sequence[Issued],
    *,
    masked: bool,
    deliveries: Mapping[Origin, Delivered] | None = None,
) -> None:
    zone, name = _zone(summary.timezone)
    rows = sorted(issued, key=lambda i: (i.origin.source, i.origin.row))
    mailed = deliveries is not None
    extra = _ExtraColumns(rows, taken=issued_columns(name, delivery=mailed))
    in_utc = name == UTC_ZONE

    def delivery(i: Issued) -> tuple[Any, ...]:
        if deliveries is None:
            return ()
        said = deliveries.get(i.origin)
        if said is None:
            return (None, None, None)
        return (_Text(said.to) if said.to else None, said.at, _Text(said.state))

    def row(i: Issued) -> tuple[Any, ...]:
        pass_part = (
            i.origin.source,
            i.origin.row,
            _Text(i.request.user),
            _Text(i.request.display_name),
            REDACTED if masked else _Text(i.temporary_access_pass),
            _local(i.starts, zone),
            _local(i.expires, zone),
            i.lifetime_minutes,
            _yes_no(i.usable_once),
            i.note,
            _Text(i.request.sheet_value),
        )
        technical = (i.method_id, i.created, i.attempts, i.request_id)
        utc = () if in_utc else (i.starts, i.expires)
        return (*pass_part, *delivery(i), *extra.values(i.request), *technical, *utc)

    sheets.add(
        issued_title(simulated=summary.simulated),
        issued_columns(name, extra.headers, delivery=mailed),
        (row(i) for i in rows),
    )


def _zone(name: str) -> tuple[ZoneInfo, str]:
    """The pass time zone, and its name for the headers: UTC if the name is not a zone this
    machine knows (a journal written elsewhere), so a header never names a zone not used."""
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(UTC_ZONE), UTC_ZONE


def _local(moment: datetime, zone: ZoneInfo) -> datetime:
    # Excel has no time zones: the wall-clock time in the zone the header names.
    return moment.astimezone(zone).replace(tzinfo=None)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


class _ExtraColumns:
    """The input sheets' other columns (PassRequest.extra) as Issued columns: the union of
    every row's headers in order of first appearance, matched without regard to case; a
    header a sheet repeats becomes "Header (2)", and one that is also a column of ours gets
    " (input)", so no column hides another."""

    def __init__(self, rows: Sequence[Issued], *, taken: Iterable[str]) -> None:
        self.index: dict[tuple[str, int], int] = {}
        labels: list[str] = []
        ours = {name.casefold() for name in taken}
        for issued in rows:
            for key, header in self._keyed(issued.request):
                if key in self.index:
                    continue
                label = header if key[1] == 0 else f"{header} ({key[1] + 1})"
                if label.casefold() in ours:
                    label = f"{label} (input)"
                self.index[key] = len(labels)
                labels.append(label)
        self.headers = tuple(labels)

    @staticmethod
    def _keyed(request: PassRequest) -> Iterator[tuple[tuple[str, int], str]]:
        seen: dict[str, int] = {}
        for header, _ in request.extra:
            folded = header.casefold()
            n = seen.get(folded, 0)
            seen[folded] = n + 1
            yield (folded, n), header

    def values(self, request: PassRequest) -> list[_Text | None]:
        cells: list[_Text | None] = [None] * len(self.headers)
        if request.extra:
            for (key, _), (_, value) in zip(self._keyed(request), request.extra, strict=True):
                cells[self.index[key]] = _Text(value)
        return cells


def write_problems(path: Path, rows: Sequence[Failed | Skipped]) -> Path:
    """`onboard validate`'s workbook: one row per problem (a row that would fail) and per row
    that would be skipped, with what to do. It holds no pass; written owner-only like the audit."""
    private_dir(path.parent)
    with _scratch(path) as scratch:
        workbook = Workbook(write_only=True)
        _Sheets(workbook, scratch).add(
            "Problems",
            PROBLEM_COLUMNS,
            (
                (
                    o.origin.source,
                    o.origin.row or None,
                    _Text(o.column) if isinstance(o, Failed) else None,
                    _Text(o.user),
                    "problem" if isinstance(o, Failed) else "skipped",
                    _Text(o.shown if isinstance(o, Failed) else o.detail),
                    _Text(o.detail) if isinstance(o, Failed) else None,
                )
                for o in rows
            ),
        )
        _save_atomically(path, scratch, lambda handle: _save(workbook, handle))
    return path


def write_table(
    path: Path,
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    banner: str | None = None,
) -> Path:
    """A one-sheet workbook that holds no pass (`onboard status`, `onboard revoke`): written
    whole and owner-only, as the audit is; text never read as a formula; `banner` (bold) above
    the header. Times are written in UTC, as their headers must say."""
    private_dir(path.parent)
    with _scratch(path) as scratch:
        workbook = Workbook(write_only=True)
        _Sheets(workbook, scratch).add(title, columns, rows, banner=banner)
        _save_atomically(path, scratch, lambda handle: _save(workbook, handle))
    return path


@contextlib.contextmanager
def _scratch(path: Path) -> Iterator[Path]:
    """An owner-only folder beside `path` for the write's temporary files (`.<name>.partial`,
    one left by a killed write cleared first), removed afterwards."""
    scratch = path.parent / f".{path.stem}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _SheetWriter(WorksheetWriter):  # type: ignore[misc]
    """openpyxl's sheet writer, told where to put the sheet's XML: a file in the owner-only
    scratch folder, or memory (for an encrypted workbook). openpyxl's own default is a file in
    the process-wide temporary folder."""

    def cleanup(self) -> None:
        if isinstance(self.out, io.BytesIO):
            self.out.close()
        else:
            os.remove(self.out)


class _Archive(zipfile.ZipFile):
    """The workbook's zip, taking a sheet held in memory as well as one in a file."""

    def write(self, filename: Any, arcname: Any = None, *args: Any, **kwargs: Any) -> None:
        if isinstance(filename, io.BytesIO):
            self.writestr(arcname, filename.getbuffer())
        else:
            super().write(filename, arcname, *args, **kwargs)


def _save(workbook: Workbook, handle: IO[bytes]) -> None:
    with _Archive(handle, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        ExcelWriter(workbook, archive).write_data()


class _Sheets:
    """Adds write-only sheets whose XML goes to `scratch` (None: memory)."""

    def __init__(self, workbook: Workbook, scratch: Path | None) -> None:
        self.workbook = workbook
        self.scratch = scratch

    def add(
        self,
        title: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        banner: str | None = None,
    ) -> None:
        """A sheet: `banner` (bold) in row 1 if given, the header below it, then the rows."""
        sheet: WriteOnlyWorksheet = self.workbook.create_sheet(title)
        for index, name in enumerate(columns, start=1):
            sheet.column_dimensions[get_column_letter(index)].width = _width(name)
        header_row = 1 if banner is None else 2
        sheet.freeze_panes = f"A{header_row + 1}"  # the banner stays in sight too
        if self.scratch is None:
            out: Any = io.BytesIO()
        else:
            fd, out = tempfile.mkstemp(prefix="sheet-", suffix=".xml", dir=self.scratch)
            os.close(fd)
        sheet._writer = _SheetWriter(sheet, out)
        sheet._writer.write_top()  # what openpyxl does at the first append, with our `out`
        if banner is not None:
            sheet.append([_cell(sheet, _Heading(banner))])
        _fill(sheet, columns, rows, header_row)


def _width(column: str) -> int:
    low, high = WIDTH_RANGE
    return _WIDTHS.get(column, max(low, min(high, len(column) + 2)))


class _Text(str):
    """A value that must land in the workbook as text, never as a formula."""

    __slots__ = ()

    def __new__(cls, value: object) -> _Text:
        return super().__new__(cls, "" if value is None else str(value))


class _Heading(_Text):
    """Text in bold: the Summary's banner and its section rows, and every header cell."""

    __slots__ = ()


def _summary_sheet(
    sheets: _Sheets,
    s: RunSummary,
    issued: Sequence[Issued],
    failed: Sequence[Failed],
    skipped: Sequence[Skipped],
) -> None:
    counts = _Counts.of(issued, failed, skipped)
    rows: list[tuple[Any, ...]] = [
        ("Next steps", _Text(next_steps(s, counts)), None),
        ("Issued", counts.issued, None),
        ("Failed", counts.failed, None),
        ("Not sent", counts.not_sent, "the run stopped before sending them (on the Failed sheet)"),
        ("Skipped", counts.skipped, None),
        (SUMMARY_HELD_ELSEWHERE, counts.held_elsewhere, "on the Skipped sheet"),
        ("Rows read", sum(f.rows for f in s.files), None),
        ("Run ID", s.run_id, None),
        ("Status", s.status, None),
        ("Started (UTC)", s.started, None),
        ("Finished (UTC)", s.finished, None),
        ("Tool version", f"onboard {s.version}", None),
    ]
    for name, value, *unit in s.notes:
        rows.append((name, _Text(value) if isinstance(value, str) else value, *map(_Text, unit)))
    for f in s.files:
        detail = f"{f.rows} rows" + (f", sheet '{f.sheet}'" if f.sheet else "")
        rows.append(("Input file", _Text(f.path), _Text(f"SHA-256 {f.sha256}; {detail}")))
    rows.extend(_settings_rows(s.settings))
    sheets.add(
        "Summary", SUMMARY_COLUMNS, rows, banner=_Heading(SIMULATED) if s.simulated else None
    )


@dataclass(frozen=True, slots=True)
class _Counts:
    """The Summary's counts: Failed excludes the rows never sent, Skipped the users holding a
    pass no journal record explains; each has its own line."""

    issued: int
    failed: int
    not_sent: int
    skipped: int
    held_elsewhere: int

    @classmethod
    def of(
        cls, issued: Sequence[Issued], failed: Sequence[Failed], skipped: Sequence[Skipped]
    ) -> _Counts:
        not_sent = sum(f.not_sent for f in failed)
        held = sum(s.held_elsewhere for s in skipped)
        return cls(len(issued), len(failed) - not_sent, not_sent, len(skipped) - held, held)


def next_steps(s: RunSummary, counts: _Counts) -> str:
    """What the admin does with this run, most urgent first, in one line."""
    steps: list[str] = []
    passes = _count(counts.issued, "pass", "passes")
    if counts.issued and s.simulated:
        steps.append(f"Nothing to hand out: the {passes} came from the simulator, not a tenant.")
    elif counts.issued and s.pass_values:
        steps.append(f"Hand out the {passes} on the Issued sheet.")
    elif counts.issued:
        steps.append(
            f"This workbook does not hold the pass values: hand out the {passes} from the run's "
            "full audit workbook."
        )
    if counts.held_elsewhere:
        steps.append(
            f"{_count(counts.held_elsewhere, 'user holds', 'users hold')} a pass this journal did "
            "not issue (Skipped sheet): to replace such a pass, run again with --reissue-user "
            "or pass.existing: replace."
        )
    if counts.failed:
        steps.append(
            f"Fix the {_count(counts.failed, 'row', 'rows')} on the Failed sheet and run the same "
            "command again."
        )
    if counts.not_sent:
        were = "was" if counts.not_sent == 1 else "were"
        steps.append(
            f"{_count(counts.not_sent, 'row', 'rows')} {were} not sent (the run stopped): run the "
            "same command again."
        )
    if counts.issued and s.pass_values and not s.simulated:
        steps.append("Then delete this workbook: it holds the passes.")
    return " ".join(steps) or "Nothing to do: no pass to hand out and no row to fix."


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _settings_rows(
    settings: Sequence[tuple[str, str | int | float | bool]],
) -> list[tuple[Any, ...]]:
    """The settings grouped by section ("graph", "pass" ...: the part of the name before the
    dot), a bold row naming each, in the order given; names without a section come first."""
    sections: dict[str, list[tuple[Any, ...]]] = {SETTINGS_HEADING: []}
    for name, value in settings:
        section = name.partition(".")[0] if "." in name else SETTINGS_HEADING
        sections.setdefault(section, []).append((_Text(name), _typed(value), None))
    rows: list[tuple[Any, ...]] = []
    for section, members in sections.items():
        if members:
            rows.append((_Heading(section), None, None))
            rows.extend(members)
    return rows


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")  # no leading zero: "007" is an id, not a number
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_FLAGS = {"True": True, "False": False}  # what str() makes of a bool


def _typed(value: str | int | float | bool) -> Any:
    """A setting as its cell: numbers and flags as such (public_settings gives them as str())."""
    if not isinstance(value, str):
        return value
    if value in _FLAGS:
        return _FLAGS[value]
    if _INTEGER.fullmatch(value):
        return int(value)
    if _DECIMAL.fullmatch(value):
        return float(value)
    return _Text(value)


def _fill(
    sheet: WriteOnlyWorksheet,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    header_row: int = 1,
) -> None:
    sheet.append([_cell(sheet, _Heading(name)) for name in columns])
    count = 0
    for row in rows:
        sheet.append([_cell(sheet, value) for value in row])
        count += 1
    last = get_column_letter(len(columns))
    sheet.auto_filter.ref = f"A{header_row}:{last}{header_row + count}"


_BOLD = Font(bold=True)


def _cell(sheet: WriteOnlyWorksheet, value: Any) -> Any:
    # Plain values where openpyxl stores them right by itself (much faster than a styled
    # cell each: it matters at 100,000 rows); a cell of its own only where it must be forced.
    if isinstance(value, datetime):
        # Excel has no time zones: an aware time is written in UTC (as its header says); a
        # naive one is already the wall-clock time its header names. openpyxl gives datetimes
        # its own date-and-time number format.
        return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    if not isinstance(value, str):
        return value
    # openpyxl refuses control characters: show them escaped rather than fail the whole write.
    text = _ILLEGAL.sub(_escape, value)
    risky = text.startswith(FORMULA_PREFIXES) or text in ERROR_CODES
    heading = isinstance(value, _Heading)
    if not (risky or heading):
        return text or None
    cell = WriteOnlyCell(sheet, value=text)
    if heading:
        cell.font = _BOLD
    if risky:
        cell.data_type = (
            "s"  # openpyxl would otherwise store "=..." as a formula, "#N/A" as an error
        )
        if text.startswith(FORMULA_PREFIXES):
            cell.quotePrefix = True  # Excel keeps it text when the cell is edited
    return cell


def _escape(match: re.Match[str]) -> str:
    # A lone surrogate is a byte of a file name that is not UTF-8 (surrogateescape).
    return "".join(
        f"\\x{ord(c) & 0xFF:02x}" if ord(c) < 0xE000 else f"\\u{ord(c):04x}" for c in match.group(0)
    )


def _save_atomically(path: Path, scratch: Path, save: Any) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=scratch)
    temp = Path(temp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            save(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class AuditedPass:
    """A pass as an audit workbook's Issued sheet records it (the value included)."""

    source: str
    row: int
    user: str
    value: str = field(repr=False)
    method_id: str
    starts: datetime | None  # UTC
    expires: datetime | None  # UTC
    display_name: str | None = None
    usable_once: bool | None = None  # None: the sheet does not say
    # Every other cell of the row by its header (the input sheet's own columns among them),
    # as text; empty cells left out.
    cells: Mapping[str, str] = field(default_factory=dict, repr=False)


def _plain_bytes(path: Path, password: str | None) -> bytes:
    """The workbook's bytes, decrypted with `password` when it is encrypted."""
    data = path.read_bytes()
    if password is not None and not data.startswith(b"PK"):
        office = msoffcrypto.OfficeFile(io.BytesIO(data))
        office.load_key(password=password)
        plain = io.BytesIO()
        office.decrypt(plain)
        data = plain.getvalue()
    return data


def read_issued(path: Path, password: str | None = None) -> list[AuditedPass]:
    """The passes an audit workbook onboard wrote holds (decrypted with `password` when it is
    encrypted). Raises OSError or ValueError when it cannot be read as one."""
    data = _plain_bytes(path, password)
    book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sheet = next(ws for ws in book.worksheets if ws.title.split(" (")[0] == ISSUED_SHEET)
        rows = sheet.iter_rows(values_only=True)
        header = [str(h) if h is not None else "" for h in next(rows, ())]
        found = []
        for values in rows:
            cell = dict(zip(header, values, strict=False))
            value, method = cell.get("Temporary Access Pass"), cell.get("Method ID")
            if not isinstance(value, str) or not isinstance(method, str):
                continue
            name, once = cell.get("Display name"), cell.get("One-time")
            found.append(
                AuditedPass(
                    str(cell.get("Source file") or ""),
                    int(cell.get("Row") or 0),
                    str(cell.get("User") or ""),
                    value,
                    method,
                    _utc(cell.get("Starts (UTC)")),
                    _utc(cell.get("Expires (UTC)")),
                    str(name) if name else None,
                    {"yes": True, "no": False}.get(str(once)) if once is not None else None,
                    {h: str(v) for h, v in cell.items() if h and v not in (None, "")},
                )
            )
        return found
    except StopIteration:
        raise ValueError(f"{path} has no Issued sheet") from None
    finally:
        book.close()


def _utc(value: object) -> datetime | None:
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) else None


def free_path(path: Path) -> Path:
    """`path`, or, when a workbook is already there, the same name with -2, -3...: an audit
    is evidence, never written over (a resumed run whose first workbook was written when the
    journal failed keeps both)."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def mark_delivered(
    path: Path,
    deliveries: Mapping[tuple[str, int], Delivered],
    notes: Sequence[tuple[str, NoteValue]],
    password: str | None = None,
) -> Path:
    """`onboard deliver`: a run's own audit workbook, its Issued sheet's delivery columns
    filled in (added when the run did not deliver) for the rows in `deliveries` (by source
    file and row), and `notes` (item, value) set on its Summary. Written whole and in place,
    atomically, encrypted again with `password`: the same evidence, with what became of the
    messages. Raises OSError or ValueError when it cannot be read as an audit workbook."""
    book = load_workbook(io.BytesIO(_plain_bytes(path, password)))
    try:
        sheet = next(ws for ws in book.worksheets if ws.title.split(" (")[0] == ISSUED_SHEET)
    except StopIteration:
        raise ValueError(f"{path} has no Issued sheet") from None
    header = [str(c.value) if c.value is not None else "" for c in sheet[1]]
    where = {}
    for name in DELIVERY_COLUMNS:
        if name not in header:
            header.append(name)
            _put(sheet.cell(1, len(header)), _Heading(name))
            sheet.cell(1, len(header)).font = _BOLD
        where[name] = header.index(name) + 1
    source, row = header.index("Source file") + 1, header.index("Row") + 1
    for number in range(2, sheet.max_row + 1):
        key = (str(sheet.cell(number, source).value), sheet.cell(number, row).value)
        said = deliveries.get(key)
        if said is None:
            continue
        _put(sheet.cell(number, where["Delivered to"]), said.to or None)
        at = said.at.astimezone(UTC).replace(tzinfo=None) if said.at else None
        sheet.cell(number, where["Delivered at"]).value = at
        _put(sheet.cell(number, where["Delivery"]), said.state)
    summary = book["Summary"]
    items = {str(summary.cell(n, 1).value): n for n in range(1, summary.max_row + 1)}
    for item, value in notes:
        number = items.get(item) or summary.max_row + 1
        _put(summary.cell(number, 1), item)
        summary.cell(number, 2).value = value if not isinstance(value, str) else None
        if isinstance(value, str):
            _put(summary.cell(number, 2), value)
    plain = io.BytesIO()
    book.save(plain)
    data = plain.getvalue()
    if password is not None:
        sealed = io.BytesIO()
        OOXMLFile(io.BytesIO(data)).encrypt(password, sealed)
        data = sealed.getvalue()
    with _scratch(path) as scratch:
        _save_atomically(path, scratch, lambda handle: handle.write(data))
    return path


def _put(cell: Any, text: str | None) -> None:
    """Text into a cell of a loaded workbook, kept text: never read as a formula."""
    if text is None:
        cell.value = None
        return
    value = _ILLEGAL.sub(_escape, text)
    cell.value = value
    if value.startswith(FORMULA_PREFIXES) or value in ERROR_CODES:
        cell.data_type = "s"
        cell.quotePrefix = True
