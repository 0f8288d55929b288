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

from msoffcrypto.format.ooxml import OOXMLFile
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from openpyxl.worksheet._writer import WorksheetWriter
from openpyxl.writer.excel import ExcelWriter

from .config import OutputSettings
from .files import private_dir
from .outcomes import Failed, Issued, Skipped

ISSUED_COLUMNS = (
    "Source file",
    "Row",
    "User",
    "Display name",
    "Temporary Access Pass",
    "Starts (UTC)",
    "Expires (UTC)",
    "Lifetime (minutes)",
    "One-time",
    "Method ID",
    "Created (UTC)",
    "Attempts",
    "Request ID",
    "Note",
    "Found by (sheet value)",  # input.match_by mail / employeeId: what the sheet named them by
)
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
)
SKIPPED_COLUMNS = ("Source file", "Row", "User", "Reason", "Previous run", "Issued at")
PROBLEM_COLUMNS = ("Source file", "Row", "Column", "User", "Kind", "Problem", "What to do")
SUMMARY_COLUMNS = ("Item", "Value", "Detail")
REDACTED = "(not in this copy)"
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
    "Item": 24,
    "Value": 66,
    "Previous run": 22,
    "Issued at": 20,
}


@dataclass(frozen=True, slots=True)
class FileSummary:
    path: str
    sha256: str
    rows: int
    sheet: str | None


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    started: datetime
    finished: datetime
    version: str
    files: Sequence[FileSummary]
    settings: Sequence[tuple[str, str]]
    status: str = "completed"
    notes: Sequence[tuple[str, str | int]] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """How the workbook is protected: the password that encrypts it (None: not encrypted), and
    whether a pass-free copy is written too. The repr never shows the password."""

    password: str | None = field(default=None, repr=False)
    redacted_copy: bool = False


def audit_options(output: OutputSettings, env: Mapping[str, str]) -> AuditOptions:
    """Read output.password (raising ConfigError if it is configured but missing)."""
    return AuditOptions(output.password.read(env), output.redacted_copy)


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
) -> Path:
    """Write the workbook atomically at `path` (mode 0600), encrypted when options has a
    password, and with `redacted_copy` also its pass-free copy at `redacted_path(path)`.

    Unencrypted, openpyxl's per-sheet scratch files go to an owner-only folder beside the
    workbook (`.<name>.partial`), removed once it is in place (one left by a killed write is
    cleared by the next write). Encrypted, nothing but the encrypted bytes is written.
    """
    private_dir(path.parent)
    _write(path, summary, issued, failed, skipped, password=options.password, masked=False)
    if options.redacted_copy:
        _write(redacted_path(path), summary, issued, failed, skipped, password=None, masked=True)
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
) -> None:
    with _scratch(path) as scratch:
        in_memory = password is not None
        workbook = Workbook(write_only=True)
        sheets = _Sheets(workbook, None if in_memory else scratch)
        if masked:
            summary = replace(summary, notes=(*summary.notes, ("Pass values", REDACTED)))
        _summary_sheet(sheets, summary, issued, failed, skipped)
        rows = sorted(issued, key=lambda i: (i.origin.source, i.origin.row))
        sheets.add(
            "Issued",
            ISSUED_COLUMNS,
            (
                (
                    i.origin.source,
                    i.origin.row,
                    _Text(i.request.user),
                    _Text(i.request.display_name),
                    REDACTED if masked else _Text(i.temporary_access_pass),
                    i.starts,
                    i.expires,
                    i.lifetime_minutes,
                    "yes" if i.usable_once else "no",
                    i.method_id,
                    i.created,
                    i.attempts,
                    i.request_id,
                    i.note,
                    _Text(i.request.sheet_value),
                )
                for i in rows
            ),
        )
        sheets.add(
            "Failed",
            FAILED_COLUMNS,
            (
                (
                    f.origin.source,
                    f.origin.row,
                    _Text(f.user),
                    f.reason,
                    _Text(f.detail),
                    f.http_status,
                    f.graph_code,
                    f.attempts or None,
                    f.request_id,
                    _Text(f.column),
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
                    _Text(s.reason),
                    s.previous_run,
                    s.issued_at,
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
                    _Text(o.reason),
                    _Text(o.detail) if isinstance(o, Failed) else None,
                )
                for o in rows
            ),
        )
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

    def add(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        sheet: WriteOnlyWorksheet = self.workbook.create_sheet(title)
        for index, name in enumerate(columns, start=1):
            sheet.column_dimensions[get_column_letter(index)].width = _WIDTHS.get(name, 16)
        sheet.freeze_panes = "A2"
        if self.scratch is None:
            out: Any = io.BytesIO()
        else:
            fd, out = tempfile.mkstemp(prefix="sheet-", suffix=".xml", dir=self.scratch)
            os.close(fd)
        sheet._writer = _SheetWriter(sheet, out)
        sheet._writer.write_top()  # what openpyxl does at the first append, with our `out`
        _fill(sheet, columns, rows)


class _Text(str):
    """A value that must land in the workbook as text, never as a formula."""

    __slots__ = ()

    def __new__(cls, value: object) -> _Text:
        return super().__new__(cls, "" if value is None else str(value))


def _summary_sheet(
    sheets: _Sheets,
    s: RunSummary,
    issued: Sequence[Issued],
    failed: Sequence[Failed],
    skipped: Sequence[Skipped],
) -> None:
    rows: list[tuple[Any, ...]] = [
        ("Run ID", s.run_id, None),
        ("Status", s.status, None),
        ("Started (UTC)", s.started, None),
        ("Finished (UTC)", s.finished, None),
        ("Issued", len(issued), None),
        ("Failed", len(failed), None),
        ("Skipped", len(skipped), None),
        ("Rows read", sum(f.rows for f in s.files), None),
        ("Tool version", f"onboard {s.version}", None),
    ]
    rows.extend(
        (name, value if isinstance(value, int) else _Text(value), None) for name, value in s.notes
    )
    for f in s.files:
        detail = f"{f.rows} rows" + (f", sheet '{f.sheet}'" if f.sheet else "")
        rows.append(("Input file", _Text(f.path), _Text(f"SHA-256 {f.sha256}; {detail}")))
    rows.extend((f"Setting {name}", _Text(value), None) for name, value in s.settings)
    sheets.add("Summary", SUMMARY_COLUMNS, rows)


def _fill(sheet: WriteOnlyWorksheet, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    bold = Font(bold=True)
    header = []
    for name in columns:
        cell = WriteOnlyCell(sheet, value=name)
        cell.font = bold
        header.append(cell)
    sheet.append(header)
    count = 0
    for row in rows:
        sheet.append([_cell(sheet, value) for value in row])
        count += 1
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{count + 1}"


def _cell(sheet: WriteOnlyWorksheet, value: Any) -> Any:
    # Plain values where openpyxl stores them right by itself (much faster than a styled
    # cell each: it matters at 100,000 rows); a cell of its own only where it must be forced.
    if isinstance(value, datetime):
        # Excel has no time zones: UTC, as the column headers say. openpyxl gives datetimes
        # its own date-and-time number format.
        return value.astimezone(UTC).replace(tzinfo=None)
    if not isinstance(value, str):
        return value
    # openpyxl refuses control characters: show them escaped rather than fail the whole write.
    text = _ILLEGAL.sub(_escape, value)
    risky = text.startswith(FORMULA_PREFIXES) or text in ERROR_CODES
    if not risky:
        return text or None
    cell = WriteOnlyCell(sheet, value=text)
    cell.data_type = "s"  # openpyxl would otherwise store "=..." as a formula, "#N/A" as an error
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
