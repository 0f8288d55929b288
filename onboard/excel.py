"""What Excel writes that the spreadsheet engine does not pass on: error values (#N/A...), the
workbook's date system (1900 or 1904), the text a number format makes of a number (a zero-padded
employee id), and TRUE/FALSE as each language's Excel spells them in a CSV.

python-calamine 0.9 (the .xlsx engine) gives an error cell as "", the same as an empty cell;
refuses a whole workbook over an error it does not know (#SPILL!, #CALC!...); converts a plain
number to nothing but a number, whatever the date system; and applies no number format but a
date's. So this module reads those facts from the workbook's own parts: workbook.xml and its
relationships and styles.xml (small), and each sheet's XML, scanned for the few cells that
matter (error cells, and numbers in a zero-padding style) by a regular expression led by a
literal, so a sheet with none costs one pass of the C regex engine and no XML parsing.

Everything here runs where the engine runs: in the reader's child process, within its limits.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from xml.etree import ElementTree
from xml.sax.saxutils import unescape

from openpyxl.utils.cell import column_index_from_string

# What each error value means, for the person who must fix the sheet. Excel shows these codes
# in every language's workbook file and in an English CSV.
ERRORS: dict[str, str] = {
    "#N/A": "the formula behind it found nothing (a lookup with no match)",
    "#VALUE!": "the formula behind it was given the wrong kind of value",
    "#DIV/0!": "the formula behind it divides by zero or by an empty cell",
    "#REF!": "the formula behind it points at cells that were deleted",
    "#NAME?": "the formula behind it uses a name or function Excel does not know",
    "#NUM!": "the formula behind it gave a number that cannot be",
    "#NULL!": "the formula behind it names two ranges that do not meet",
    "#SPILL!": "the formula's results have no room to spill into",
    "#CALC!": "the formula could not calculate (an empty array?)",
    "#GETTING_DATA": "the workbook was saved while this cell was still loading its data",
    "#FIELD!": "the formula asks for a field its data type does not have",
    "#BLOCKED!": "the formula needs a feature or a source that is blocked",
    "#CONNECT!": "the formula could not reach its data source",
    "#BUSY!": "the workbook was saved while this cell was still calculating",
    "#UNKNOWN!": "the formula's result is of a kind this version of Excel does not know",
}
UNKNOWN_ERROR = "the cell holds an error, not a value"
# The same errors as Excel in other languages writes them into a CSV (the workbook file always
# holds the English code).
LOCALIZED_ERRORS: dict[str, str] = {
    **dict.fromkeys(["#NV", "#N/D", "#N/B", "#N/V"], "#N/A"),
    **dict.fromkeys(
        ["#WERT!", "#VALEUR!", "#¡VALOR!", "#VALORE!", "#VALOR!", "#WAARDE!"], "#VALUE!"
    ),
    **dict.fromkeys(["#¡DIV/0!", "#DEEL/0!"], "#DIV/0!"),
    **dict.fromkeys(["#BEZUG!", "#¡REF!", "#RIF!", "#VERW!"], "#REF!"),
    **dict.fromkeys(["#NOM?", "#¿NOMBRE?", "#NOME?", "#NAAM?"], "#NAME?"),
    **dict.fromkeys(["#ZAHL!", "#NOMBRE!", "#¡NUM!", "#NÚM!", "#GETAL!"], "#NUM!"),
    **dict.fromkeys(["#NUL!", "#¡NULO!", "#NULLO!", "#NULO!", "#LEEG!"], "#NULL!"),
}
# Text that is one of these (any case) is an error value, not text.
_ERROR_TEXT = {code.upper(): code for code in ERRORS} | {
    text.upper(): code for text, code in LOCALIZED_ERRORS.items()
}
# The errors python-calamine reads; any other in a workbook makes it refuse the whole file.
_ENGINE_ERRORS = frozenset(["#DIV/0!", "#N/A", "#NAME?", "#NULL!", "#NUM!", "#REF!", "#VALUE!"])

# TRUE and FALSE as Excel in each language writes them (a CSV export writes the word).
BOOLEANS: dict[str, tuple[str, str]] = {
    "English": ("TRUE", "FALSE"),
    "German": ("WAHR", "FALSCH"),
    "French": ("VRAI", "FAUX"),
    "Italian": ("VERO", "FALSO"),
    "Spanish": ("VERDADERO", "FALSO"),
    "Portuguese": ("VERDADEIRO", "FALSO"),
    "Dutch": ("WAAR", "ONWAAR"),
    "Swedish": ("SANT", "FALSKT"),
    "Danish": ("SAND", "FALSK"),
    "Norwegian": ("SANN", "USANN"),
    "Finnish": ("TOSI", "EPÄTOSI"),
    "Polish": ("PRAWDA", "FAŁSZ"),
    "Hungarian": ("IGAZ", "HAMIS"),
    "Czech": ("PRAVDA", "NEPRAVDA"),
    "Turkish": ("DOĞRU", "YANLIŞ"),
    "Russian": ("ИСТИНА", "ЛОЖЬ"),
}


def fold(text: str) -> str:
    """Text compared without case; Turkish dotless ı folds like i (YANLIŞ, yanlış)."""
    return text.casefold().replace("ı", "i")


TRUE_WORDS = frozenset(fold(true) for true, _ in BOOLEANS.values())
FALSE_WORDS = frozenset(fold(false) for _, false in BOOLEANS.values())

EPOCH_1900 = date(1899, 12, 30)  # Excel's day 0 (1900 system, Windows), past its 1900 leap bug
EPOCH_1904 = date(1904, 1, 1)  # day 0 of the 1904 system (Mac Excel, Numbers, some LibreOffice)


@dataclass(frozen=True, slots=True)
class CellError:
    """An Excel error value (#N/A, #VALUE!...): a cell that is never empty."""

    code: str  # as the file holds it; "" when an error cell holds no code at all

    @property
    def meaning(self) -> str:
        if _LIBREOFFICE_ERROR.match(self.code):
            return LIBREOFFICE_ERROR
        return ERRORS.get(self.code, UNKNOWN_ERROR)

    def __str__(self) -> str:
        return self.code or "#ERROR"


# LibreOffice writes its own error codes into a CSV ("Err:502" where Excel has #VALUE!).
_LIBREOFFICE_ERROR = re.compile(r"(?i)^err:\d{3}$")
LIBREOFFICE_ERROR = (
    "LibreOffice's error code for a formula that failed (see its Help, 'Error Codes')"
)


def error_in_text(text: str) -> CellError | None:
    """The error value `text` is (as a CSV holds it, in English or another language, or
    LibreOffice's Err:NNN), or None."""
    stripped = text.strip()
    code = _ERROR_TEXT.get(stripped.upper())
    if code is None and _LIBREOFFICE_ERROR.match(stripped):
        code = stripped.capitalize()
    return None if code is None else CellError(code)


@dataclass(slots=True)
class SheetCells:
    """What one sheet's XML says beyond the engine's values, by (row, column), 0-based."""

    errors: dict[tuple[int, int], CellError] = field(default_factory=dict)
    shown: dict[tuple[int, int], str] = field(default_factory=dict)  # a number as formatted
    engine_unknown: set[str] = field(default_factory=set)  # error codes the engine refuses


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a workbook keeps each sheet, and its date system."""

    sheets: Mapping[str, str]  # sheet name -> its part in the zip
    date1904: bool
    styles: str | None  # the styles part

    @property
    def epoch(self) -> date:
        return EPOCH_1904 if self.date1904 else EPOCH_1900


def layout(archive: zipfile.ZipFile) -> Layout:
    """The workbook's sheets (name -> part) and date system. Raises ValueError if its parts
    cannot be told (the engine would not read such a file either)."""
    book = next(
        (t for kind, t in _relations(archive, "").values() if kind == "officeDocument"),
        "xl/workbook.xml",
    )
    related = _relations(archive, book)
    root = _xml(archive.read(book))
    date1904 = False
    sheets: dict[str, str] = {}
    for element in root.iter():
        name = _local(element.tag)
        if name == "workbookPr":
            date1904 = element.get("date1904", "0").strip().lower() in ("1", "true")
        elif name == "sheet":
            rid = next((v for k, v in element.attrib.items() if _local(k) == "id"), None)
            target = related.get(rid or "")
            if target is not None:
                sheets[element.get("name", "")] = target[1]
    styles = next((t for kind, t in related.values() if kind == "styles"), None)
    return Layout(sheets, date1904, styles if styles in archive.NameToInfo else None)


def _relations(archive: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    """A part's relationships: id -> (type's last word, target part's name in the zip)."""
    folder, name = posixpath.split(part)
    rels = posixpath.join(folder, "_rels", f"{name}.rels")
    if rels not in archive.NameToInfo:
        return {}
    found: dict[str, tuple[str, str]] = {}
    for element in _xml(archive.read(rels)).iter():
        if _local(element.tag) != "Relationship" or element.get("TargetMode") == "External":
            continue
        target = element.get("Target", "")
        path = target[1:] if target.startswith("/") else posixpath.join(folder, target)
        kind = element.get("Type", "").rstrip("/").rpartition("/")[2]
        found[element.get("Id", "")] = (kind, posixpath.normpath(path))
    return found


def _xml(data: bytes) -> ElementTree.Element:
    # expat (2.4+) refuses entity expansion bombs and ElementTree fetches no external entity;
    # this runs in the reader's child process, within its memory and time limits.
    try:
        return ElementTree.fromstring(data)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise ValueError(f"a part of the workbook is not XML: {exc}") from None


def _local(tag: str) -> str:
    """A tag or attribute name without its namespace (Strict OOXML uses other namespaces)."""
    return tag.rpartition("}")[2]


Formatter = Callable[[float], str | None]


def number_styles(archive: zipfile.ZipFile, part: str | None) -> dict[int, Formatter]:
    """The cell styles (cellXfs index) whose number format shows a whole number otherwise than
    General does (000000 shows 1001 as 001001), each with how it shows one."""
    if part is None:
        return {}
    root = _xml(archive.read(part))
    codes: dict[str, str] = {}
    styles: dict[int, Formatter] = {}
    for element in root.iter():
        if _local(element.tag) == "numFmt":
            codes[element.get("numFmtId", "")] = element.get("formatCode", "")
    cell_xfs = next((e for e in root.iter() if _local(e.tag) == "cellXfs"), None)
    if cell_xfs is None:
        return {}
    for index, xf in enumerate(e for e in cell_xfs if _local(e.tag) == "xf"):
        formatter = whole_number_format(codes.get(xf.get("numFmtId", "0"), ""))
        if formatter is not None:
            styles[index] = formatter
    return styles


# One part of a number format's first section: "text" or \x (literal), a digit placeholder,
# [Red]/[$-409] (ignored), or a character Excel shows as itself (not /: a fraction's).
_FORMAT_TOKEN = re.compile(r'"([^"]*)"|\\(.)|([0#?])|(\[[^\]]*\])|([-+()$ :])')


def whole_number_format(code: str) -> Formatter | None:
    """How a number format shows a whole number, if it is a zero-padding or literal one
    (000000, "E"0000, 000\\-00\\-0000) and so shows it otherwise than General; else None."""
    section = _first_section(code)
    tokens: list[tuple[str, str]] = []  # ("lit", text) or ("digit", placeholder)
    at = 0
    while at < len(section):
        match = _FORMAT_TOKEN.match(section, at)
        if match is None:
            return None  # decimals, thousands, %, dates, text (@)...: not an id's format
        literal, escaped, digit, bracket, plain = match.groups()
        if bracket is not None:
            if not re.fullmatch(r"\[(?:[A-Za-z]+\d*|\$[^\]]*)\]", bracket):
                return None  # a condition ([<1000]): the format depends on the value
        elif digit is not None:
            tokens.append(("digit", digit))
        else:
            tokens.append(("lit", literal if literal is not None else escaped or plain or ""))
        at = match.end()
    placeholders = [t for kind, t in tokens if kind == "digit"]
    if not placeholders or (
        placeholders.count("0") <= 1 and all(kind == "digit" for kind, _ in tokens)
    ):
        return None  # 0, #, ##: General's own digits

    def show(value: float) -> str | None:
        if not (value >= 0 and float(value).is_integer()):
            return None
        digits = str(int(value))
        out: list[str] = []
        remaining = digits
        slots = len(placeholders)
        for kind, text in reversed(tokens):
            if kind == "lit":
                out.append(text)
                continue
            slots -= 1
            if slots == 0:  # the leftmost placeholder takes every digit left over
                out.append(remaining or ("0" if text == "0" else " " if text == "?" else ""))
                remaining = ""
            elif remaining:
                out.append(remaining[-1])
                remaining = remaining[:-1]
            else:
                out.append("0" if text == "0" else " " if text == "?" else "")
        return "".join(reversed(out))

    return show


def _first_section(code: str) -> str:
    """A format's section for positive numbers (sections are split by ; outside quotes)."""
    quoted = False
    for index, char in enumerate(code):
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            return code[:index]
    return code


_ATTR = re.compile(rb'([\w:.-]+)\s*=\s*(?:"([^"]*)"|\'([^\']*)\')')
_CELL_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?c[\s/>]")
_CELL_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?c\s*>")
_VALUE = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?v(?:\s[^>]*)?>([^<]*)<")
_REF = re.compile(r"([A-Za-z]{1,3})(\d{1,7})")


def scan_sheet(xml: bytes, styles: Mapping[int, Formatter], nrows: int) -> SheetCells:
    """Error cells and padded numbers of one sheet's XML (rows past `nrows` not looked at)."""
    cells = SheetCells()
    for attrs, value in _marked_cells(xml, [b"e", *(str(index).encode() for index in styles)]):
        kind = attrs.get("t", "n")
        style = attrs.get("s", "")
        formatter = styles.get(int(style)) if style.isdigit() else None
        if kind != "e" and (formatter is None or kind != "n"):
            continue
        ref = _REF.fullmatch(attrs.get("r", ""))
        if ref is None:  # a producer that leaves positions implied: read the sheet in order
            return _scan_in_order(xml, styles, nrows)
        row, column = int(ref.group(2)) - 1, column_index_from_string(ref.group(1).upper()) - 1
        if row < nrows:
            text = "" if value is None else unescape(value.group(1).decode("utf-8", "replace"))
            _note(cells, (row, column), kind == "e", text, formatter)
    return cells


def _marked_cells(
    xml: bytes, values: Iterable[bytes]
) -> Iterator[tuple[dict[str, str], re.Match[bytes] | None]]:
    """Each cell with an attribute whose value is one of `values` (e for t="e", a style's
    index for s="5"): its attributes, and its <v> element's match (None: it has none). The
    search is led by the literal "=", so the C regex engine skips the other cells fast.

    Linear in the XML, whatever it holds: each search resumes where the last one stopped, so
    a crafted sheet (a tag with a million ="e", cells never closed) cannot make it quadratic.
    """
    candidate = re.compile(rb"=\s*([\"'])(" + b"|".join(values) + rb")\1")
    tag = -1  # where the tag holding the last candidate starts
    searched = 0  # no "<" between here and the last candidate but at `tag`
    done = -1  # the last tag looked at
    closing = following = -1  # the first </c>, and <c, after the last place each was looked for
    for match in candidate.finditer(xml):
        before = xml.rfind(b"<", searched, match.start())
        searched = match.start()
        tag = before if before >= 0 else tag
        if tag <= done or not _CELL_TAG.match(xml, tag):
            continue
        done = tag
        end = xml.find(b">", match.end())
        if end < 0:
            return
        attrs = _attributes(xml[tag:end])
        if xml[end - 1 : end] == b"/":
            yield attrs, None
            continue
        if closing < end:
            found = _CELL_END.search(xml, end)
            closing = found.start() if found else len(xml)
        if following < end:
            found = _CELL_TAG.search(xml, end)
            following = found.start() if found else len(xml)
        yield attrs, _VALUE.search(xml, end, min(closing, following))


def _attributes(tag: bytes) -> dict[str, str]:
    return {
        _local(name.decode("utf-8", "replace").rpartition(":")[2]): unescape(
            (double if double is not None else single or b"").decode("utf-8", "replace")
        )
        for name, double, single in _ATTR.findall(tag)
    }


def _note(
    cells: SheetCells, at: tuple[int, int], is_error: bool, text: str, fmt: Formatter | None
) -> None:
    if is_error:
        code = text.strip()
        cells.errors[at] = CellError(code)
        if code and code not in _ENGINE_ERRORS:
            cells.engine_unknown.add(code)
        return
    try:
        number = float(text)
    except ValueError:
        return
    shown = fmt(number) if fmt is not None else None
    if shown is not None:
        cells.shown[at] = shown


def _scan_in_order(xml: bytes, styles: Mapping[int, Formatter], nrows: int) -> SheetCells:
    """The same, for a sheet whose cells (or rows) leave their position to their order."""
    cells = SheetCells()
    row, column = -1, -1
    try:
        for event, element in ElementTree.iterparse(io.BytesIO(xml), events=("start", "end")):  # noqa: S314 (see _xml)
            name = _local(element.tag)
            if event == "start":
                if name == "row":
                    given = element.get("r", "")
                    row = int(given) - 1 if given.isdigit() else row + 1
                    column = -1
                elif name == "c":
                    ref = _REF.fullmatch(element.get("r", ""))
                    column = (
                        column_index_from_string(ref.group(1).upper()) - 1 if ref else column + 1
                    )
                continue
            if name == "c" and row < nrows:
                kind = element.get("t", "n")
                style = element.get("s", "")
                fmt = styles.get(int(style)) if style.isdigit() else None
                if kind == "e" or (fmt is not None and kind == "n"):
                    value = next((e.text or "" for e in element if _local(e.tag) == "v"), "")
                    _note(cells, (row, column), kind == "e", value, fmt)
            if name == "row":
                element.clear()
    except ElementTree.ParseError as exc:
        raise ValueError(f"a sheet of the workbook is not XML: {exc}") from None
    return cells


def engine_safe(data: bytes, parts: Iterable[str]) -> bytes:
    """The workbook with each error the engine would refuse (#SPILL!...) written as #N/A in
    these sheet parts; the reader knows each cell's real error from scan_sheet."""
    targets = set(parts)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as patched,
    ):
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename in targets:
                content = _patch_errors(content)
            patched.writestr(info.filename, content)
    return out.getvalue()


def _patch_errors(xml: bytes) -> bytes:
    """Each error cell's value, if the engine would refuse it, made #N/A."""
    pieces: list[bytes] = []
    at = 0
    for attrs, value in _marked_cells(xml, [b"e"]):
        if attrs.get("t") != "e" or value is None:
            continue
        if value.group(1).decode("utf-8", "replace").strip() in _ENGINE_ERRORS:
            continue
        pieces += [xml[at : value.start(1)], b"#N/A"]
        at = value.end(1)
    pieces.append(xml[at:])
    return b"".join(pieces)
