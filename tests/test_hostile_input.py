"""Hostile input: broken, crafted or huge files stop with a message naming the file, exit 2 and
nothing sent; formulas and macros are never run; a fuzzer finds no other way out."""

from __future__ import annotations

import io
import random
import struct
import zipfile
from datetime import date, datetime, timezone
from pathlib import Path

import msoffcrypto  # noqa: F401 - the encryption below must be the real Office one
import pytest
from conftest import users
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msoffcrypto.format.ooxml import OOXMLFile
from openpyxl import Workbook

from onboard.cli import EXIT_BAD_INPUT, main
from onboard.config import InputSettings, PassSettings
from onboard.errors import InputFileError
from onboard.reader import read_input
from onboard.simulator import SimulatorState

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
SHEET = "xl/worksheets/sheet1.xml"
GOOD_ROWS = [["UPN", "Start Date"], ["ada@contoso.com", "2027-01-04"],
             ["bo@contoso.com", "2027-01-05"]]


def xlsx(rows: list[list[object]] = GOOD_ROWS) -> bytes:
    book = Workbook()
    for row in rows:
        book.active.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def rezip(data: bytes, change: dict[str, bytes | None]) -> bytes:
    """The workbook with parts replaced (None: removed) or added."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            if info.filename not in change:
                archive.writestr(info, source.read(info))
        for name, content in change.items():
            if content is not None:
                archive.writestr(name, content)
    return out.getvalue()


def declare_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite the uncompressed size a part declares, in its local and central headers."""
    patched = bytearray(data)
    encoded = name.encode()
    at = patched.find(encoded)
    while at >= 0:
        if patched[at - 30:at - 26] == b"PK\x03\x04":
            struct.pack_into("<I", patched, at - 30 + 22, size)
        elif patched[at - 46:at - 42] == b"PK\x01\x02":
            struct.pack_into("<I", patched, at - 46 + 24, size)
        at = patched.find(encoded, at + 1)
    return bytes(patched)


def corrupt_member(data: bytes) -> bytes:
    """Flip bytes inside the sheet's compressed data: its checksum no longer matches."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(SHEET)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    patched = bytearray(data)
    for offset in range(start + 2, start + min(info.compress_size, 40) - 2):
        patched[offset] ^= 0x5A
    return bytes(patched)


def sparse_sheet(cell: bytes) -> bytes:
    """A few-KB workbook: UPN in A1 and one more cell (or row) placed far away."""
    data = xlsx([["UPN"]])
    xml = zipfile.ZipFile(io.BytesIO(data)).read(SHEET)
    xml = xml.replace(b"</row></sheetData>", b"</row><row r=\"2\">" + cell + b"</row></sheetData>")
    return rezip(data, {SHEET: xml})


def moved_sheet(data: bytes) -> bytes:
    """The same workbook with its sheet stored under a name no reader would guess."""
    source = zipfile.ZipFile(io.BytesIO(data))
    rels = source.read("xl/_rels/workbook.xml.rels").replace(b"/xl/worksheets/sheet1.xml",
                                                              b"/xl/data/hires.xml")
    return rezip(data, {SHEET: None, "xl/data/hires.xml": source.read(SHEET),
                        "xl/_rels/workbook.xml.rels": rels})


def password_protected() -> bytes:
    sealed = io.BytesIO()
    OOXMLFile(io.BytesIO(xlsx())).encrypt("hr-password", sealed)
    return sealed.getvalue()


def zeros_sheet(megabytes: int) -> bytes:
    """A workbook whose sheet inflates to `megabytes` MB from a few KB (honestly declared)."""
    padding = b" " * (megabytes * 2**20)
    return rezip(xlsx(), {SHEET: b"<worksheet>" + padding + b"</worksheet>"})


CASES = [
    ("renamed.xlsx", lambda: b"UPN,Start Date\nada@contoso.com,2027-01-04\n",
     "is a text file (a CSV?), not an .xlsx workbook"),
    ("workbook.csv", lambda: xlsx(), "is an Excel workbook (or another zip file), not a CSV"),
    ("report.xlsx", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "is a PDF, not a workbook"),
    ("export.xlsx", lambda: b"<html><body><table><tr><td>UPN</td></tr></table></body></html>",
     "is a web page (HTML)"),
    ("letter.xlsx", lambda: rezip(xlsx(), {"xl/workbook.xml": None, "xl/styles.xml": None,
                                             "xl/theme/theme1.xml": None, SHEET: None,
                                             "xl/_rels/workbook.xml.rels": None}),
     "is a zip file but not an Excel workbook"),
    ("truncated.xlsx", lambda: xlsx()[:3000], "is damaged or incomplete (truncated?)"),
    ("corrupt.xlsx", lambda: corrupt_member(xlsx()), "is damaged (truncated or corrupt)"),
    ("protected.xlsx", password_protected, "is password-protected"),
    ("bomb.xlsx", lambda: declare_size(xlsx(), SHEET, 0xFFFF_FFF0),
     "would unpack to 4,096 MB, over the input.max_mb limit of 200 MB: refused unread"),
    ("liar.xlsx", lambda: declare_size(zeros_sheet(40), SHEET, 1000),
     "is damaged (truncated or corrupt)"),
    ("huge-cell.csv", lambda: b"UPN,Name\nada@contoso.com," + b"x" * 10 * 2**20 + b"\n",
     "line 2: a cell of more than 131,072 characters (Excel's limit is 32,767"),
    ("huge-cell.xlsx", lambda: xlsx([["UPN", "Name"], ["ada@contoso.com", "x" * 40_000]]),
     "row 2, column B: a cell of 32,767 or more characters"),
    ("million.csv", lambda: b"UPN\n" + b"someone@contoso.com\n" * 1_000_000,
     "has more than 200,000 rows, blank rows included (input.max_rows): refused"),
    ("blank-then-more.csv", lambda: b"UPN,Name\n" + b",\n" * 300_000 + b"late@contoso.com,L\n",
     "has more than 200,000 rows, blank rows included (input.max_rows): refused"),
    ("sparse.xlsx", lambda: sparse_sheet(b'<c r="XFD1048576" t="inlineStr"><is><t>x</t></is></c>'),
     "could not be opened within the reader's limits (3 GB of memory, 300 s): refused"),
    ("sparse-within-limits.xlsx", lambda: sparse_sheet(b'<c r="ZZ200000" t="inlineStr"><is><t>x'
                                                       b'</t></is></c>'),
     "could not be opened within the reader's limits"),
    ("sparse-elsewhere.xlsx", lambda: moved_sheet(sparse_sheet(
        b'<c\n r  =  \n\n\n\n\n\n\n\n\n\n\n\n"XFD1048576" t="inlineStr"><is><t>x</t></is></c>')),
     "could not be opened within the reader's limits"),
    ("far-row.xlsx", lambda: sparse_sheet(b'</row><row r="900000"><c t="inlineStr"><is><t>x</t>'
                                          b'</is></c>'),
     "has more than 200,000 rows, blank rows included (input.max_rows): refused"),
    ("wide.csv", lambda: b"UPN" + b"," * 2_000_000 + b"\n", "line 1 has more than 702 columns"),
    ("garbage.csv", lambda: random.Random(5).randbytes(20_000), "is not a text CSV file"),
    ("control.csv", lambda: bytes(range(1, 32)) * 50, "is not a text CSV file"),
    ("utf16-garbage.csv", lambda: b"\xff\xfe" + b"\x00\xd8" * 10, "is not a text CSV file"),
]


@pytest.mark.parametrize(("name", "make", "message"), CASES, ids=[c[0] for c in CASES])
def test_broken_or_crafted_file_is_bad_input_and_sends_nothing(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str],
    name: str, make, message: str,
) -> None:
    """Each ends with one clear line naming the file, exit 2, and no request to Graph."""
    state = SimulatorState(users("ada@contoso.com", "bo@contoso.com"))
    sim = serve_simulator(state)
    path = tmp_path / name
    path.write_bytes(make())
    code = main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert f"onboard: {path}: " in err and message in err
    assert "Traceback" not in err and "nothing was sent to Graph" in err
    assert state.counts == {} and state.issued == []


def test_limits_are_configurable(tmp_path: Path) -> None:
    """input.max_rows and input.max_mb tighten (or loosen) the limits per site."""
    rows = xlsx([["UPN"], *[[f"u{n}@contoso.com"] for n in range(60)]])
    path = tmp_path / "sixty.xlsx"
    path.write_bytes(rows)
    tight = InputSettings(max_rows=50)
    with pytest.raises(InputFileError, match=r"sheet 'Sheet' has more than 50 rows, blank"):
        read_input(path, tight, PassSettings(), now=NOW)
    assert len(read_input(path, InputSettings(max_rows=60), PassSettings(), now=NOW).requests) == 60
    bomb = tmp_path / "inflates.xlsx"
    bomb.write_bytes(zeros_sheet(30))  # 30 MB of sheet from about 30 KB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputFileError, match=r"would unpack to 30 MB, over the input\.max_mb"):
        read_input(bomb, InputSettings(max_mb=20), PassSettings(), now=NOW)
    with pytest.raises(InputFileError, match=r"is more than 0\.001 MB, the input\.max_mb limit"):
        read_input(path, InputSettings(max_mb=0.001), PassSettings(), now=NOW)


def test_rows_past_the_limit_are_never_dropped_silently(tmp_path: Path) -> None:
    """A blank row right after the limit must not hide the rows below it: the file is refused;
    exactly at the limit, every row is read."""
    lines = ["UPN,Name", *[f"u{n}@contoso.com," for n in range(5)], ",", "late@contoso.com,"]
    path = tmp_path / "hires.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match="more than 5 rows, blank rows included"):
        read_input(path, InputSettings(max_rows=5), PassSettings(), now=NOW)
    book = tmp_path / "hires.xlsx"
    book.write_bytes(xlsx([["UPN"], *[[f"u{n}@contoso.com"] for n in range(5)], [None],
                           ["late@contoso.com"]]))
    with pytest.raises(InputFileError, match="more than 5 rows, blank rows included"):
        read_input(book, InputSettings(max_rows=5), PassSettings(), now=NOW)
    exact = read_input(book, InputSettings(max_rows=7), PassSettings(), now=NOW)
    assert "late@contoso.com" in [r.user for r in exact.requests]


def test_hostile_cells_fail_their_row_not_the_run(tmp_path: Path) -> None:
    """A 400-digit lifetime, a start in year 1 east of UTC, and a user with a terminal escape
    sequence: each fails its own row with a reason (no crash), and the user is shown escaped."""
    path = tmp_path / "hires.csv"
    path.write_text("UPN,Start Date,Lifetime\n"
                    f"a@contoso.com,2027-01-04,{'9' * 400}\n"
                    "b@contoso.com,0001-01-01,60\n"
                    "\x1b]0;owned\x07c@contoso.com,2027-01-04,60\n"
                    "d\u202eexe.@contoso.com,2027-01-04,60\n", encoding="utf-8")
    result = read_input(path, InputSettings(), PassSettings(timezone="Asia/Tokyo"), now=NOW)
    assert result.requests == []
    failed = {f.origin.row: f for f in result.failed}
    assert "is not a whole number of minutes" in failed[2].detail
    assert "0001-01-01 is not a plausible start date" in failed[3].detail
    for row in (4, 5):
        assert failed[row].user.isprintable() and "is not a UPN" in failed[row].detail
    assert failed[4].user == "\\x1b]0;owned\\x07c@contoso.com"


def test_a_mac_csv_with_carriage_returns_only_is_read(tmp_path: Path) -> None:
    """Excel for Mac's "CSV (Macintosh)" ends lines with CR alone: read, not refused as wide."""
    path = tmp_path / "mac.csv"
    rows = "\r".join(["UPN,Start Date", *[f"u{n}@contoso.com,2027-01-04" for n in range(300)]])
    path.write_bytes(rows.encode("cp1252"))
    assert len(read_input(path, InputSettings(), PassSettings(), now=NOW).requests) == 300


def test_a_pipe_or_device_is_refused_unread(tmp_path: Path) -> None:
    """A FIFO (or /dev/zero) named as the input would block or never end: refused by type."""
    fifo = tmp_path / "hires.csv"
    import os

    os.mkfifo(fifo)
    with pytest.raises(InputFileError, match="is not a regular file"):
        read_input(fifo, InputSettings(), PassSettings(), now=NOW)


def test_xlsm_macros_never_run_and_formulas_give_only_values(tmp_path: Path) -> None:
    """An .xlsm with a macro project reads as values; a formula's text is never a user."""
    data = xlsx([["UPN", "Start Date"], ['=CONCAT("mal","@contoso.com")', "2027-01-04"],
                 ["ok@contoso.com", "2027-01-04"]])
    source = zipfile.ZipFile(io.BytesIO(data))
    types = source.read("[Content_Types].xml").replace(
        b"spreadsheetml.sheet.main+xml", b"sheet.macroEnabled.main+xml").replace(
        b"</Types>", b'<Default Extension="bin" ContentType="application/vnd.ms-office.'
        b'vbaProject"/></Types>')
    macro = b'Attribute VB_Name = "Module1"\nSub Auto_Open()\nShell "calc.exe"\nEnd Sub\n'
    path = tmp_path / "hires.xlsm"
    path.write_bytes(rezip(data, {"[Content_Types].xml": types, "xl/vbaProject.bin": macro}))
    result = read_input(path, InputSettings(), PassSettings(), now=NOW)
    assert [r.user for r in result.requests] == ["ok@contoso.com"]
    assert [(f.origin.row, f.column) for f in result.failed] == [(2, "UPN")]
    assert "CONCAT" not in result.failed[0].detail


# --- fuzzing: whatever the bytes, the reader returns rows or raises InputFileError ----------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
CELL = st.one_of(st.none(), TEXT, st.integers(-10**12, 10**12),
                 st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                 st.dates(date(1900, 3, 1), date(2200, 1, 1)),
                 st.sampled_from(["UPN", "Start Date", "Lifetime", "One-time", "=1+1",
                                  "ada@contoso.com", "2027-01-04", "#EXT#", "../x@y.z"]))
FUZZ = settings(max_examples=60, deadline=5000,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def read_or_refuse(path: Path) -> None:
    try:
        result = read_input(path, InputSettings(max_rows=500), PassSettings(), now=NOW)
    except InputFileError as exc:
        assert str(exc).startswith(str(path))
        return
    decided = len(result.requests) + len(result.failed) + len(result.skipped)
    assert decided == result.row_count


def _excel_safe(value: object) -> object:
    if isinstance(value, str):
        return "".join(c for c in value if c in "\t\n\r" or ord(c) >= 32)
    return value


# Writing each workbook (openpyxl) is most of this test's time: half as many, each as varied.
@settings(FUZZ, max_examples=30)
@given(rows=st.lists(st.lists(CELL, max_size=6), max_size=12))
def test_fuzz_generated_workbooks(tmp_path: Path, rows: list[list[object]]) -> None:
    path = tmp_path / "fuzz.xlsx"
    path.write_bytes(xlsx([[_excel_safe(v) for v in row] for row in rows]))
    read_or_refuse(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1,
                      max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_damaged_workbooks(tmp_path: Path, flips: list[tuple[int, int]],
                                cut: int | None) -> None:
    data = bytearray(xlsx())
    for offset, mask in flips:
        data[offset % len(data)] ^= mask
    path = tmp_path / "damaged.xlsx"
    path.write_bytes(bytes(data[: None if cut is None else cut % len(data)]))
    read_or_refuse(path)


@FUZZ
@given(data=st.binary(max_size=3000))
def test_fuzz_csv_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    read_or_refuse(path)


@FUZZ
@given(rows=st.lists(st.lists(TEXT, max_size=5), max_size=10),
       sep=st.sampled_from([",", ";", "\t"]),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
def test_fuzz_csv_text(tmp_path: Path, rows: list[list[str]], sep: str, encoding: str) -> None:
    text = "UPN,Start Date\n" + "\n".join(sep.join(row) for row in rows)
    path = tmp_path / "fuzz.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    read_or_refuse(path)
