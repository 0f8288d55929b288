"""Reading the new-hire spreadsheet (.xlsx or .csv) into validated rows.

A file that cannot be used at all raises InputFileError before anything is sent. A row with a
problem becomes a Failed outcome naming the column and what to fix; it is never sent.
"""

from __future__ import annotations

import contextlib
import csv
import faulthandler
import functools
import hashlib
import io
import itertools
import math
import multiprocessing
import os
import re
import signal
import stat
import sys
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import msoffcrypto
import python_calamine
from msoffcrypto.exceptions import FileFormatError
from openpyxl.utils import get_column_letter

from . import excel
from .config import MAX_LIFETIME_MINUTES, MIN_LIFETIME_MINUTES, InputSettings, PassSettings
from .errors import InputFileError, first_line
from .excel import EPOCH_1900, CellError
from .graph import GUEST_MARKER, GUEST_REFUSAL, GUESTS_ADVICE
from .outcomes import Failed, Origin, PassRequest, Reason, Skipped
from .redact import printable

EXCEL_SUFFIXES = (".xlsx", ".xlsm")  # .xlsm: values only; its macros are never run
CSV_SUFFIXES = (".csv", ".txt")

_TRUE = {"yes", "y", "1", "x"} | excel.TRUE_WORDS  # TRUE in Excel's languages: WAHR, VRAI...
_FALSE = {"no", "n", "0"} | excel.FALSE_WORDS
GUID = re.compile(r"^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$", re.IGNORECASE)
# A UPN: local part without spaces, '@', or path characters; a dotted domain.
_UPN = re.compile(r"^[^@\s/\\?%\x00-\x1f\x7f]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
# Graph documents no limit on how far ahead a pass may start; a start more than this far ahead
# is almost certainly a typo in the year.
MAX_DAYS_AHEAD = 366
# A time of day after a date: 09:30, 9:30:15.250, 9:30 AM, 09:30:00Z, 09:30:00+01:00.
_TIME = (r"(\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)\s*([AaPp]\.?[Mm]\.?)?"
         r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?")  # fmt: skip
# 2026-12-01, 01/12/2026, 1.12.26, 12-01-2026, each optionally followed by a time of day.
_NUMERIC_DATE = re.compile(r"^(\d{1,4})[-/.](\d{1,2})[-/.](\d{1,4})(?:(?:T|\s+)" + _TIME + ")?$")
# 1 Dec 2026, 01-Dec-2026, December 1, 2026, Tue 1 Dec 2026 ... (English month names).
_NAMED_DATE = re.compile(r"^((?:[A-Za-z]{3,9},? )?[\w ,.-]*?[A-Za-z]{3,9}[\w ,.-]*?\d{2,4})"
                         r"(?:\s+" + _TIME + ")?$")  # fmt: skip
# 20261201: year, month, day run together (HR and payroll exports).
_COMPACT_DATE = re.compile(r"^(19|20|21)\d{6}$")
_ORDER_WORDS = {"DMY": "day first", "MDY": "month first"}
_NAMED_FORMATS = (
    "%d %b %Y", "%d %B %Y", "%d-%b-%Y", "%d-%b-%y", "%d %b %y", "%b %d %Y", "%B %d %Y",
    "%b %d, %Y", "%B %d, %Y", "%a %d %b %Y", "%A %d %B %Y", "%a, %d %b %Y", "%A, %d %B %Y",
    "%A, %B %d, %Y", "%a, %b %d, %Y", "%d. %B %Y", "%d %b. %Y",
)  # fmt: skip
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"), None)
# Excel serial day numbers for 1954..2119: anything else is not a plausible start date.
_SERIAL_RANGE = (20000, 80000)
_SERIAL_TEXT = re.compile(r"^[2-7]\d{4}(\.\d+)?$")
EARLIEST_DATE = date(1900, 1, 1)
_AHEAD = timedelta(days=MAX_DAYS_AHEAD)
# A start further back than this is a typo (or text read in the wrong order), not a late pass.
MAX_DAYS_BEHIND = 30
_BEHIND = timedelta(days=MAX_DAYS_BEHIND)
# Excel's own limit for one cell: anything longer did not come from a real sheet.
MAX_CELL_CHARS = 32_767
ZIP_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # old .xls, and password-protected .xlsx
MB = 2**20
# On Linux the .xlsx engine (python-calamine) runs in a child process within these limits: a
# workbook crafted to make it allocate a huge grid (cells at A1 and XFD1048576 in a 5 KB file
# ask for 500 GB), or to spin, can only stop the child.
OPEN_SECONDS = 300.0
OPEN_MEMORY = 3 * 2**30  # address space beyond what the child starts with (Linux)
MAX_ID_CHARS = 256  # longer than any UPN, address or employee id Entra ID accepts
MAX_COLUMNS = 702  # column ZZ: a new-hire sheet has a few dozen
HEADER_SEARCH_ROWS = 30  # the header row is looked for in this many rows at the top
# Characters no text file has many of (tab, newlines and form feed excluded).
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file as read: its digest, how many data rows it had, and what they became."""

    path: Path
    sha256: str
    sheet: str | None
    headers: tuple[str, ...]
    row_count: int
    requests: list[PassRequest] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    header_row: int = 1  # the sheet row the headers were found on (titles may sit above)
    date_order: str | None = None  # how its text dates were read (DMY, MDY, YMD; None: unset)
    order_pattern: str | None = None  # the input.date_order_by_file pattern that set it
    # Text dates that read only one way (25/12/2026 is day first): per order, how many, and
    # the first one's row and text.
    date_evidence: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    @property
    def order_setting(self) -> str:
        """The setting that gave this file's date order, as a message names it."""
        if self.order_pattern is None:
            return "input.date_order"
        return f"input.date_order_by_file {self.order_pattern!r}"

    @property
    def written_order(self) -> str | None:
        """The order most of its one-way text dates show (DMY or MDY); None if none or a tie."""
        counts = sorted(((n, order) for order, (n, _, _) in self.date_evidence.items()),
                        reverse=True)  # fmt: skip
        if not counts or (len(counts) > 1 and counts[0][0] == counts[1][0]):
            return None
        return counts[0][1]


@dataclass(frozen=True, slots=True)
class _Table:
    """A sheet's cells as read, with what the workbook adds: the text a number format shows for
    some numbers (zero-padded ids), by (row, column), and the day its date serials count from."""

    sheet: str | None
    rows: list[list[Any]]
    shown: Mapping[tuple[int, int], str] = field(default_factory=dict)
    epoch: date = EPOCH_1900


@dataclass(frozen=True, slots=True)
class _Dates:
    """How one file's dates are read: text in `order`, serial numbers counted from `epoch`."""

    order: str | None
    epoch: date = EPOCH_1900


def read_input(
    path: str | Path,
    settings: InputSettings,
    defaults: PassSettings,
    *,
    now: datetime | None = None,
    source: str | None = None,
) -> InputFile:
    """Read and validate one file. Raises InputFileError when the file is unusable.

    `source` names the file in outcomes (default: its file name).
    """
    path = Path(path)
    now = now or datetime.now(UTC)
    data = _read_bytes(path, settings.max_mb)
    digest = hashlib.sha256(data).hexdigest()
    order, pattern = _date_order_for(path, settings)
    read = _read_table(data, path, settings)
    table = read.rows
    top, headers, columns = _headers_of(table, path, settings)
    _show_formatted_numbers(read, columns)
    _check_row_count(table, top, read.sheet, path, settings)
    body = table[top + 1 :]
    while body and all(_blank(v) for v in body[-1]):
        body.pop()
    _check_cells(table, path)
    footer = _footer_start(body, columns, settings)
    result = InputFile(path, digest, read.sheet, headers, len(body), header_row=top + 1,
                       date_order=order, order_pattern=pattern)  # fmt: skip
    others = _unread_columns(headers, columns, settings)
    dates = _Dates(order, read.epoch)
    date_at = columns.get("start_date")
    for index, values in enumerate(body):
        origin = Origin(source or path.name, top + index + 2)
        if all(_blank(v) for v in values):
            result.skipped.append(Skipped(origin, "", Reason.BLANK_ROW, "blank row"))
            continue
        if index >= footer:
            result.skipped.append(_below_the_data(origin, values))
            continue
        if date_at is not None and date_at < len(values) and isinstance(values[date_at], str):
            _note_order(result.date_evidence, values[date_at], origin.row)
        outcome = _validate_row(origin, values, columns, headers, defaults, now, settings, dates)
        if isinstance(outcome, Failed):
            result.failed.append(outcome)
        elif others:
            result.requests.append(replace(outcome, extra=_extra(values, others)))
        else:
            result.requests.append(outcome)
    return result


def _read_table(data: bytes, path: Path, settings: InputSettings) -> _Table:
    """The file's cells, by the reader its suffix names; any other suffix is refused."""
    suffix = path.suffix.lower()
    if suffix in EXCEL_SUFFIXES:
        return _read_excel(data, path, settings)
    if suffix in CSV_SUFFIXES:
        return _Table(None, _read_csv(data, path, settings.max_rows))
    raise InputFileError(
        f"unsupported file type '{path.suffix}'; use .xlsx or .csv", path=str(path)
    )


def _headers_of(
    table: list[list[Any]], path: Path, settings: InputSettings
) -> tuple[int, tuple[str, ...], dict[str, int]]:
    """Where the header row is (titles may sit above it), its names, and the column of each
    field onboard reads. A two-row header (group titles merged over the names) counts as its
    lower row. Refused when no row names the key column: nothing could say who a row is for."""
    if not table:
        raise InputFileError("the file is empty: no header row found", path=str(path))
    top = find_header(table, settings)
    if top is None:
        raise InputFileError(_no_key_column(table, settings), path=str(path))
    headers = tuple(_text(h) or "" for h in table[top])
    columns = _map_columns(headers, settings)
    below = _second_header(table, top, headers, columns, settings)
    if below is not None:
        headers, top = below, top + 1
        columns = _map_columns(headers, settings)
    return top, headers, columns


def _show_formatted_numbers(read: _Table, columns: Mapping[str, int]) -> None:
    """Put the text Excel shows (001001) in place of a number in a zero-padding format,
    except where onboard reads the number itself (a date serial, minutes, 1/0)."""
    numeric = {
        columns[k] for k in ("start_date", "lifetime_minutes", "usable_once") if k in columns
    }
    table = read.rows
    for (row, column), text in read.shown.items():
        if column not in numeric and row < len(table) and column < len(table[row]):
            table[row][column] = text


def _check_row_count(
    table: list[list[Any]], top: int, sheet: str | None, path: Path, settings: InputSettings
) -> None:
    """Refuse a sheet with more rows below its header than input.max_rows: it is read up to
    the limit and one more, so one more there means more."""
    if len(table) - top - 1 > settings.max_rows:
        where = f"sheet '{sheet}' has" if sheet else "has"
        raise InputFileError(
            f"{where} more than {settings.max_rows:,} rows, blank rows included (input.max_rows):"
            " refused; delete the rows below the data, split the file, or raise input.max_rows "
            "if it really is one batch",
            path=str(path),
        )


def _unread_columns(
    headers: Sequence[str], columns: Mapping[str, int], settings: InputSettings
) -> list[tuple[int, str]]:
    """The named columns onboard does not read, (index, header): they go to the audit as the
    sheet has them (a private address in an Email column onboard does not match by, say)."""
    read_fields = (settings.key_column, "start_date", "lifetime_minutes", "usable_once",
                   "display_name")  # fmt: skip
    used = {columns[f] for f in read_fields if f in columns}
    return [(i, _clean(h)) for i, h in enumerate(headers) if i not in used and _clean(h)]


def _below_the_data(origin: Origin, values: Sequence[Any]) -> Skipped:
    """A row under the last person (a total, a note): skipped, quoting what it says."""
    text = " ".join(_clean(_text(v) or "") for v in values if not _blank(v))
    return Skipped(
        origin, "", Reason.BELOW_THE_DATA, f"below the data (a total or a note): {_shown(text)}"
    )


def _date_order_for(path: Path, settings: InputSettings) -> tuple[str | None, str | None]:
    """The order of a file's text dates, and the input.date_order_by_file pattern that gave it
    (None: input.date_order gave it). Patterns match the file's name, without regard to case;
    two that match with different orders are refused rather than one picked."""
    name = excel.fold(path.name)
    found = [(p, o) for p, o in settings.date_order_by_file if fnmatchcase(name, excel.fold(p))]
    if len({order for _, order in found}) > 1:
        named = ", ".join(f"{p!r}: {o}" for p, o in found)
        raise InputFileError(
            f"input.date_order_by_file gives this file two date orders ({named}): make the "
            "patterns name it once",
            path=str(path),
        )
    if found:
        return found[0][1], found[0][0]
    return settings.date_order, None


def _note_order(evidence: dict[str, tuple[int, int, str]], raw: str, row: int) -> None:
    """Count a text date that reads only one way (25/12/2026: day first) as showing its order."""
    order = _one_way(_clean(raw))
    if order is not None:
        count, first, text = evidence.get(order, (0, row, _clean(raw)))
        evidence[order] = (count + 1, first, text)


@functools.lru_cache(maxsize=4096)
def _one_way(text: str) -> str | None:
    """DMY or MDY when numeric text with the year last is a valid date in that order only."""
    match = _NUMERIC_DATE.match(text)
    if match is None or len(match.group(1)) == 4 or len(match.group(3)) not in (2, 4):
        return None
    first, second, year = (int(part) for part in match.group(1, 2, 3))
    year += 2000 if year < 100 else 0
    valid = []
    for order, (month, day) in (("DMY", (second, first)), ("MDY", (first, second))):
        with contextlib.suppress(ValueError):
            date(year, month, day)
            valid.append(order)
    return valid[0] if len(valid) == 1 else None


def check_date_orders(files: Sequence[InputFile]) -> None:
    """Refuse (InputFileError, exit 2) to read text dates in an order their own files show
    is not theirs: two files read by one order (no input.date_order_by_file pattern for them)
    whose one-way dates show different orders (a London sheet's 25/12/2026, a New York sheet's
    12/25/2026: one order would misread the 1/11/2027 of one of them), or a file whose one-way
    dates mostly show the other order than the one set for it."""
    shared = [f for f in files if f.order_pattern is None and f.written_order is not None]
    for later in shared:
        earlier = next((f for f in shared if f.written_order != later.written_order), None)
        if earlier is None:
            continue
        a, b = (earlier, later) if files.index(earlier) < files.index(later) else (later, earlier)
        example = ", ".join(f'"{f.path.name}": {f.written_order}' for f in (a, b))
        raise InputFileError(
            f"its dates are written {_evidence(b)}, but {a.path.name}'s are {_evidence(a)}: one "
            f"input.date_order cannot read both (1/11/2027 would be misread in one of them); "
            f"set the order per file, e.g. input.date_order_by_file: {{{example}}}",
            path=str(b.path),
        )
    for f in files:
        if f.date_order in _ORDER_WORDS and f.written_order not in (None, f.date_order):
            raise InputFileError(
                f"its dates are written {_evidence(f)}, but {f.order_setting} reads them "
                f"{_ORDER_WORDS[f.date_order]} ({f.date_order}): its other text dates would be "
                f"misread; set {f.order_setting} to {f.written_order} if the whole file is "
                "written so (input.date_order_by_file sets it for this file alone)",
                path=str(f.path),
            )


def _evidence(f: InputFile) -> str:
    order = f.written_order or ""
    count, row, text = f.date_evidence[order]
    more = f", and {count - 1} more" if count > 1 else ""
    return f"{_ORDER_WORDS[order]} ({text!r} in row {row}{more})"


def _extra(values: Sequence[Any], others: Sequence[tuple[int, str]]) -> tuple[tuple[str, str], ...]:
    """The row's cells in the columns onboard does not use, (header, text), in sheet order;
    an empty cell is "" so every row names the same columns."""
    return tuple((h, _as_shown(values[i]) if i < len(values) else "") for i, h in others)


def _as_shown(value: Any) -> str:
    """A cell as text, the way a spreadsheet shows it: a date without a midnight time, a
    time of day without zero seconds, TRUE/FALSE, a whole number without ".0", #N/A."""
    if isinstance(value, bool):
        return str(value).upper()
    return _text(value) or ""


def _read_bytes(path: Path, max_mb: float) -> bytes:
    """The whole file, if it is a regular file within input.max_mb (not a device or a pipe).

    Opened once, then checked on the open file, so nothing can swap it in between; opening
    does not wait on a pipe (O_NONBLOCK), and reading stops one byte past the limit.
    """
    limit = int(max_mb * MB)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InputFileError("file not found", path=str(path)) from None
    except IsADirectoryError:
        raise InputFileError("is a directory, not a spreadsheet", path=str(path)) from None
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror}", path=str(path)) from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):  # before fdopen, which refuses a directory itself
        os.close(fd)
        raise InputFileError("is a directory, not a spreadsheet", path=str(path))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError("is not a regular file (a device or a pipe?)", path=str(path))
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise InputFileError(f"cannot read: {exc.strerror}", path=str(path)) from None
    if len(data) > limit:
        raise InputFileError(
            f"is more than {max_mb:g} MB, the input.max_mb limit: refused (is it the right file?)",
            path=str(path),
        )
    return data


def _read_excel(data: bytes, path: Path, settings: InputSettings) -> _Table:
    if data.startswith(OLE_MAGIC):
        raise InputFileError(_office_file(data), path=str(path))
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InputFileError(_not_a_workbook(data), path=str(path))
    _check_zip(data, path, settings.max_mb)
    # Title rows, the header, the limit, and one more to tell.
    book = _open_isolated(data, path, settings.max_rows + HEADER_SEARCH_ROWS + 1)
    name = _pick_sheet(book, path, settings)
    rows, shown = book.sheets[name]
    return _Table(name, rows, shown, book.epoch)


def _pick_sheet(book: _Book, path: Path, settings: InputSettings) -> str:
    sheets = {name: rows for name, (rows, _) in book.sheets.items()}
    hidden = book.hidden
    names = list(sheets)
    wanted = settings.sheet
    if wanted is not None:
        if isinstance(wanted, int):
            if not 0 <= wanted < len(names):
                raise InputFileError(
                    f"sheet index {wanted} does not exist; sheets: {', '.join(names)}",
                    path=str(path),
                )
            name = names[wanted]
        else:
            matches = [n for n in names if n.casefold() == str(wanted).casefold()]
            if not matches:
                raise InputFileError(
                    f"no sheet named '{wanted}'; sheets: {', '.join(names)}", path=str(path)
                )
            name = matches[0]
        return name
    visible = [n for n in names if n not in hidden]
    found = [n for n in visible if find_header(sheets[n], settings) is not None]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InputFileError(
            f"sheets {', '.join(repr(n) for n in found)} each have a "
            f"{settings.key_column} column: set input.sheet to the one to use (or save each "
            "as its own file and give them all: one run, one audit)",
            path=str(path),
        )
    first = next((sheets[n] for n in visible if sheets[n]), [])
    reason = _no_key_column(first, settings) if first else "every sheet is empty"
    in_hidden = [n for n in names if n in hidden and find_header(sheets[n], settings) is not None]
    if in_hidden:
        reason += (
            f"; hidden sheet {in_hidden[0]!r} has one: name it in input.sheet to use it "
            "(hidden sheets are read only when named)"
        )
    raise InputFileError(f"no sheet has the column: {reason}; sheets: {', '.join(names)}",
                         path=str(path))  # fmt: skip


def find_header(table: Sequence[Sequence[Any]], settings: InputSettings) -> int | None:
    """The index of the header row: the first of the top rows that has the column naming the
    person (title rows, merged title cells and blank rows may sit above it)."""
    for index, row in enumerate(table[:HEADER_SEARCH_ROWS]):
        headers = [_text(h) or "" for h in row]
        if settings.key_column in _map_columns(headers, settings):
            return index
    return None


def _second_header(
    table: Sequence[Sequence[Any]],
    top: int,
    headers: Sequence[str],
    columns: dict[str, int],
    settings: InputSettings,
) -> tuple[str, ...] | None:
    """The header merged with the row below it, when that row is a second header row: group
    titles merged over two rows ("Dates" over "Start Date" | "End Date", "UPN" merged down).
    It is one when it names a field the first row lacks and holds no person (its cell in the
    person's column is empty, or is that column's own name). None otherwise."""
    if top + 1 >= len(table):
        return None
    below = [_text(v) or "" for v in table[top + 1]]
    width = max(len(headers), len(below))
    merged = tuple(
        (below[i] if i < len(below) and _clean(below[i]) else "")
        or (headers[i] if i < len(headers) else "")
        for i in range(width)
    )
    found = _map_columns(merged, settings)
    key = columns[settings.key_column]
    person = _clean(below[key]) if key < len(below) else ""
    if set(found) <= set(columns) or (person and found.get(settings.key_column) != key):
        return None
    return merged


def _no_key_column(table: Sequence[Sequence[Any]], settings: InputSettings) -> str:
    wanted = ", ".join(settings.columns[settings.key_column])
    first = next((row for row in table[:HEADER_SEARCH_ROWS] if not all(map(_blank, row))), [])
    seen = ", ".join(repr(_text(h)) for h in first if not _blank(h)) or "none"
    how = "" if settings.match_by == "upn" else f" (input.match_by: {settings.match_by})"
    return (
        f"no {settings.key_column} column{how} in the first {HEADER_SEARCH_ROWS} rows: expected "
        f"a header named one of {wanted}; first row with text: {seen}. Rename the header, or "
        f"add its name to input.columns.{settings.key_column}"
    )


def _footer_start(body: list[list[Any]], columns: dict[str, int], settings: InputSettings) -> int:
    """Where the rows below the data begin (totals, notes): len(body) if there are none.

    Only rows after the last person count, and only rows that say what they are: their first
    text starts with a word like Total or Notes, or a label with a colon, or * or #. A row with
    a start date, or an address in the user column, is a person (failed if mistyped), and so is
    a row with an error cell (#N/A), and anything unclear: a hire is never passed over as a note.
    """
    key = columns[settings.key_column]
    date_at = columns.get("start_date")
    start = len(body)
    for index in range(len(body) - 1, -1, -1):
        values = body[index]
        if all(_blank(v) for v in values):
            continue
        if any(isinstance(v, CellError) for v in values):
            break
        cell = _clean(_text(values[key]) or "") if key < len(values) else ""
        if date_at is not None and date_at < len(values) and _looks_like_date(values[date_at]):
            break
        first = _clean(_text(next(v for v in values if not _blank(v))) or "").casefold()
        word = _WORD.match(first)
        labelled = (word is not None and word.group() in _FOOTER_WORDS) or first.startswith(
            ("*", "#")
        )
        if not (labelled or ":" in first):
            break
        # The user column must say nothing of a person: empty, the label itself, or the
        # count of a totals row (Total | 2). Anything else there is a hire, failed if wrong.
        label_in_key = bool(cell) and cell.casefold() == first
        counted = cell.isdigit() and word is not None and word.group() in _TOTAL_WORDS
        if cell and not (label_in_key or counted):
            break
        start = index
    return start


def _looks_like_date(value: Any) -> bool:
    if _blank(value):
        return False
    try:
        parse_start(value, None)
    except AmbiguousDate:
        return True  # a date, only its order unknown
    except ValueError:
        return False
    return True


class AmbiguousDate(ValueError):
    """Text that is a date read day-first and another read month-first."""


# Totals labels as spreadsheet programs write them in the languages HR sheets come in (a
# table's totals row: "Total", German Excel's "Ergebnis"...).
_TOTAL_WORDS = frozenset(
    ["total", "totals", "subtotal", "grand", "sum", "ergebnis", "summe", "gesamt",
     "gesamtsumme", "gesamtergebnis", "somme", "totaal", "totale", "suma", "soma", "totalt",
     "summa", "yhteensä", "razem", "összesen", "celkem", "итог", "всего", "合計", "总计"]
)  # fmt: skip
_FOOTER_WORDS = _TOTAL_WORDS | frozenset(
    ["count", "note", "notes", "prepared", "generated", "source", "created", "printed", "page",
     "end"]
)  # fmt: skip
_WORD = re.compile(r"[^\W\d_]+")  # the first word of a cell


@dataclass(frozen=True, slots=True)
class _Book:
    """A workbook as read: each sheet's rows and the text its padded numbers show (see
    _Table), the hidden sheets, and the day its date serials count from."""

    sheets: dict[str, tuple[list[list[Any]], dict[tuple[int, int], str]]]
    hidden: set[str]
    epoch: date


def _open_isolated(data: bytes, path: Path, nrows: int) -> _Book:
    """Every sheet's rows (at most `nrows` each), read by calamine in a forked child with a
    memory limit and a time limit (Linux; elsewhere in this process). Raises InputFileError if
    the child fails."""
    if sys.platform != "linux":
        kind, payload = _open(data, nrows)
        return _opened(kind, payload, path)
    # fork: the child starts at once with the engine already imported, and re-runs no
    # __main__ (spawn would); it touches nothing but the bytes it was given.
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_open_in_child, args=(data, nrows, send), daemon=True)
    with warnings.catch_warnings():  # Python 3.12+ warns on any fork with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    send.close()
    try:
        if not receive.poll(OPEN_SECONDS):
            kind, payload = "limits", None
        else:
            kind, payload = receive.recv()
    except (EOFError, OSError):  # the child died: out of memory, or a crash in the engine
        kind, payload = "limits", None
    finally:
        receive.close()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    return _opened(kind, payload, path)


def _opened(kind: str, payload: Any, path: Path) -> _Book:
    if kind == "limits":
        raise InputFileError(
            f"could not be opened within the reader's limits ({OPEN_MEMORY // 2**30} GB of "
            f"memory, {OPEN_SECONDS:g} s): refused. A sheet whose cells are spread very far "
            "apart (say A1 and XFD1048576), or a damaged or crafted file, does this: copy the "
            "rows into a new workbook",
            path=str(path),
        )
    if kind == "error":
        raise InputFileError(f"cannot open the workbook (damaged?): {payload}", path=str(path))
    sheets, hidden, date1904 = payload
    return _Book(dict(sheets), set(hidden), excel.EPOCH_1904 if date1904 else EPOCH_1900)


def _open_in_child(data: bytes, nrows: int, send: Any) -> None:
    # The engine's own report of a failed allocation (a Rust backtrace), or Python's fault
    # handler's, is not for the console: the parent says what happened.
    faulthandler.disable()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    # Ctrl-C reaches the whole process group: it is the parent's to handle (and the parent's
    # event loop must not hear it twice through the wakeup descriptor the child inherited).
    with contextlib.suppress(ValueError):  # forked from a thread other than the main one
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory()
    result = _open(data, nrows)
    try:
        send.send(result)
    except MemoryError:
        send.send(("limits", None))
    send.close()
    os._exit(0)  # a fork: none of the parent's exit handlers or buffers are ours to run


def _open(data: bytes, nrows: int) -> tuple[str, Any]:
    """("ok", (sheets, hidden sheet names, 1904 date system?)), or ("error", why) for a damaged
    workbook, or ("limits", None) when memory ran out. Each sheet: its rows (error cells as
    CellError, empty cells None) and the text of its zero-padded numbers (excel.scan_sheet)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            layout = excel.layout(archive)
            styles = excel.number_styles(archive, layout.styles)
            scans = {
                name: excel.scan_sheet(archive.read(part), styles, nrows)
                for name, part in layout.sheets.items()
            }
        refused = [layout.sheets[name] for name, scan in scans.items() if scan.engine_unknown]
        if refused:  # errors the engine does not know (#SPILL!) would make it refuse the file
            data = excel.engine_safe(data, refused)
        sheets: dict[str, tuple[list[list[Any]], dict[tuple[int, int], str]]] = {}
        with python_calamine.CalamineWorkbook.from_object(io.BytesIO(data)) as book:
            hidden = [
                m.name for m in book.sheets_metadata
                if m.visible != python_calamine.SheetVisibleEnum.Visible
            ]  # fmt: skip
            for name in book.sheet_names:
                scan = scans.get(name)
                if scan is None:  # the engine found a sheet the workbook's parts do not list
                    return "error", f"sheet {name!r} is not where the workbook says"
                cells = book.get_sheet_by_name(name).to_python(skip_empty_area=False, nrows=nrows)
                sheets[name] = (_cells(cells, scan.errors), scan.shown)
        return "ok", (sheets, hidden, layout.date1904)
    except MemoryError:
        return "limits", None
    except BaseException as exc:  # the engine raises many kinds (a Rust panic too) when damaged
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return "error", first_line(exc)


def _cells(rows: list[list[Any]], errors: Mapping[tuple[int, int], CellError]) -> list[list[Any]]:
    """The engine's rows with empty cells None and error cells (which it gives as "") the
    errors they are; text such as "#N/A" is the error it spells too."""
    table = [[_engine_cell(v) for v in row] for row in rows]
    for (row, column), error in errors.items():
        while len(table) <= row:
            table.append([])
        cells = table[row]
        cells.extend([None] * (column + 1 - len(cells)))
        cells[column] = error
    return table


def _engine_cell(value: Any) -> Any:
    if isinstance(value, str):
        if not value:
            return None
        if value[0] == "#":
            return excel.error_in_text(value) or value
    return value


def _limit_memory() -> None:
    try:
        import resource

        with open("/proc/self/statm", encoding="ascii") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = size + OPEN_MEMORY
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ImportError, OSError, ValueError):
        pass  # not Linux: the time limit still holds, and a crash only ends the child


def _office_file(data: bytes) -> str:
    """Why an Office container (not a zip) cannot be read: a password, or the old .xls format."""
    try:
        office = msoffcrypto.OfficeFile(io.BytesIO(data))
        protected = office.format == "ooxml" or office.is_encrypted()
    except (FileFormatError, OSError, ValueError, KeyError, IndexError):
        protected = False
    if protected:
        return (
            "is password-protected: onboard does not open protected workbooks. Save a copy "
            "without the password (File > Info > Protect Workbook > Encrypt with Password, "
            "clear it) and keep that copy private"
        )
    return "is an old Excel 97-2003 (.xls) or other Office file: open it in Excel, save as .xlsx"


def _not_a_workbook(data: bytes) -> str:
    """Why bytes named .xlsx are not a workbook, as a person would describe the file."""
    head = data[:2048]
    if data.startswith(ZIP_MAGIC):
        return "is damaged or incomplete (truncated?): save it again from Excel, or copy it again"
    if head.startswith(b"%PDF"):
        return "is a PDF, not a workbook"
    if b"\x00" not in head and head:
        lowered = head.lower()
        if b"<html" in lowered or b"<table" in lowered or b"<!doctype" in lowered:
            return "is a web page (HTML) with an Excel name: open it in Excel, save as .xlsx"
        return "is a text file (a CSV?), not an .xlsx workbook: if it is a CSV, name it .csv"
    return "is not an .xlsx workbook (its contents are something else)"


def _check_zip(data: bytes, path: Path, max_mb: float) -> None:
    """Refuse a workbook that is damaged, or would unpack to more than input.max_mb, before
    the reader unpacks it. Every part is inflated once here by Python's zipfile, which stops at
    the size the zip declares and checks each part's checksum, so no part can lie its way past
    the limit either."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
            names = {p.filename for p in parts}
            if "[Content_Types].xml" not in names or not any(n.startswith("xl/") for n in names):
                raise InputFileError(
                    "is a zip file but not an Excel workbook (a Word file or an archive, renamed?)",
                    path=str(path),
                )
            unpacked = sum(p.file_size for p in parts)
            if unpacked > max_mb * MB:
                raise InputFileError(
                    f"would unpack to {unpacked / MB:,.0f} MB, over the input.max_mb limit of "
                    f"{max_mb:g} MB: refused unread (a decompression bomb, or far more than a "
                    "new-hire list)",
                    path=str(path),
                )
            if any(p.flag_bits & 0x1 for p in parts):
                raise InputFileError("is an encrypted zip, not a workbook", path=str(path))
            if archive.testzip() is not None:  # each part: checksum, declared size at most
                raise zipfile.BadZipFile
    except InputFileError:
        raise
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
            ValueError, zlib.error):  # fmt: skip
        raise InputFileError(
            "is damaged (truncated or corrupt): save it again from Excel, or copy it again",
            path=str(path),
        ) from None


def _check_cells(table: list[list[Any]], path: Path) -> None:
    for number, row in enumerate(table, start=1):
        for index, value in enumerate(row):
            if isinstance(value, str) and len(value) >= MAX_CELL_CHARS:
                # The .xlsx reader cuts a longer cell to Excel's limit: at the limit means over.
                size = f"{len(value):,}" + (" or more" if len(value) == MAX_CELL_CHARS else "")
                raise InputFileError(
                    f"row {number}, column {get_column_letter(index + 1)}: a cell of {size} "
                    f"characters (Excel's limit is {MAX_CELL_CHARS:,}; no new-hire field comes "
                    "close): refused, is it the right file?",
                    path=str(path),
                )


def _read_csv(data: bytes, path: Path, max_rows: int) -> list[list[Any]]:
    text = _decode(data, path)
    hint = _SEP_HINT.match(text)
    if hint:  # Excel's "sep=;" first line: Excel reads it as a setting and shows no row for it,
        # so rows are numbered as Excel shows them: the line after it is row 1
        rest = text[hint.end(1) :]
        sep, text = hint.group(1), rest[2:] if rest.startswith("\r\n") else rest[1:]
    else:
        sep = _delimiter(text[:65536])
    for number, line in enumerate(text.replace("\r", "\n").split("\n"), start=1):
        if line.count(sep) >= MAX_COLUMNS:  # the parser would build a column for each
            raise InputFileError(
                f"line {number} has more than {MAX_COLUMNS} columns: refused (is it the right "
                "file?)",
                path=str(path),
            )
    # The csv module, not pandas: HR's files are ragged (a one-cell title line above a wider
    # header), and pandas sizes every row by the first line.
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        rows = list(itertools.islice(reader, max_rows + HEADER_SEARCH_ROWS + 1))
    except csv.Error as exc:
        # csv says "field larger than field limit" only in its message: measure it instead.
        if _longest_cell(text, sep) > csv.field_size_limit():
            raise InputFileError(
                f"line {reader.line_num}: a cell of more than {csv.field_size_limit():,} "
                f"characters (Excel's limit is {MAX_CELL_CHARS:,}; no new-hire field comes "
                "close): refused, is it the right file?",
                path=str(path),
            ) from None
        raise InputFileError(f"cannot parse as CSV: {first_line(exc)}", path=str(path)) from None
    while rows and not rows[-1]:
        rows.pop()
    return [[_csv_cell(v) if v[:1] in _CSV_MARKS else v or None for v in row] for row in rows]


def _longest_cell(text: str, sep: str) -> int:
    """The most characters in one cell of a CSV text, as the csv module reads it (give or take
    its quotes): a cell that opens with a quote runs to the closing one and on to a separator or
    a line break; any other cell, to a separator or a line break."""
    stop = f"{re.escape(sep)}\\r\\n"
    cell = re.compile(rf'"[^"]*(?:""[^"]*)*"?[^{stop}]*|[^{stop}"][^{stop}]*')
    return max((len(found.group()) for found in cell.finditer(text)), default=0)


# A first character that may start Excel's ="...", an error value, or LibreOffice's Err:NNN.
_CSV_MARKS = ("=", "#", "E", "e")
_FORCED_TEXT = re.compile(r'="(.*)"', re.DOTALL)


def _csv_cell(text: str) -> Any:
    """Excel's ="0042" (text kept as typed: 0042, not 42) as its text; #N/A and the other
    error values (in English or the CSV's language) as the error; anything else as it is."""
    forced = _FORCED_TEXT.fullmatch(text)
    if forced:
        return forced.group(1).replace('""', '"') or None
    return excel.error_in_text(text) or text


_SEP_HINT = re.compile(r"^sep=([,;\t|])(?=\r?\n|$)")
_DELIMITERS = ",;\t"


def _delimiter(sample: str) -> str:
    """The delimiter of a CSV: `,` `;` or tab, whichever splits the most lines the same way
    (title lines above the header allowed; delimiters and newlines inside quotes ignored)."""
    records: list[dict[str, int]] = []
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for char in sample:
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in counts:
            counts[char] += 1
        elif char in "\r\n":
            if any(counts.values()):
                records.append(counts)
            counts = dict.fromkeys(_DELIMITERS, 0)
    if any(counts.values()):
        records.append(counts)
    best, best_score = ",", 0
    for candidate in _DELIMITERS:
        seen = [r[candidate] for r in records[:200] if r[candidate]]
        if not seen:
            continue
        common = max(set(seen), key=seen.count)
        score = seen.count(common) * 1000 + common
        if score > best_score:
            best, best_score = candidate, score
    return best


def _decode(data: bytes, path: Path) -> str:
    """Text from UTF-8 (with or without BOM), UTF-16 with its BOM, or Windows-1252; anything
    else, or text full of control characters, is binary and refused."""
    if data.startswith(ZIP_MAGIC):
        raise InputFileError(
            "is an Excel workbook (or another zip file), not a CSV: if it is a workbook, "
            "name it .xlsx",
            path=str(path),
        )
    if data.startswith(OLE_MAGIC):
        raise InputFileError(
            "is an Excel .xls or a password-protected workbook, not a CSV", path=str(path)
        )
    binary = InputFileError(
        "is not a text CSV file (it contains binary data, or text in an encoding other than "
        "UTF-8, UTF-16 or Windows-1252)",
        path=str(path),
    )
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = data.decode("utf-16")
        elif b"\x00" in data:
            raise binary
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise binary from None
    if "\x00" in text or len(_CONTROL.findall(text)) > len(text) // 20:
        raise binary
    return text


def _map_columns(headers: Sequence[str], settings: InputSettings) -> dict[str, int]:
    folded = [_clean(h).casefold() for h in headers]
    found: dict[str, int] = {}
    for key, names in settings.columns.items():
        for name in names:
            target = _clean(name).casefold()
            if target in folded:
                found[key] = folded.index(target)
                break
    return found


# What a key column must hold, as a message about an empty or unreadable cell asks for it.
_WANTED = {
    "user": "the user's UPN (name@domain)",
    "mail": "the user's email address",
    "employee_id": "the user's employee id",
}
# The fields onboard reads from a row: an error cell in any other column is the sheet's own.
_READ_FIELDS = ("lifetime_minutes", "usable_once", "start_date", "display_name")
# A column's header and what is wrong with the row's cell there.
_Problem = tuple[str, str]
# When a row's pass starts: as _start_of gives it (all None when the row has no usable date).
_Start = tuple[datetime | None, datetime | None, date | None, str]


@dataclass(frozen=True, slots=True)
class _Row:
    """One data row's cells, found by field (user, start_date...) through the sheet's header."""

    values: Sequence[Any]
    columns: Mapping[str, int]
    headers: Sequence[str]

    def cell(self, key: str) -> Any:
        """The cell of a field: None when the sheet has no such column or the row stops short."""
        index = self.columns.get(key)
        return self.values[index] if index is not None and index < len(self.values) else None

    def header(self, key: str) -> str:
        return self.headers[self.columns[key]]

    def given(self, key: str, broken: Mapping[str, CellError]) -> bool:
        """Whether the row gives its own value for a field the sheet has (not an error cell)."""
        return key in self.columns and key not in broken and not _blank(self.cell(key))


def _validate_row(
    origin: Origin,
    values: Sequence[Any],
    columns: dict[str, int],
    headers: Sequence[str],
    defaults: PassSettings,
    now: datetime,
    settings: InputSettings,
    dates: _Dates,
) -> PassRequest | Failed:
    """One data row as a PassRequest, or a Failed naming every column with a problem at once
    (so the sheet is fixed in one pass, not one column per run). Each kind of column is read
    by its own function below; pass.* gives what the row leaves out."""
    row = _Row(values, columns, headers)
    key = settings.key_column
    broken = _error_cells(row, key)
    problems: list[_Problem] = [
        (row.header(k), f"is {error}: {error.meaning}") for k, error in broken.items()
    ]
    user = "" if key in broken else _user_of(row, key)
    if key not in broken and GUEST_MARKER.casefold() in user.casefold():
        return Failed(
            origin,
            printable(user),
            Reason.EXTERNAL_GUEST,
            f"{GUEST_REFUSAL} {GUESTS_ADVICE}",
            column=row.header(key),
        )
    user_problem = None if key in broken else _user_problem(user, key)
    lifetime, lifetime_problem = _lifetime_of(row, broken, defaults)
    usable_once, usable_problem = _usable_once_of(row, broken, defaults)
    (start, intended, start_day, note), start_problem = _start_cell(
        row, broken, defaults, dates, now
    )
    problems += [
        (row.header(column), problem)
        for column, problem in (
            (key, user_problem),
            ("lifetime_minutes", lifetime_problem),
            ("usable_once", usable_problem),
            ("start_date", start_problem),
        )
        if problem is not None
    ]
    if problems:
        return Failed(
            origin,
            printable(user),
            Reason.INVALID,
            "; ".join(f"{column} {problem}" for column, problem in problems),
            column=", ".join(column for column, _ in problems),
            label=None if len(problems) > 1 else Reason.INVALID.labelled(problems[0][0]),
        )
    display = " ".join(_clean(_text(row.cell("display_name")) or "").split()) or None
    return PassRequest(
        origin, user, display, start, lifetime, usable_once, note, start_date=start_day,
        sheet_value=None if key == "user" else user,
        headers=tuple((name, headers[index]) for name, index in columns.items()),
        intended_start=intended,
        object_id=user if key == "user" and GUID.match(user) else None,
    )  # fmt: skip


def _error_cells(row: _Row, key: str) -> dict[str, CellError]:
    """The error cells (#N/A from a lookup that found nothing) in the columns onboard reads:
    each fails the row, naming it, and is never read as empty (a hire would vanish) nor as a
    value."""
    if not any(isinstance(v, CellError) for v in row.values):
        return {}
    return {k: v for k in (key, *_READ_FIELDS) if isinstance(v := row.cell(k), CellError)}


def _user_of(row: _Row, key: str) -> str:
    """The key column's text: an employee id a spreadsheet stored as a number (1001.0) as the
    id HR typed (1001)."""
    user = _clean(_text(row.cell(key)) or "")
    if key == "employee_id":
        user = user.removesuffix(".0") if re.fullmatch(r"\d+\.0", user) else user
    return user


def _user_problem(user: str, key: str) -> str | None:
    """What is wrong with the key column's value for its kind (UPN or object id, address,
    employee id), or None."""
    if not user:
        return f"is empty; enter {_WANTED[key]}"
    if key == "user" and not ((_UPN.match(user) or GUID.match(user)) and user.isprintable()):
        return f"{_shown(user)} is not a UPN (name@domain) or an object id (GUID)"
    if key == "mail" and not (_UPN.match(user) and user.isprintable()):
        return f"{_shown(user)} is not an email address (name@domain)"
    if not user.isprintable() or len(user) > MAX_ID_CHARS:
        return f"{_shown(user)} is not {_WANTED[key]}"
    return None


def _lifetime_of(
    row: _Row, broken: Mapping[str, CellError], defaults: PassSettings
) -> tuple[int, str | None]:
    """The row's pass lifetime in minutes (pass.lifetime_minutes when it gives none), and what
    is wrong with its cell: Graph's bounds are checked here, before anything is sent."""
    if not row.given("lifetime_minutes", broken):
        return defaults.lifetime_minutes, None
    given = row.cell("lifetime_minutes")
    parsed = _parse_int(given)
    if parsed is None or not MIN_LIFETIME_MINUTES <= parsed <= MAX_LIFETIME_MINUTES:
        return defaults.lifetime_minutes, (
            f"{_shown(given)} is not a whole number of minutes between "
            f"{MIN_LIFETIME_MINUTES} and {MAX_LIFETIME_MINUTES}"
        )
    return parsed, None


def _usable_once_of(
    row: _Row, broken: Mapping[str, CellError], defaults: PassSettings
) -> tuple[bool, str | None]:
    """Whether the row's pass is one-time (pass.usable_once when it does not say), and what is
    wrong with its cell: yes/no in the forms HR's sheets write it."""
    if not row.given("usable_once", broken):
        return defaults.usable_once, None
    given = row.cell("usable_once")
    flag = _parse_bool(given)
    if flag is None:
        return defaults.usable_once, (
            f"{_shown(given)} is not yes/no, true/false (also as Excel writes them in "
            "other languages: WAHR/FALSCH, VRAI/FAUX...) or 1/0"
        )
    return flag, None


def _start_cell(
    row: _Row, broken: Mapping[str, CellError], defaults: PassSettings, dates: _Dates, now: datetime
) -> tuple[_Start, str | None]:
    """When the row's pass starts (see _start_of), and what is wrong with its start date. A
    sheet without a start date column issues passes usable at once, and says so in the audit;
    a sheet with one must give every row a date."""
    nothing: _Start = (None, None, None, "")
    if "start_date" in broken:
        return nothing, None
    if "start_date" not in row.columns:
        return (None, None, None, "no start date column: pass usable at once"), None
    raw = row.cell("start_date")
    if _blank(raw):
        return nothing, "is empty; enter the first working day as YYYY-MM-DD"
    try:
        return _start_of(raw, defaults, dates, now), None
    except ValueError as exc:
        return nothing, str(exc)


def _start_of(
    raw: Any, defaults: PassSettings, dates: _Dates, now: datetime
) -> tuple[datetime | None, datetime, date, str]:
    """A row's start: when the pass starts (UTC; None: usable at once), when the sheet says it
    starts (UTC, even when that is past), the day the sheet gives, and a note for the audit.
    A time of day with an offset (09:30+01:00, 09:30Z) is that moment, whatever pass.timezone
    says. Raises ValueError saying what is wrong with the cell."""
    day, clock = parse_start(raw, dates.order, epoch=dates.epoch)
    if day < EARLIEST_DATE:
        raise ValueError(f"{day.isoformat()} is not a plausible start date")
    if day < (now - _BEHIND).date():
        order = isinstance(raw, str) and not re.match(r"\s*\d{4}", raw)
        raise ValueError(
            f"{_shown(raw)} is {day.isoformat()}, more than {MAX_DAYS_BEHIND} days ago: check "
            "the year" + (", and input.date_order" if order else "")
        )
    if day >= (now + _AHEAD).date():
        raise ValueError(
            f"{day.isoformat()} is more than {MAX_DAYS_AHEAD} days ahead; check the year"
        )
    at = clock or defaults.start_time
    zone = at.tzinfo or defaults.zone
    start = datetime.combine(day, at.replace(tzinfo=None), tzinfo=zone).astimezone(UTC)
    if start <= now:
        where = defaults.timezone if at.tzinfo is None else str(at.tzinfo)
        return (
            None,
            start,
            day,
            f"start {day.isoformat()} {at:%H:%M} {where} is in the past: pass usable at once",
        )
    return start, start, day, ""


def parse_start(
    value: Any, order: str | None, *, epoch: date = EPOCH_1900
) -> tuple[date, time | None]:
    """A start date, and a time of day if the cell gives one (not midnight), from an Excel date
    or datetime cell, an Excel serial number (counted from `epoch`: the 1904 date system's
    when the workbook uses it), ISO text (with a time and an offset: the time then carries
    that offset), YYYYMMDD, or text in `order` (DMY, MDY, YMD).

    Raises ValueError with what is wrong and how to fix it. Without `order`, text such as
    03/04/2026 (3 April or 4 March?) is refused; 25/12/2026 can only be day-first.
    """
    if isinstance(value, datetime):
        return value.date(), _time_of_day(value.time())
    if isinstance(value, date):
        return value, None
    if isinstance(value, CellError):
        raise ValueError(f"is {value}: {value.meaning}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and _SERIAL_RANGE[0] <= value <= _SERIAL_RANGE[1]:
            moment = datetime.combine(epoch, time()) + timedelta(days=float(value))
            moment = (moment + timedelta(seconds=30)).replace(second=0, microsecond=0)
            return moment.date(), _time_of_day(moment.time())
        if math.isfinite(value) and float(value).is_integer():
            compact = _compact_date(str(int(value)))
            if compact is not None:
                return compact, None
        raise ValueError(f"{_shown(value)} is a number, not a date (nor an Excel date serial)")
    return _parse_text(_clean(_text(value) or ""), order, epoch)


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str, order: str | None, epoch: date) -> tuple[date, time | None]:
    """parse_start for text (a sheet repeats its few start dates: each is parsed once)."""
    if _SERIAL_TEXT.match(text):  # a date column saved as General in a CSV: 46363
        return parse_start(float(text), order, epoch=epoch)
    compact = _compact_date(text)
    if compact is not None:
        return compact, None
    match = _NUMERIC_DATE.match(text)
    if match:
        first, second, third = match.group(1, 2, 3)
        clock = _clock(match.group(4), match.group(5), match.group(6), text)
        if len(first) == 4 or (order == "YMD" and len(third) <= 2):
            # year first (ISO and its kin): one reading, whatever the order
            return _pick(text, {"YMD": (first, second, third)}, "YMD"), clock
        candidates = {"DMY": (third, second, first), "MDY": (third, first, second)}
        return _pick(text, candidates, order), clock
    match = _NAMED_DATE.match(text)
    if match:
        for pattern in _NAMED_FORMATS:
            with contextlib.suppress(ValueError):
                day = datetime.strptime(match.group(1), pattern).date()
                return day, _clock(match.group(2), match.group(3), match.group(4), text)
    raise ValueError(
        f"{_shown(text)} is not a date; use an Excel date cell, YYYY-MM-DD (a time may follow: "
        "2027-01-05 09:30, 2027-01-05T09:30+01:00), YYYYMMDD, 5 Jan 2027, or day/month/year "
        "text with input.date_order set"
    )


def _compact_date(text: str) -> date | None:
    """20270105 as 5 January 2027 (YYYYMMDD), when it is a valid date; else None."""
    if not _COMPACT_DATE.match(text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _pick(text: str, candidates: dict[str, tuple[str, str, str]], order: str | None) -> date:
    valid: dict[str, date] = {}
    for name, (year, month, day) in candidates.items():
        number = int(year)
        if len(year) == 2:
            number += 2000
        elif len(year) != 4:
            continue
        with contextlib.suppress(ValueError):
            valid[name] = date(number, int(month), int(day))
    if order is not None:
        if order in valid:
            return valid[order]
        if order in candidates:
            raise ValueError(f"{text!r} is not a valid date in {order} order (input.date_order)")
        raise ValueError(
            f"{text!r} is not written year first, as input.date_order {order} says; use "
            "YYYY-MM-DD, or set input.date_order to how the sheet writes dates"
        )
    days = set(valid.values())
    if len(days) == 1:
        return days.pop()
    if not days:
        raise ValueError(f"{text!r} is not a valid date")
    a, b = (valid[n].strftime("%-d %B %Y") for n in ("DMY", "MDY"))
    raise AmbiguousDate(
        f"{text!r} could be {a} or {b}: set input.date_order to DMY or MDY (how the sheet "
        "writes dates), or use YYYY-MM-DD"
    )


MAX_OFFSET = timedelta(hours=14)  # the widest UTC offset any zone uses (Kiribati, UTC+14)


def _clock(text: str | None, half: str | None, offset: str | None, whole: str) -> time | None:
    """The time of day in a date's text (None: none, or midnight), 12-hour with AM/PM too,
    carrying the offset it gives (Z: UTC)."""
    if not text:
        return None
    hours, minutes = (int(part) for part in text.split(":")[:2])
    if half is not None:
        if not 1 <= hours <= 12:
            raise ValueError(f"{whole!r} has a time that is not h:mm AM/PM")
        hours = hours % 12 + (12 if half[0] in "Pp" else 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"{whole!r} has a time that is not HH:MM")
    moment = _time_of_day(time(hours, minutes))
    if moment is None or offset is None:
        return moment
    if offset in "Zz":
        return moment.replace(tzinfo=UTC)
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    shift = timedelta(hours=hours, minutes=minutes)
    if shift > MAX_OFFSET or minutes > 59:
        raise ValueError(f"{whole!r} has an offset from UTC that no place uses")
    return moment.replace(tzinfo=timezone(sign * shift))


def _time_of_day(moment: time) -> time | None:
    """A time the sheet gave on purpose: midnight means "no time given" (a plain date)."""
    moment = moment.replace(second=0, microsecond=0, tzinfo=None)
    return None if moment == time() else moment


def _parse_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    text = _clean(_text(value) or "")
    # Digits alone, or with ".0" as a whole number exported as a decimal. "10.000" is refused:
    # in German or French Excel that is ten thousand, written with a thousands separator.
    if re.fullmatch(r"\d{1,9}(\.0)?", text):
        return int(text.split(".")[0])
    return None


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = excel.fold(_clean(_text(value) or ""))
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def _text(value: Any) -> str | None:
    """A cell as text, the way the sheet shows it: a whole number without ".0", a date without
    a midnight time (2019-10-24, 2019-10-24 09:30), a time without zero seconds, #N/A."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        if value.time() == time():
            return value.date().isoformat()
        return value.isoformat(" ", "seconds" if value.second else "minutes")
    if isinstance(value, time):
        return value.isoformat("seconds" if value.second else "minutes")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def user_key(text: str) -> str:
    """How a user named on the command line is matched to the sheet's rows."""
    return _clean(text).casefold()


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text.translate(_INVISIBLE)).replace("\u00a0", " ")
    return text.strip()


def _blank(value: Any) -> bool:
    return _is_missing(value) or (isinstance(value, str) and not _clean(value))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _shown(value: Any) -> str:
    text = _text(value) or ""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def plan(files: Iterable[InputFile]) -> tuple[list[PassRequest], list[Failed], list[Skipped]]:
    """Keep one request per user across all files (see one_per_user)."""
    return one_per_user(r for f in files for r in f.requests)


def one_per_user(
    rows: Iterable[PassRequest],
) -> tuple[list[PassRequest], list[Failed], list[Skipped]]:
    """Keep one request per user.

    Identical repeats are skipped ("same as row N"); repeats that disagree on start, lifetime or
    one-time use are all failed as a conflict, since only one pass per user can exist.
    """
    by_user: dict[str, list[PassRequest]] = {}
    for request in rows:
        by_user.setdefault(request.key, []).append(request)
    requests: list[PassRequest] = []
    failed: list[Failed] = []
    skipped: list[Skipped] = []
    by_id = [key for key in by_user if GUID.match(key)]
    if by_id and len(by_id) < len(by_user):
        # An object id and a UPN may be the same person; two creates for one user would leave
        # only the later pass valid. Without reading the directory we cannot tell, so refuse.
        for key in by_id:
            for r in by_user.pop(key):
                failed.append(
                    Failed(
                        r.origin,
                        r.user,
                        Reason.MIXED_IDENTIFIERS,
                        "This run names some users by object id and others by UPN, so onboard "
                        "cannot tell whether two rows are the same person. Use the UPN in this "
                        "row (or object ids in every row).",
                    )
                )
    for group in by_user.values():
        first = group[0]
        if len(group) == 1:
            requests.append(first)
            continue
        shape = {(r.start, r.lifetime_minutes, r.usable_once) for r in group}
        if len(shape) == 1:
            requests.append(first)
            for repeat in group[1:]:
                where = _where(first.origin, repeat.origin)
                skipped.append(
                    Skipped(repeat.origin, repeat.user, Reason.REPEATED, f"same as {where}")
                )
            continue
        places = ", ".join(f"{r.origin.source} row {r.origin.row}" for r in group)
        for r in group:
            failed.append(
                Failed(
                    r.origin,
                    r.user,
                    Reason.CONFLICTING_ROWS,
                    f"{r.user} appears in {places} with different start date, lifetime or one-time "
                    "setting; a user can hold only one pass: keep one row and run again",
                )
            )
    return requests, failed, skipped


def _where(first: Origin, repeat: Origin) -> str:
    if first.source == repeat.source:
        return f"row {first.row}"
    return f"{first.source} row {first.row}"


def read_all(
    inputs: Sequence[str | Path], settings: InputSettings, pass_: PassSettings, now: datetime
) -> list[InputFile]:
    """Read every input file; raises InputFileError on the first unusable one.

    Rows are traced by file name, or by the file's real path when two inputs share a name: a
    resumed run knows its rows however the paths are typed.
    """
    paths = [Path(p) for p in inputs]
    names = [p.name for p in paths]
    files: list[InputFile] = []
    for path in paths:
        source = printable(path.name if names.count(path.name) == 1 else str(path.resolve()))
        read = read_input(path, settings, pass_, now=now, source=source)
        for earlier in files:
            if earlier.sha256 == read.sha256:
                same = earlier.path.resolve() == path.resolve()
                raise InputFileError(
                    "is given twice; give each file once"
                    if same
                    else f"has the same content as {earlier.path}; give each file once",
                    path=str(path),
                )
        files.append(read)
    check_date_orders(files)
    return files


def check_rows(files: Sequence[InputFile]) -> tuple[list[PassRequest], list[Failed | Skipped]]:
    """The rows to consider sending (one per user), and every row already decided by reading."""
    requests, conflicts, repeats = plan(files)
    checked: list[Failed | Skipped] = [*conflicts, *repeats]
    for f in files:
        checked.extend(f.failed)
        checked.extend(f.skipped)
    return requests, checked
