"""Loading: config.yaml read by the strict YAML reader, ONBOARD_<SECTION>_<KEY> variables laid
over it, and the result validated by the settings models in one go; a mistake is a
ConfigError naming the key and the file or variable, never a traceback.

The environment is read here, not by pydantic-settings: each variable's name comes from its
key's model (never split on "_": keys hold underscores), its value is read as YAML (8, true,
null), a name in a section's ONBOARD_<SECTION>_ space that is no setting is refused, and a
message must say which variable a bad value came from. BaseSettings validates in its
constructor with no validation context (paths relative to the config file need one), its
sources read values as JSON and pass over names that match no field; what would remain of
it is a dictionary lookup."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError
from ..files import NotAFile, read_small
from .fields import Loading
from .keys import ENV_PREFIX, INLINE_SECRETS, SECTIONS, SETTINGS
from .messages import explain
from .settings import Config, names_simulator
from .yamlread import read_env_value, read_yaml

# The most onboard reads of a file that is only ever a few KB: a bigger one is not the file it
# should be (/dev/zero, a log named by mistake), and is refused rather than read into memory.
CONFIG_FILE_LIMIT = 1024 * 1024
_BY_VARIABLE = {s.env: s for s in SETTINGS.values() if s.env}


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read config.yaml (or only defaults when path is None) and apply ONBOARD_* overrides.

    With a file for a real tenant (graph.endpoint not "simulator"), auth.tenant_id,
    auth.client_id (but for a managed identity) and pass.timezone are required."""
    env = env or {}
    source = None if path is None else Path(path)
    raw = {} if source is None else _read(source)
    overrides = environment_overrides(env, raw)
    data = _overlaid(raw, overrides)
    graph = data.get("graph")
    endpoint = graph.get("endpoint") if isinstance(graph, dict) else None
    context = Loading(
        source=source,
        base=Path.cwd() if source is None else source.resolve().parent,
        # A file for a real tenant must say which; without a file nothing can be sent (the CLI
        # refuses), and the defaults serve to read sheets, list runs and serve the simulator.
        real=source is not None and not names_simulator(endpoint),
        env=dict(env),
    )
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        raise explain(exc, _where(source, overrides)) from None


def _read(source: Path) -> dict[str, Any]:
    try:
        text = read_small(source, CONFIG_FILE_LIMIT).decode("utf-8")
    except NotAFile as exc:
        raise ConfigError(f"cannot read config file {source}: it {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"cannot read config file {source}: {reason}") from None
    loaded = read_yaml(text, str(source))
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source}: expected sections like 'graph:' and 'auth:' at the top")
    _check_inline_secrets(loaded, source)
    return loaded


def environment_overrides(
    env: Mapping[str, str], raw: Mapping[str, Any]
) -> dict[str, tuple[str, Any]]:
    """The keys ONBOARD_* variables set, {dotted key: (variable, value read as YAML)}. A
    variable in a section's ONBOARD_<SECTION>_ space that is no setting is refused, listing
    the section's settings; one named like an inline secret is refused, saying where a
    secret comes from; one that a `*_env` key names as holding a secret is left alone."""
    found = {
        s.name: (variable, read_env_value(variable, env[variable]))
        for variable, s in _BY_VARIABLE.items()
        if variable in env
    }
    holders = _secret_variables(raw, found)
    for variable in env:
        section = next((s for s in SECTIONS if variable.startswith(_space(s))), None)
        if section is None or variable in _BY_VARIABLE or variable in holders:
            continue
        inline = next((s for s in INLINE_SECRETS if variable == _space(s.name)[:-1]), None)
        if inline is not None:
            raise ConfigError(
                f"environment variable {variable} is not read: a secret comes from the variable "
                f"that {inline.name}_env names, or the file {inline.name}_file names"
            )
        close = sorted(v for v in _BY_VARIABLE if v.startswith(_space(section)))
        raise ConfigError(
            f"environment variable {variable} is not a setting; "
            f"the {section} settings are {', '.join(close)}"
        )
    return found


def _space(name: str) -> str:
    """The start of the variables for a section, or (without its last "_") for a key."""
    return f"{ENV_PREFIX}{name.replace('.', '_')}_".upper()


def _secret_variables(raw: Mapping[str, Any], found: dict[str, tuple[str, Any]]) -> set[str]:
    """The variables the `*_env` keys name, from the environment, the file or the defaults."""
    names: set[str] = set()
    for secret in INLINE_SECRETS:
        key = f"{secret.name}_env"
        section = raw.get(secret.section)
        given = section.get(key.rpartition(".")[2]) if isinstance(section, dict) else None
        value = found[key][1] if key in found else given or SETTINGS[key].default
        if isinstance(value, str):
            names.add(value)
    return names


def _overlaid(raw: dict[str, Any], overrides: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """The file's sections with the variables' values laid over them (a section that is not
    a mapping stays as it is, for its own error)."""
    data = dict(raw)
    for key, (_, value) in overrides.items():
        section, _, name = key.partition(".")
        given = data.get(section)
        if given is None or isinstance(given, dict):
            data[section] = {**(given or {}), name: value}
    return data


def _where(
    source: Path | None, overrides: dict[str, tuple[str, Any]]
) -> Callable[[str | None], str]:
    """For error messages: the variable a key came from, else the file."""

    def where(key: str | None) -> str:
        if key in overrides:
            return f"environment variable {overrides[key][0]}"
        return str(source or "config")

    return where


def _check_inline_secrets(raw: dict[str, Any], source: Path) -> None:
    """A secret written in the config file is refused unless only its owner can read the file."""
    inline = [
        s.name
        for s in INLINE_SECRETS
        if isinstance(raw.get(s.section), dict) and raw[s.section].get(s.key) is not None
    ]
    if not inline or os.name == "nt":  # Windows: NTFS ACLs, not mode bits, guard the file
        return
    mode = stat.S_IMODE(source.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{source} holds a secret ({', '.join(inline)}) but other users can read it "
            f"(mode {mode:04o}): run 'chmod 600 {source}', or move the secret out of the file "
            f"(into the environment variable {inline[0]}_env names, or a file {inline[0]}_file "
            "names)"
        )
