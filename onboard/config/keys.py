"""Every key a config file can set, read off the settings models: its dotted name, what it
accepts, its default as a file writes it, its doc and the ONBOARD_* variable that overrides
it. The loader's messages, the environment overrides and the generated files use these, so
nothing about a key is written anywhere but on its field."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import NoneType
from typing import Any, Literal, cast, get_args, get_origin

from annotated_types import Ge, Le
from pydantic.fields import FieldInfo

from .fields import NULL_IS_DEFAULT, Kind
from .settings import Config, Settings

ENV_PREFIX = "ONBOARD_"


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of the file, as its field declares it."""

    name: str  # dotted: "run.concurrency", "input.columns.user"
    section: str
    kind: Kind
    default: Any  # as a file writes it: null, a number, text, a list
    doc: str
    nullable: bool
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    env: str | None = None  # the ONBOARD_* variable that overrides it; None: none does

    @property
    def key(self) -> str:
        """Its name within its section (or within input.columns)."""
        return self.name.rpartition(".")[2]

    @property
    def wanted(self) -> str:
        """What the key takes, in the words of messages and of the reference."""
        text = " | ".join(self.choices) if self.kind is Kind.CHOICE else self.kind.value
        if self.kind in (Kind.WHOLE, Kind.NUMBER) and self.low is not None:
            text += f" between {bound(self.low)} and {bound(self.high)}"
        return text + (" (or null)" if self.nullable else "")

    @property
    def summary(self) -> str:
        """The first sentence of its doc: the comment on its line in a config file."""
        return first_sentence(self.doc)


def first_sentence(text: str | None) -> str:
    return (text or "").partition(". ")[0].removesuffix(".")


def bound(number: float | None) -> str:
    return str(int(number)) if number is not None and float(number).is_integer() else str(number)


def _parts(annotation: Any) -> Iterator[Any]:
    """Every type and annotation item inside `annotation`, outermost first."""
    yield annotation
    if get_origin(annotation) is not Literal:
        for arg in get_args(annotation):
            yield from _parts(arg)


def _plain(value: Any) -> Any:
    """A default as YAML writes it: paths as text, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _setting(name: str, section: str, field: FieldInfo, env: bool) -> Setting:
    parts = [*field.metadata, *_parts(field.annotation)]
    literal = next((p for p in parts if get_origin(p) is Literal), None)
    kind = next((p for p in parts if isinstance(p, Kind)), Kind.CHOICE)
    return Setting(
        name=name,
        section=section,
        kind=kind,
        default=_plain(field.default),
        doc=field.description or "",
        nullable=field.default is None or NoneType in parts or NULL_IS_DEFAULT in parts,
        low=next((cast(float, p.ge) for p in parts if isinstance(p, Ge)), None),
        high=next((cast(float, p.le) for p in parts if isinstance(p, Le)), None),
        choices=get_args(literal) if literal is not None else (),
        env=f"{ENV_PREFIX}{name.replace('.', '_')}".upper() if env else None,
    )


def _settings(model: type[Settings], prefix: str, section: str) -> Iterator[Setting]:
    for key, field in model.model_fields.items():
        name = f"{prefix}{field.alias or key}"
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, Settings):
            yield from _settings(inner, f"{name}.", section or name)
        else:
            # A secret's own value never comes from the environment; nor do the column lists.
            env = prefix.count(".") == 1 and Kind.SECRET not in field.metadata
            yield _setting(name, section, field, env)


SECTIONS: dict[str, type[Settings]] = {
    field.alias or name: field.annotation
    for name, field in Config.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Settings)
}
SETTINGS: dict[str, Setting] = {
    s.name: s for name, model in SECTIONS.items() for s in _settings(model, f"{name}.", name)
}
# Keys that hold a secret inline: allowed only in an owner-only config file, never from ONBOARD_*.
INLINE_SECRETS = tuple(s for s in SETTINGS.values() if s.kind is Kind.SECRET)


def config_keys() -> list[str]:
    """Every key a config file can set, dotted (``input.columns.user`` for each column list)."""
    return list(SETTINGS)


def default_value(key: str) -> Any:
    """The default of a dotted key, as config_keys() names it and a file would write it."""
    return copy.deepcopy(SETTINGS[key].default)


def env_override_names() -> list[str]:
    """Every ONBOARD_* variable that overrides a config key (for the docs and tests)."""
    return [s.env for s in SETTINGS.values() if s.env]
