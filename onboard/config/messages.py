"""pydantic's findings in onboard's words: the first mistake, naming the file or the ONBOARD_*
variable it came from, the key, what the key takes and the value given (never a secret's).
Never pydantic's own text: a ValidationError is read by its error types and locations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ..errors import ConfigError
from .fields import Kind
from .keys import SECTIONS, SETTINGS, Setting, bound
from .settings import Config

SHOWN_CHARS = 60  # a value quoted in an error message is cut to this length
_UNKNOWN = ("extra_forbidden", "invalid_key")
_QUOTE_IT = ": quote it to mean it as text"


def explain(error: ValidationError, where: Callable[[str | None], str]) -> ConfigError:
    """The first mistake in `error` as a ConfigError; `where(key)` names the file or the
    variable a key came from (`where(None)`: the file). Unknown sections and keys come first,
    then values in the order of the file's sections, then keys a real tenant must set, as
    they did before the settings were models."""
    found = error.errors(include_url=False)
    first = min(range(len(found)), key=lambda n: (_rank(found[n]), n))
    return ConfigError(_words(found[first], found, where))


def _rank(error: ErrorDetails) -> int:
    depth = len(error["loc"])
    if (error["type"] in _UNKNOWN and depth == 2) or (error["type"] == "model_type" and depth == 1):
        return 0  # a section that is not a mapping, or a key it does not have
    if error["type"] in _UNKNOWN and depth == 1:
        return 1  # a section that does not exist
    return 3 if error["type"] == "required" else 2


def _words(
    error: ErrorDetails, found: Sequence[ErrorDetails], where: Callable[[str | None], str]
) -> str:
    loc, kind = _by_name(error["loc"]), error["type"]
    if kind in _UNKNOWN:
        return _unknown(loc[:-1], found, where(None))
    if kind == "model_type" and len(loc) == 1:
        return f"{where(None)}: '{loc[0]}' must be a mapping of keys"
    setting = _setting_at(loc, error.get("ctx") or {})
    if setting is None:  # a mapping of keys inside a section (input.columns) is not one
        name = ".".join(map(str, loc))
        return f"{where(None)}: {name} must be a mapping of keys, got {_shown(error['input'])}"
    ctx = error.get("ctx") or {}
    at = f"{setting.section}.{ctx['at']}" if ctx.get("at") else setting.name
    if kind in ("problem", "required"):
        return f"{where(at)}: {setting.name} {ctx['problem']}"
    value = error["input"]
    shown = "(not shown)" if setting.kind is Kind.SECRET else _shown(value)
    return f"{where(at)}: {setting.name} {_trouble(setting, kind, ctx, value)}, got {shown}" + (
        _QUOTE_IT if _quote_it(setting, kind, value) else ""
    )


def _trouble(setting: Setting, kind: str, ctx: dict[str, Any], value: Any) -> str:
    low, high = bound(ctx.get("ge", setting.low)), bound(ctx.get("le", setting.high))
    if kind == "less_than_equal":
        return f"is too large: at most {high}"
    if kind == "greater_than_equal":
        return f"must be between {low} and {high}"
    if kind == "finite_number":
        return f"must be a finite number between {low} and {high}"
    if kind == "int_from_float":
        return f"must be a whole number between {low} and {high}"
    return f"must be {setting.wanted}{ctx.get('suffix', '')}"


def _quote_it(setting: Setting, kind: str, value: Any) -> bool:
    """A number given where text goes: probably text that YAML read as a number."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    texts = (Kind.TEXT, Kind.PATH, Kind.SECRET)
    return number and setting.kind in texts and kind in ("wanted", "string_type")


def _by_name(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A location as the file names it: "pass", not the attribute "pass_" (pydantic names
    the attribute when it validates a section's default)."""
    field = Config.model_fields.get(str(loc[0])) if loc else None
    return loc if field is None or field.alias is None else (field.alias, *loc[1:])


def _setting_at(loc: tuple[int | str, ...], ctx: dict[str, Any]) -> Setting | None:
    """The key an error is about: the longest start of its location that names one (a list's
    item or a union's branch follows it), or the key a whole section's check names."""
    if ctx.get("key"):
        return SETTINGS[f"{loc[0]}.{ctx['key']}"]
    for end in range(len(loc), 0, -1):
        setting = SETTINGS.get(".".join(map(str, loc[:end])))
        if setting is not None:
            return setting
    return None


def _unknown(parent: tuple[int | str, ...], found: Sequence[ErrorDetails], where: str) -> str:
    """Every unknown key beside the first one found, with the keys that are known there."""
    names = sorted(
        {
            str(e["loc"][-1])
            for e in found
            if e["type"] in _UNKNOWN and _by_name(e["loc"])[:-1] == parent
        }
    )
    if not parent:
        return f"{where}: unknown section(s): {', '.join(names)}; known: {', '.join(SECTIONS)}"
    dotted = ".".join(map(str, parent))
    inside = [name.removeprefix(f"{dotted}.") for name in SETTINGS if name.startswith(f"{dotted}.")]
    known = dict.fromkeys(name.split(".")[0] for name in inside)  # input's "columns" once
    return f"{where}: unknown key(s) in '{dotted}': {', '.join(names)}; known: {', '.join(known)}"


def _shown(value: Any) -> str:
    """A value as an error message quotes it: Python's repr, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 3]}..."
