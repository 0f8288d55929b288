"""The audit workbook: every pass issued and every row that failed or was skipped, with why.

Written with openpyxl's write-only mode (constant memory however many rows), to a temporary file
created owner-only in the output directory, flushed to disk, then renamed into place: a reader
never sees half a workbook, and nobody but the owner can read the passes in it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

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
SUMMARY_COLUMNS = ("Item", "Value", "Detail")
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


def write_audit(
    path: Path,
    summary: RunSummary,
    issued: Sequence[Issued],
    failed: Sequence[Failed],
    skipped: Sequence[Skipped],
) -> Path:
    """Write the workbook atomically at `path` (mode 0600) and return it.

    Every byte on the way, openpyxl's per-sheet scratch files included, stays in an owner-only
    folder beside it (`.<name>.partial`), removed once the workbook is in place; one left by a
    killed write is cleared by the next write of the same workbook.
    """
    scratch = path.parent / f".{path.stem}.partial"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    try:
        with _temporary_files_in(scratch):
            return _write(path, scratch, summary, issued, failed, skipped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _temporary_files_in(directory: Path) -> Iterator[None]:
    # openpyxl's write-only sheets stream rows (pass values too) to tempfile's default folder.
    previous = tempfile.tempdir
    tempfile.tempdir = str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def _write(
    path: Path,
    scratch: Path,
    summary: RunSummary,
    issued: Sequence[Issued],
    failed: Sequence[Failed],
    skipped: Sequence[Skipped],
) -> Path:
    workbook = Workbook(write_only=True)
    _summary_sheet(workbook, summary, issued, failed, skipped)
    rows = sorted(issued, key=lambda i: (i.origin.source, i.origin.row))
    _sheet(
        workbook,
        "Issued",
        ISSUED_COLUMNS,
        (
            (
                i.origin.source,
                i.origin.row,
                _Text(i.request.user),
                _Text(i.request.display_name),
                _Text(i.temporary_access_pass),
                i.starts,
                i.expires,
                i.lifetime_minutes,
                "yes" if i.usable_once else "no",
                i.method_id,
                i.created,
                i.attempts,
                i.request_id,
                i.note,
            )
            for i in rows
        ),
    )
    _sheet(
        workbook,
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
    _sheet(
        workbook,
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
    return _save_atomically(workbook, path, scratch)


class _Text(str):
    """A value that must land in the workbook as text, never as a formula."""

    __slots__ = ()

    def __new__(cls, value: object) -> _Text:
        return super().__new__(cls, "" if value is None else str(value))


def _summary_sheet(
    workbook: Workbook,
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
    _sheet(workbook, "Summary", SUMMARY_COLUMNS, rows)


def _sheet(
    workbook: Workbook,
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    sheet: WriteOnlyWorksheet = workbook.create_sheet(title)
    for index, name in enumerate(columns, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = _WIDTHS.get(name, 16)
    sheet.freeze_panes = "A2"
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
    text = ILLEGAL_CHARACTERS_RE.sub(_escape, value)
    risky = text.startswith(FORMULA_PREFIXES) or text in ERROR_CODES
    if not risky:
        return text or None
    cell = WriteOnlyCell(sheet, value=text)
    cell.data_type = "s"  # openpyxl would otherwise store "=..." as a formula, "#N/A" as an error
    if text.startswith(FORMULA_PREFIXES):
        cell.quotePrefix = True  # Excel keeps it text when the cell is edited
    return cell


def _escape(match: re.Match[str]) -> str:
    return "".join(f"\\x{ord(c):02x}" for c in match.group(0))


def _save_atomically(workbook: Workbook, path: Path, scratch: Path) -> Path:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=scratch)
    temp = Path(temp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            workbook.save(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


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
