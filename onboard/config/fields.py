"""What a setting accepts, as annotated types that pydantic checks: each carries its `Kind`
(the words an error message and the reference use for it), and the few checks pydantic has
no type for. A mistake is raised as a pydantic error that `messages` turns into words:
`wanted` (not of the key's kind), `problem` (of the right kind, but unusable) or `required`
(missing for a real tenant)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    Discriminator,
    Strict,
    Tag,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError, PydanticUseDefault

DateOrder = Literal["DMY", "MDY", "YMD"]
DATE_ORDERS: tuple[str, ...] = get_args(DateOrder)
MAX_SHEET_INDEX = 9_999


class Kind(Enum):
    """What a key accepts, in the words of its error messages and of the reference."""

    TEXT = "text"
    PATH = "a file or folder name"
    SECRET = "the secret as text"  # noqa: S105 (a description, not a secret)
    FLAG = "true or false"
    WHOLE = "a whole number"
    NUMBER = "a number"
    CHOICE = "one of"  # the message lists the choices instead
    SHEET = "a sheet name or a 0-based sheet index"
    HEADERS = "a list of header names"
    ADDRESSES = "a list of email addresses"
    ORDER_BY_FILE = "a mapping of file-name patterns to DMY, MDY or YMD"


@dataclass(frozen=True, slots=True)
class Loading:
    """What validation knows of the file being loaded (pydantic's validation context)."""

    source: Path | None  # the config file; None: the defaults alone
    base: Path  # relative paths are relative to it: the config file's folder
    real: bool  # a config file for a real tenant: it must name the tenant, the app, the zone
    env: Mapping[str, str] = field(default_factory=dict)  # to suggest this machine's zone


def loading(info: ValidationInfo) -> Loading | None:
    """The file being loaded; None for settings made in code (tests, `onboard init`)."""
    return info.context if isinstance(info.context, Loading) else None


def wanted(suffix: str = "") -> PydanticCustomError:
    """The value is not of its key's kind: the message says what the key takes (+ suffix)."""
    return PydanticCustomError("wanted", "must be of its kind{suffix}", {"suffix": suffix})


def problem(text: str, *, key: str = "", at: str = "") -> PydanticCustomError:
    """A value of the right kind that cannot be used: `text` follows the key's name (`key`,
    for a check of the whole section; `at`, the key whose file or variable is blamed)."""
    return PydanticCustomError("problem", "{problem}", {"problem": text, "key": key, "at": at})


def required(text: str, *, key: str = "") -> PydanticCustomError:
    """A key a real tenant needs is not set (reported only when nothing else is wrong)."""
    return PydanticCustomError("required", "{problem}", {"problem": text, "key": key, "at": ""})


def text_of(value: Any) -> str:
    """`value` if it is printable text; else the key's kind is wanted."""
    if not isinstance(value, str):
        raise wanted()
    if not value.isprintable():
        raise wanted(" without control characters")
    return value


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


def _null_is_default(value: Any) -> Any:
    if value is None or value == "":
        raise PydanticUseDefault()
    return value


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _capitals(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _whole(value: Any) -> Any:
    """A number, never text or true/false; 2.0 is 2 (pydantic refuses 2.5, inf and nan)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wanted()
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _path(value: Any, info: ValidationInfo) -> Path:
    """A file or folder name, ~ expanded, relative to the config file's folder."""
    name = text_of(str(value) if isinstance(value, Path) else value)
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # ~user of no such user, or no home folder to expand ~ to
        raise problem(
            f"{name!r}: its ~ cannot be expanded (no such user, or no home folder): write the "
            "full path"
        ) from None
    context = loading(info)
    return path if context is None or path.is_absolute() else context.base / path


def _clock(value: Any) -> time:
    # An unquoted 08:00 is text too: StrictLoader does not read base-60 numbers (YAML 1.1 would
    # read it as 480).
    if isinstance(value, time):
        return value
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text_of(value).strip())
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise problem(f"must be HH:MM (24-hour), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def _listed(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _orders(value: Any) -> tuple[tuple[str, str], ...]:
    """input.date_order_by_file as (pattern, order) pairs in the file's order, orders in
    capitals."""
    if value is None:
        return ()
    if isinstance(value, tuple):
        return value
    if not isinstance(value, dict):
        raise wanted()
    pairs: list[tuple[str, str]] = []
    for pattern, order in value.items():
        if not (isinstance(pattern, str) and pattern.strip() and pattern.isprintable()):
            raise wanted(": each pattern a file name, * and ? allowed")
        if not (isinstance(order, str) and order.strip().upper() in DATE_ORDERS):
            raise wanted(f": {pattern!r} must be {' | '.join(DATE_ORDERS)}")
        pairs.append((pattern.strip(), order.strip().upper()))
    return tuple(pairs)


# A key's kind is the first Kind in its annotation; its bounds, the Ge and Le in it.
Text = Annotated[str, Kind.TEXT, Strict(), AfterValidator(text_of)]
MaybeText = Annotated[Text | None, BeforeValidator(_blank_is_none)]
Stripped = BeforeValidator(_stripped)  # a choice may be written with spaces around it
Capitals = BeforeValidator(_capitals)  # ... and, for a date order, in any case
Flag = Annotated[bool, Kind.FLAG, Strict()]
Whole = Annotated[int, Kind.WHOLE, BeforeValidator(_whole)]
Number = Annotated[float, Kind.NUMBER, Strict(), AllowInfNan(False)]
PathName = Annotated[Path, Kind.PATH, BeforeValidator(_path)]
MaybePath = Annotated[PathName | None, BeforeValidator(_blank_is_none)]
NULL_IS_DEFAULT = BeforeValidator(_null_is_default)  # null (or "") stands for the default
DefaultPath = Annotated[PathName, NULL_IS_DEFAULT]
Clock = Annotated[time, Kind.TEXT, BeforeValidator(_clock)]
Headers = Annotated[tuple[Annotated[str, Strict()], ...], Kind.HEADERS, BeforeValidator(_listed)]
Addresses = Annotated[
    tuple[Annotated[str, Strict()], ...], Kind.ADDRESSES, BeforeValidator(_listed)
]
OrdersByFile = Annotated[tuple[tuple[str, str], ...], Kind.ORDER_BY_FILE, BeforeValidator(_orders)]
SheetIndex = Annotated[int, BeforeValidator(_whole), Ge(0), Le(MAX_SHEET_INDEX)]
Sheet = Annotated[
    Annotated[str, Strict(), AfterValidator(text_of), Tag("name")]
    | Annotated[SheetIndex, Tag("index")],
    Kind.SHEET,
    Discriminator(lambda value: "name" if isinstance(value, str) else "index"),
]
