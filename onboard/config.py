"""Configuration: config.yaml, named defaults, and ONBOARD_* environment overrides.

Every scalar key can be overridden by an environment variable named
``ONBOARD_<SECTION>_<KEY>`` in upper case, e.g. ``ONBOARD_AUTH_TENANT_ID`` or
``ONBOARD_RUN_CONCURRENCY``; the value is read as YAML (so ``8``, ``true``, ``null`` work).
Secrets never live here: only the *names* of the variables or files that hold them.

The defaults describe a real tenant: ``graph.endpoint`` null means the cloud's Graph root, and
only ``graph.endpoint: simulator`` uses the built-in simulator. A config file for a real tenant
must name the tenant, the app and the time zone of the start dates (`pass.timezone`): nothing
about a real tenant is guessed. Without a file (``load_config(None)``) the defaults name no
tenant: enough to read and check a sheet, list runs or serve the simulator, never to send.

YAML is read by a SafeLoader that refuses anchors and aliases (an alias bomb expands a few
hundred bytes into gigabytes) and duplicate keys (a second ``pass:`` would silently replace
the first), in the file and in every ONBOARD_* value, and reads numbers as YAML 1.2 does
(``0120`` is 120, not octal 80). Every value is then checked against its key's kind and
bounds (SETTINGS) before any is used: a mistake names the key and the file or variable.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import math
import os
import re
import ssl
import stat
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import yaml

from . import redact
from .errors import ConfigError
from .files import NotAFile, read_small
from .rate import DEFAULT_MAX_RATE

log = logging.getLogger(__name__)

DEFAULT_LIFETIME_MINUTES = 480
DEFAULT_START_TIME = "08:00"
DEFAULT_CONCURRENCY = 20
DEFAULT_BATCH_SIZE = 1
MAX_BATCH_SIZE = 20
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_BACKOFF_SECONDS = 1.0
DEFAULT_BACKOFF_MAX_SECONDS = 60.0
# After a create whose answer was lost, wait this long before asking Graph which pass it holds.
DEFAULT_SETTLE_SECONDS = 10.0
DEFAULT_STOP_GRACE_SECONDS = 15.0
DEFAULT_STATE_PATH = "state/onboard-journal.sqlite"
# Limits on an input file: far above any month's new hires, far below what could exhaust memory.
DEFAULT_MAX_ROWS = 200_000
DEFAULT_MAX_MB = 200
MIN_LIFETIME_MINUTES = 10
MAX_LIFETIME_MINUTES = 43200
SIMULATOR = "simulator"
# The most onboard reads of a file that is only ever a few KB: a bigger one is not the file it
# should be (/dev/zero, a log named by mistake), and is refused rather than read into memory.
CONFIG_FILE_LIMIT = 1024 * 1024
SECRET_FILE_LIMIT = 64 * 1024
CERTIFICATE_FILE_LIMIT = 10 * 1024 * 1024
# With the simulator (or no config file at all), a pass.timezone left unset means UTC; a real
# tenant must choose its zone.
SIMULATOR_TIMEZONE = "UTC"
EXAMPLE_TIMEZONE = "Europe/London"  # suggested when this machine's own zone cannot be told
DEFAULT_CLIENT_SECRET_ENV = "ONBOARD_CLIENT_SECRET"  # noqa: S105 (a variable's name)
ENV_PREFIX = "ONBOARD_"


@dataclass(frozen=True, slots=True)
class Cloud:
    graph_root: str
    authority_host: str


# Clouds where Graph documents the pass endpoints only in beta (China, operated by 21Vianet).
BETA_ONLY_CLOUDS = frozenset({"china"})
CLOUDS: dict[str, Cloud] = {
    "global": Cloud("https://graph.microsoft.com", "https://login.microsoftonline.com"),
    "usgov": Cloud("https://graph.microsoft.us", "https://login.microsoftonline.us"),
    "usgov-dod": Cloud("https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
    "china": Cloud(
        "https://microsoftgraph.chinacloudapi.cn", "https://login.partner.microsoftonline.cn"
    ),
}

DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "user": ("userPrincipalName", "UPN", "Work Email", "Email"),
    "start_date": ("Start Date", "Hire Date"),
    "lifetime_minutes": ("Lifetime", "Lifetime (minutes)"),
    "usable_once": ("One-time", "Usable Once"),
    "display_name": ("Display Name", "Name"),
    # Used with input.match_by mail / employeeId: the column the directory is searched by.
    "mail": ("Mail", "Email", "Work Email", "E-mail"),
    "employee_id": ("employeeId", "Employee ID", "Employee Number", "Employee No"),
}
MATCH_BY = ("upn", "mail", "employeeId")
MATCH_COLUMN = {"upn": "user", "mail": "mail", "employeeId": "employee_id"}
DATE_ORDERS = ("DMY", "MDY", "YMD")
EXISTING = ("skip", "replace")

_DEFAULTS: dict[str, dict[str, Any]] = {
    # endpoint null: the cloud's Graph root. Only an explicit "simulator" simulates.
    "graph": {"endpoint": None, "cloud": "global", "api_version": "v1.0", "ca_bundle": None},
    "auth": {
        "tenant_id": None,
        "client_id": None,
        "method": "client_secret",
        "client_secret_env": DEFAULT_CLIENT_SECRET_ENV,
        "client_secret_file": None,
        "client_secret": None,
        "certificate_path": None,
        "certificate_password_env": None,
        "certificate_password_file": None,
        "certificate_password": None,
        "authority": None,
    },
    "input": {
        "sheet": None,
        "columns": {k: list(v) for k, v in DEFAULT_COLUMNS.items()},
        "max_rows": DEFAULT_MAX_ROWS,
        "max_mb": DEFAULT_MAX_MB,
        "date_order": None,
        # {file-name pattern: order} for the files whose dates are written otherwise (a New
        # York sheet in a run with London's): null, every file is read by date_order.
        "date_order_by_file": None,
        "match_by": "upn",
    },
    "pass": {
        "lifetime_minutes": DEFAULT_LIFETIME_MINUTES,
        "usable_once": True,
        "start_time": DEFAULT_START_TIME,
        "timezone": None,  # required for a real tenant; SIMULATOR_TIMEZONE with the simulator
        "existing": "skip",
        "allow_existing_accounts": False,
    },
    "run": {
        "concurrency": DEFAULT_CONCURRENCY,
        "max_rate": DEFAULT_MAX_RATE,
        "batch_size": DEFAULT_BATCH_SIZE,
        "max_attempts": DEFAULT_MAX_ATTEMPTS,
        "timeout_seconds": DEFAULT_TIMEOUT_SECONDS,
        "backoff_seconds": DEFAULT_BACKOFF_SECONDS,
        "backoff_max_seconds": DEFAULT_BACKOFF_MAX_SECONDS,
        "settle_seconds": DEFAULT_SETTLE_SECONDS,
        "stop_grace_seconds": DEFAULT_STOP_GRACE_SECONDS,
        "due_within_days": None,
    },
    "output": {
        "dir": "audit",
        "password_env": None,
        "password_file": None,
        "password": None,
        "redacted_copy": False,
    },
    "state": {"path": DEFAULT_STATE_PATH},
    "simulator": {
        "tenant": None,
        "latency_ms": 0,
        "fault_rate": 0.0,
        "lost_response_rate": 0.0,
        "throttle_rate": None,
        "throttle_burst": 100,
        "retry_after_seconds": None,
        "seed": None,
    },
}


class Kind(Enum):
    """What a setting accepts. Every value, from the file or an ONBOARD_* variable, is checked
    against its key's kind (SETTINGS) before it is used, so a list never names a file and an
    infinite number never reaches a timer."""

    TEXT = "text"
    PATH = "a file or folder name"
    SECRET = "the secret as text"  # noqa: S105 (a description, not a secret)
    FLAG = "true or false"
    WHOLE = "a whole number"
    NUMBER = "a number"
    SHEET = "a sheet name or a 0-based sheet index"
    HEADERS = "a list of header names"
    ORDER_BY_FILE = "a mapping of file-name patterns to DMY, MDY or YMD"


@dataclass(frozen=True, slots=True)
class Setting:
    """One key: its kind, whether null is allowed, and for a number its least and greatest value."""

    kind: Kind
    nullable: bool = False
    low: float = 0
    high: float = 0


def _text(*, nullable: bool = True) -> Setting:
    return Setting(Kind.TEXT, nullable)


def _path() -> Setting:
    return Setting(Kind.PATH, nullable=True)


def _whole(low: int, high: int, *, nullable: bool = False) -> Setting:
    return Setting(Kind.WHOLE, nullable, low, high)


def _number(low: float, high: float, *, nullable: bool = False) -> Setting:
    return Setting(Kind.NUMBER, nullable, low, high)


MAX_WAIT_SECONDS = 3600.0  # no timeout, backoff, settle or grace time onboard waits is longer
MAX_SHEET_INDEX = 9_999
# Every key a config file can set, with what it accepts (the defaults are in _DEFAULTS).
SETTINGS: dict[str, Setting] = {
    "graph.endpoint": _text(),
    "graph.cloud": _text(nullable=False),
    "graph.api_version": _text(nullable=False),
    "graph.ca_bundle": _path(),
    "auth.tenant_id": _text(),
    "auth.client_id": _text(),
    "auth.method": _text(nullable=False),
    "auth.client_secret_env": _text(),
    "auth.client_secret_file": _path(),
    "auth.client_secret": Setting(Kind.SECRET, nullable=True),
    "auth.certificate_path": _path(),
    "auth.certificate_password_env": _text(),
    "auth.certificate_password_file": _path(),
    "auth.certificate_password": Setting(Kind.SECRET, nullable=True),
    "auth.authority": _text(),
    "input.sheet": Setting(Kind.SHEET, nullable=True, high=MAX_SHEET_INDEX),
    "input.columns": Setting(Kind.HEADERS),
    "input.max_rows": _whole(1, 10_000_000),
    "input.max_mb": _number(0.001, 100_000),
    "input.date_order": _text(),
    "input.date_order_by_file": Setting(Kind.ORDER_BY_FILE, nullable=True),
    "input.match_by": _text(nullable=False),
    "pass.lifetime_minutes": _whole(MIN_LIFETIME_MINUTES, MAX_LIFETIME_MINUTES),
    "pass.usable_once": Setting(Kind.FLAG),
    "pass.start_time": _text(nullable=False),
    "pass.timezone": _text(),
    "pass.existing": _text(nullable=False),
    "pass.allow_existing_accounts": Setting(Kind.FLAG),
    "run.concurrency": _whole(1, 256),
    "run.max_rate": _number(0.1, 10_000),
    "run.batch_size": _whole(1, MAX_BATCH_SIZE),
    "run.max_attempts": _whole(1, 100),
    "run.timeout_seconds": _number(0.1, MAX_WAIT_SECONDS),
    "run.backoff_seconds": _number(0, MAX_WAIT_SECONDS),
    "run.backoff_max_seconds": _number(0, MAX_WAIT_SECONDS),
    "run.settle_seconds": _number(0, MAX_WAIT_SECONDS),
    "run.stop_grace_seconds": _number(0, MAX_WAIT_SECONDS),
    "run.due_within_days": _whole(0, 366, nullable=True),
    "output.dir": _path(),
    "output.password_env": _text(),
    "output.password_file": _path(),
    "output.password": Setting(Kind.SECRET, nullable=True),
    "output.redacted_copy": Setting(Kind.FLAG),
    "state.path": _path(),
    "simulator.tenant": _path(),
    "simulator.latency_ms": _number(0, 60_000),
    "simulator.fault_rate": _number(0, 1),
    "simulator.lost_response_rate": _number(0, 1),
    "simulator.throttle_rate": _number(0.001, 1_000_000, nullable=True),
    "simulator.throttle_burst": _whole(1, 1_000_000),
    "simulator.retry_after_seconds": _number(0, MAX_WAIT_SECONDS, nullable=True),
    "simulator.seed": _whole(0, 2**63 - 1, nullable=True),
}
SHOWN_CHARS = 60  # a value quoted in an error message is cut to this length

AUTH_METHODS = ("client_secret", "certificate", "managed_identity")
# Keys that hold a secret inline: allowed only in an owner-only config file, never from ONBOARD_*.
INLINE_SECRETS = (
    ("auth", "client_secret"),
    ("auth", "certificate_password"),
    ("output", "password"),
)
_UNSAFE_TENANTS = {"common", "organizations", "consumers"}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


@dataclass(frozen=True, slots=True)
class GraphSettings:
    endpoint: str = CLOUDS["global"].graph_root
    cloud: str = "global"
    api_version: str = "v1.0"
    ca_bundle: Path | None = None

    @property
    def is_simulator(self) -> bool:
        return self.endpoint == SIMULATOR

    @property
    def graph_root(self) -> str:
        return CLOUDS[self.cloud].graph_root


@dataclass(frozen=True, slots=True)
class Secret:
    """Where one secret is read from: a file, else an environment variable (or, from an
    owner-only config file, inline). Its repr and `where` never show the value."""

    key: str  # the config key, e.g. "auth.client_secret"
    env: str | None = None
    file: Path | None = None
    inline: str | None = field(default=None, repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.inline is not None or self.file or self.env)

    @property
    def where(self) -> str:
        if self.inline is not None:
            return f"{self.key} in the config file"
        if self.file is not None:
            return f"the file {self.file} ({self.key}_file)"
        if self.env:
            return f"the environment variable {self.env} ({self.key}_env)"
        return "nowhere (not configured)"

    def read(self, environ: Mapping[str, str]) -> str | None:
        """The secret; None when none is configured. Raises ConfigError when one is
        configured but missing or empty."""
        if self.inline is not None:
            value: str | None = self.inline
        elif self.file is not None:
            try:
                data = read_small(self.file, SECRET_FILE_LIMIT)
                value = data.decode("utf-8").rstrip("\r\n")
                mode = stat.S_IMODE(self.file.stat().st_mode)
            except NotAFile as exc:
                raise ConfigError(f"cannot read {self.where}: it {exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise ConfigError(f"cannot read {self.where}: {reason}") from None
            if mode & 0o077 and os.name != "nt":
                log.warning(
                    "%s can be read by other users (mode %04o): chmod 600 it", self.where, mode
                )
        elif self.env:
            value = environ.get(self.env)
        else:
            return None
        if not value:
            raise ConfigError(f"{self.key} is read from {self.where}, which is not set or empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes from the environment that are not UTF-8
            raise ConfigError(f"{self.key} from {self.where} is not UTF-8 text") from None
        redact.remember(value)
        return value


@dataclass(frozen=True, slots=True)
class AuthSettings:
    tenant_id: str | None = None
    client_id: str | None = None
    method: str = "client_secret"
    client_secret: Secret = Secret("auth.client_secret", env=DEFAULT_CLIENT_SECRET_ENV)
    certificate_path: Path | None = None
    certificate_password: Secret = Secret("auth.certificate_password")
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class InputSettings:
    sheet: str | int | None = None
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    max_rows: int = DEFAULT_MAX_ROWS
    max_mb: float = DEFAULT_MAX_MB
    date_order: str | None = None  # DMY | MDY | YMD: how to read dates written as text
    # (file-name pattern, order), in the file's order: the order of the files each pattern
    # names, instead of date_order
    date_order_by_file: tuple[tuple[str, str], ...] = ()
    match_by: str = "upn"  # upn | mail | employeeId

    @property
    def key_column(self) -> str:
        """The column that names the person: the user column, or the one looked up in Graph."""
        return MATCH_COLUMN[self.match_by]


@dataclass(frozen=True, slots=True)
class PassSettings:
    lifetime_minutes: int = DEFAULT_LIFETIME_MINUTES
    usable_once: bool = True
    start_time: time = time(8, 0)
    timezone: str = SIMULATOR_TIMEZONE
    existing: str = "skip"  # a user who holds a usable pass: skip the row, or replace the pass
    # Issue passes for users who hold a directory role or already have sign-in methods (not
    # new hires): off, so a row added to HR's sheet cannot take over an admin's account.
    allow_existing_accounts: bool = False

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class RunSettings:
    concurrency: int = DEFAULT_CONCURRENCY
    max_rate: float = DEFAULT_MAX_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    backoff_max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    due_within_days: int | None = None


@dataclass(frozen=True, slots=True)
class OutputSettings:
    dir: Path = Path("audit")
    password: Secret = Secret("output.password")  # encrypts the audit workbook when configured
    redacted_copy: bool = False


@dataclass(frozen=True, slots=True)
class StateSettings:
    path: Path = Path(DEFAULT_STATE_PATH)


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    tenant: Path | None = None
    latency_ms: float = 0
    fault_rate: float = 0.0
    lost_response_rate: float = 0.0
    throttle_rate: float | None = None
    throttle_burst: int = 100
    retry_after_seconds: float | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    graph: GraphSettings = field(default_factory=GraphSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    input: InputSettings = field(default_factory=InputSettings)
    pass_: PassSettings = field(default_factory=PassSettings)
    run: RunSettings = field(default_factory=RunSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    state: StateSettings = field(default_factory=StateSettings)
    source: Path | None = None

    def public_settings(self) -> list[tuple[str, str]]:
        """Settings worth recording in the audit (names of secret variables, never values)."""
        rows: list[tuple[str, str]] = [("config file", str(self.source or "(defaults)"))]
        sections: list[tuple[str, Any]] = [
            ("graph", self.graph),
            ("auth", self.auth),
            ("input", self.input),
            ("pass", self.pass_),
            ("run", self.run),
            ("output", self.output),
            ("state", self.state),
        ]
        if self.graph.is_simulator:
            sections.append(("simulator", self.simulator))
        for section, obj in sections:
            for name in obj.__dataclass_fields__:
                value = getattr(obj, name)
                if isinstance(value, Secret):
                    value = value.where if value.configured else None
                elif isinstance(value, Mapping):
                    value = "; ".join(f"{k}: {', '.join(v)}" for k, v in value.items())
                elif isinstance(value, time):
                    value = f"{value:%H:%M}"
                rows.append((f"{section}.{name}", "" if value is None else str(value)))
        return rows


class _Refused(yaml.MarkedYAMLError):
    """YAML that is valid but refused: an anchor, an alias, or a key given twice. `problem`
    says what and on which line."""


def _refuse(what: str, mark: Any) -> _Refused:
    return _Refused(
        problem=f"{what} on line {mark.line + 1}: anchors and aliases are not allowed here",
        problem_mark=mark,
    )


_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Numbers as YAML 1.2 reads them, not YAML 1.1: 0120 is 120 (not octal 80: nothing in this file
# is ever octal, and a person who writes 0120 minutes means 120), 08:30 is text (not the base-60
# number 510), 1e3 is a number. Octal and hexadecimal only with their 0o / 0x prefixes.
_INT = re.compile(r"[-+]?(?:[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?$"
    r"|[-+]?\.(?:inf|Inf|INF)$|\.(?:nan|NaN|NAN)$"
)


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing anchors and aliases (checked as each node is composed,
    before anything is built, so an alias bomb never expands) and keys given twice."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise _refuse(f"an alias (*{event.anchor})", mark)
        if getattr(event, "anchor", None) is not None:
            raise _refuse(f"an anchor (&{event.anchor})", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # not a name (the settings checks refuse it), or a literal '<<:' merge
            key = self.construct_object(key_node)
            if key in seen:
                raise _Refused(
                    problem=f"'{key}' is given twice, on line {seen[key].start_mark.line + 1} "
                    f"and on line {key_node.start_mark.line + 1}: keep one",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:  # more digits than Python converts (4300): no setting is near that
            raise _Refused(
                problem=f"a number of {len(digits)} digits on line {node.start_mark.line + 1}: "
                "too large",
                problem_mark=node.start_mark,
            ) from None


# Its own copy of the resolvers (SafeLoader's stay as they are), with the YAML 1.2 numbers.
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
StrictLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+.0123456789"))
StrictLoader.add_constructor(_INT_TAG, StrictLoader.construct_yaml_int)


def _yaml_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    """Only the problem and where it is: PyYAML's own message quotes the line, which may hold
    an inline secret."""
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    if isinstance(exc, _Refused):
        return ConfigError(f"{where}: {problem}")
    mark = getattr(exc, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return ConfigError(f"{where} is not valid YAML: {problem}{at}")


def read_yaml(text: str, where: str) -> Any:
    """`text` read as YAML by StrictLoader; a ConfigError naming `where` and the line if not."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, where) from None
    except RecursionError:  # [[[[... nested thousands deep: no configuration looks like that
        raise ConfigError(f"{where}: the YAML is nested too deeply to be a configuration") from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read config.yaml (or only defaults when path is None) and apply ONBOARD_* overrides.

    With a file for a real tenant (graph.endpoint not "simulator"), auth.tenant_id,
    auth.client_id (but for a managed identity) and pass.timezone are required."""
    env = env or {}
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source: Path | None = None
    if path is not None:
        source = Path(path)
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
        raw = loaded
        base = source.resolve().parent
        _check_inline_secrets(raw, source)
    merged = _merge(raw, source)
    overrides = _apply_env(merged, env)
    return _build(merged, base, source, overrides, env)


def _merge(raw: dict[str, Any], source: Path | None) -> dict[str, dict[str, Any]]:
    where = source or "config"
    merged: dict[str, dict[str, Any]] = {}
    for section, defaults in _DEFAULTS.items():
        given = raw.get(section)
        if given is None:  # an empty section
            given = {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: '{section}' must be a mapping of keys")
        unknown = {str(key) for key in given} - set(defaults)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) in '{section}': {', '.join(sorted(unknown))}; "
                f"known: {', '.join(defaults)}"
            )
        section_values = dict(defaults)
        section_values.update(given)
        merged[section] = section_values
    unknown_sections = {str(section) for section in raw} - set(_DEFAULTS)
    if unknown_sections:
        raise ConfigError(
            f"{where}: unknown section(s): {', '.join(sorted(unknown_sections))}; "
            f"known: {', '.join(_DEFAULTS)}"
        )
    columns = dict(DEFAULT_COLUMNS)
    given_columns = merged["input"]["columns"]
    if given_columns is None:
        given_columns = {}
    if not isinstance(given_columns, dict):
        raise ConfigError(f"{where}: input.columns must map a field to a list of header names")
    for key, names in given_columns.items():
        if key not in DEFAULT_COLUMNS:
            raise ConfigError(
                f"{where}: unknown column field '{key}'; known: {', '.join(DEFAULT_COLUMNS)}"
            )
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}: input.columns.{key} must be a list of header names")
        columns[key] = tuple(names)
    merged["input"]["columns"] = columns
    return merged


def _apply_env(
    merged: dict[str, dict[str, Any]], env: Mapping[str, str]
) -> dict[tuple[str, str], str]:
    """Apply ONBOARD_<SECTION>_<KEY> variables; return which keys they set, by variable name."""
    overrides: dict[tuple[str, str], str] = {}
    known: set[str] = set()
    for section, values in merged.items():
        for key in values:
            if (section == "input" and key == "columns") or (section, key) in INLINE_SECRETS:
                continue
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            known.add(name)
            if name in env:
                overrides[(section, key)] = name
                values[key] = _env_value(name, env[name])
    # The variables that hold secrets (any other value is refused, naming its key, in _build).
    named = [merged[section][f"{key}_env"] for section, key in INLINE_SECRETS]
    secrets = {name for name in named if isinstance(name, str)}
    prefixes = tuple(f"{ENV_PREFIX}{section.upper()}_" for section in merged)
    for name in env:
        if name.startswith(prefixes) and name not in known and name not in secrets:
            section = next(s for s in merged if name.startswith(f"{ENV_PREFIX}{s.upper()}_"))
            inline = next(
                (k for s, k in INLINE_SECRETS if name == f"{ENV_PREFIX}{s}_{k}".upper()), None
            )
            if inline is not None:
                raise ConfigError(
                    f"environment variable {name} is not read: a secret comes from the variable "
                    f"that {section}.{inline}_env names, or the file {section}.{inline}_file names"
                )
            close = sorted(n for n in known if n.startswith(f"{ENV_PREFIX}{section.upper()}_"))
            raise ConfigError(
                f"environment variable {name} is not a setting; "
                f"the {section} settings are {', '.join(close)}"
            )
    return overrides


def _env_value(name: str, text: str) -> Any:
    """An ONBOARD_* value read as YAML; text that is not YAML is taken as it is, but an anchor,
    an alias or a key given twice is refused, naming the variable."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
    except _Refused as exc:
        raise _yaml_error(exc, f"environment variable {name}") from None
    except RecursionError:
        raise ConfigError(
            f"environment variable {name}: the YAML is nested too deeply to be a setting"
        ) from None
    except yaml.YAMLError:
        return text


def env_override_names() -> list[str]:
    """Every ONBOARD_* variable that overrides a config key (for the docs and tests)."""
    return [
        f"{ENV_PREFIX}{section}_{key}".upper()
        for section, values in _DEFAULTS.items()
        for key in values
        if not (section == "input" and key == "columns") and (section, key) not in INLINE_SECRETS
    ]


def config_keys() -> list[str]:
    """Every key a config file can set, dotted (``input.columns.user`` for each column list)."""
    return [
        f"{section}.{key}.{column}" if isinstance(value, dict) else f"{section}.{key}"
        for section, values in _DEFAULTS.items()
        for key, value in values.items()
        for column in (value if isinstance(value, dict) else [None])
    ]


def default_value(key: str) -> Any:
    """The default of a dotted key, as config_keys() names it."""
    value: Any = _DEFAULTS
    for part in key.split("."):
        value = value[part]
    return copy.deepcopy(value)


INIT_TEMPLATE = "config.yaml.j2"


@dataclass(frozen=True, slots=True)
class TenantSetup:
    """What `onboard init` writes for a real tenant; every other key keeps its default."""

    tenant_id: str
    client_id: str | None  # None only for a system-assigned managed identity
    timezone: str
    method: str = "client_secret"
    certificate_path: str | None = None
    cloud: str = "global"


def render_config(setup: TenantSetup, permissions: Sequence[tuple[str, str]] = ()) -> str:
    """A commented config.yaml for a real tenant, from the template shipped in the package:
    every key, with its default (or the setup's value) and a one-line comment, and the Graph
    permissions to grant (`permissions`: name, what for). It names where the secret comes
    from, never the secret."""
    values = copy.deepcopy(_DEFAULTS)
    values["graph"]["cloud"] = setup.cloud
    if setup.cloud in BETA_ONLY_CLOUDS:
        values["graph"]["api_version"] = "beta"  # the only version that has the pass endpoints
    values["auth"].update(
        tenant_id=setup.tenant_id,
        client_id=setup.client_id,
        method=setup.method,
        certificate_path=setup.certificate_path,
    )
    values["pass"]["timezone"] = setup.timezone
    environment = jinja2.Environment(  # noqa: S701 (YAML, not HTML: values go through |yaml)
        loader=jinja2.PackageLoader("onboard", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["yaml"] = yaml_scalar
    template = environment.get_template(INIT_TEMPLATE)
    return template.render(
        c=values, setup=setup, clouds=CLOUDS, cloud=CLOUDS[setup.cloud], permissions=permissions
    )


def yaml_scalar(value: Any) -> str:
    """`value` as YAML on one line: quoted where YAML would misread it ('8:00'), lists in
    brackets, None as null, whole numbers without '.0'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 60, as a person writes it, not 60.0
    text = yaml.safe_dump(value, default_flow_style=True, width=2**16, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _checked(key: str, value: Any, where: str) -> Any:
    """`value` for the dotted `key` if it is of the key's kind (SETTINGS), a whole number as an
    int; else a ConfigError naming `where` (the file or the variable) and the key. A secret's
    value is never quoted."""
    setting = SETTINGS[key]
    kind = setting.kind
    if value is None and setting.nullable:
        return None
    shown = "(not shown)" if kind is Kind.SECRET else _shown(value)

    def refuse(problem: str, hint: str = "") -> ConfigError:
        return ConfigError(f"{where}: {key} {problem}, got {shown}{hint}")

    wanted = f"must be {kind.value}"
    if kind in (Kind.WHOLE, Kind.NUMBER):
        wanted += f" between {_bound(setting.low)} and {_bound(setting.high)}"
    wanted += " (or null)" if setting.nullable else ""
    if kind is Kind.FLAG:
        if not isinstance(value, bool):
            raise refuse(wanted)
        return value
    if kind in (Kind.WHOLE, Kind.NUMBER) or (kind is Kind.SHEET and not isinstance(value, str)):
        return _checked_number(setting, value, refuse, wanted)
    if kind is Kind.HEADERS:
        return value  # input.columns: checked as the file is merged (_merge)
    if kind is Kind.ORDER_BY_FILE:
        return _checked_orders(value, refuse, wanted)
    if not isinstance(value, str):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        raise refuse(wanted, ": quote it to mean it as text" if number else "")
    if kind is not Kind.SECRET and not value.isprintable():
        raise refuse(f"{wanted} without control characters")
    return value


def _checked_orders(
    value: Any, refuse: Callable[[str], Exception], wanted: str
) -> tuple[tuple[str, str], ...]:
    """input.date_order_by_file as (pattern, order) pairs, the order in capitals."""
    if not isinstance(value, dict):
        raise refuse(wanted)
    pairs: list[tuple[str, str]] = []
    for pattern, order in value.items():
        if not (isinstance(pattern, str) and pattern.strip() and pattern.isprintable()):
            raise refuse(f"{wanted}: each pattern a file name, * and ? allowed")
        if not (isinstance(order, str) and order.strip().upper() in DATE_ORDERS):
            raise refuse(f"{wanted}: {pattern!r} must be {' | '.join(DATE_ORDERS)}")
        pairs.append((pattern.strip(), order.strip().upper()))
    return tuple(pairs)


def _checked_number(
    setting: Setting, value: Any, refuse: Callable[[str], Exception], wanted: str
) -> int | float:
    whole = setting.kind is not Kind.NUMBER
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse(wanted)
    low, high = _bound(setting.low), _bound(setting.high)
    if not math.isfinite(value):
        raise refuse(f"must be a finite number between {low} and {high}")
    if whole and value != int(value):
        raise refuse(f"must be a whole number between {low} and {high}")
    if value > setting.high:
        raise refuse(f"is too large: at most {high}")
    if value < setting.low:
        raise refuse(f"must be between {low} and {high}")
    return int(value) if whole else float(value)


def _bound(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _shown(value: Any) -> str:
    """A value as an error message quotes it: Python's repr, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 3]}..."


def _build(
    m: dict[str, dict[str, Any]],
    base: Path,
    source: Path | None,
    overrides: dict[tuple[str, str], str],
    env: Mapping[str, str],
) -> Config:
    where = str(source or "config")

    def at(section: str, key: str) -> str:
        """Where a value came from, for error messages: the file or the variable."""
        name = overrides.get((section, key))
        return f"environment variable {name}" if name else where

    for section, values in m.items():  # every key, before any is used
        for key in values:
            values[key] = _checked(f"{section}.{key}", values[key], at(section, key))

    def path_or_none(section: str, key: str) -> Path | None:
        value = m[section][key]
        if value in (None, ""):
            return None
        try:
            p = Path(value).expanduser()
        except RuntimeError:  # ~user of no such user, or no home folder to expand ~ to
            raise ConfigError(
                f"{at(section, key)}: {section}.{key} {value!r}: its ~ cannot be expanded "
                "(no such user, or no home folder): write the full path"
            ) from None
        return p if p.is_absolute() else base / p

    def choice(
        section: str, key: str, allowed: Sequence[str], *, upper: bool = False,
        optional: bool = False,
    ) -> str | None:  # fmt: skip
        value = m[section][key]
        if value is None and optional:
            return None
        text = str(value).strip()
        for option in allowed:
            if text == option or (upper and text.upper() == option):
                return option
        wanted = " | ".join(allowed) + (" (or null)" if optional else "")
        raise ConfigError(f"{at(section, key)}: {section}.{key} must be {wanted}, got {value!r}")

    g = m["graph"]
    cloud = str(g["cloud"])
    if cloud not in CLOUDS:
        raise ConfigError(
            f"{at('graph', 'cloud')}: graph.cloud must be one of {', '.join(CLOUDS)}, got {cloud!r}"
        )
    endpoint = g["endpoint"]
    if endpoint in (None, ""):
        endpoint = CLOUDS[cloud].graph_root
    endpoint = str(endpoint).rstrip("/")
    if endpoint != SIMULATOR:
        _check_https(endpoint, "graph.endpoint", at("graph", "endpoint"))
        endpoint = normal_url(endpoint)
    api_version = str(g["api_version"])
    if api_version not in ("v1.0", "beta"):
        raise ConfigError(
            f"{at('graph', 'api_version')}: graph.api_version must be v1.0 or beta, "
            f"got {api_version!r}"
        )
    if cloud in BETA_ONLY_CLOUDS and api_version != "beta" and endpoint != SIMULATOR:
        raise ConfigError(
            f"{at('graph', 'api_version')}: graph.cloud {cloud}: Graph documents the Temporary "
            "Access Pass endpoints there only in beta; set graph.api_version: beta"
        )
    ca_bundle = path_or_none("graph", "ca_bundle")
    if ca_bundle is not None:
        _check_ca_bundle(ca_bundle, at("graph", "ca_bundle"))
    graph = GraphSettings(endpoint, cloud, api_version, ca_bundle)
    # A file for a real tenant must say which; without a file nothing can be sent (the CLI
    # refuses), and the defaults serve to read sheets, list runs and serve the simulator.
    tenant_required = source is not None and not graph.is_simulator

    a = m["auth"]
    method = str(a["method"])
    if method not in AUTH_METHODS:
        raise ConfigError(
            f"{at('auth', 'method')}: auth.method must be one of "
            f"{', '.join(AUTH_METHODS)}, got {method!r}"
        )
    tenant = None if a["tenant_id"] in (None, "") else str(a["tenant_id"]).strip()
    client = None if a["client_id"] in (None, "") else str(a["client_id"]).strip()
    if tenant is not None:
        problem = tenant_problem(tenant)
        if problem is not None:
            raise ConfigError(f"{at('auth', 'tenant_id')}: auth.tenant_id {problem}")
    authority = a["authority"]
    if authority not in (None, ""):
        authority = str(authority).rstrip("/")
        _check_https(authority, "auth.authority", at("auth", "authority"))
    else:
        authority = None

    def secret(section: str, key: str, default_env: str | None = None) -> Secret:
        values = m[section]
        env_name = values[f"{key}_env"] or default_env
        inline = values[key]
        file = path_or_none(section, f"{key}_file")
        if inline is not None and file is not None:
            raise ConfigError(
                f"{where}: {section}.{key} and {section}.{key}_file are both set; keep one"
            )
        return Secret(f"{section}.{key}", None if env_name is None else str(env_name), file, inline)

    auth = AuthSettings(
        tenant_id=tenant,
        client_id=client,
        method=method,
        client_secret=secret("auth", "client_secret", DEFAULT_CLIENT_SECRET_ENV),
        certificate_path=path_or_none("auth", "certificate_path"),
        certificate_password=secret("auth", "certificate_password"),
        authority=authority,
    )
    if tenant_required:
        if tenant is None:
            raise ConfigError(
                f"{at('auth', 'tenant_id')}: auth.tenant_id is required for a real tenant"
            )
        if client is None and method != "managed_identity":
            raise ConfigError(
                f"{at('auth', 'client_id')}: auth.client_id is required for a real tenant"
            )
        if method == "certificate" and auth.certificate_path is None:
            raise ConfigError(
                f"{at('auth', 'method')}: auth.method certificate needs auth.certificate_path"
            )

    i = m["input"]
    inp = InputSettings(
        sheet=i["sheet"],
        columns=i["columns"],
        max_rows=i["max_rows"],
        max_mb=i["max_mb"],
        date_order=choice("input", "date_order", DATE_ORDERS, upper=True, optional=True),
        date_order_by_file=i["date_order_by_file"] or (),
        match_by=str(choice("input", "match_by", MATCH_BY)),
    )

    p = m["pass"]
    start_time = _parse_time(p["start_time"], at("pass", "start_time"))
    if p["timezone"] in (None, ""):
        if tenant_required:
            mine = machine_zone(env)
            suggestion = f"{mine} (this machine's zone)" if mine else EXAMPLE_TIMEZONE
            raise ConfigError(
                f"{at('pass', 'timezone')}: pass.timezone is not set: for a real tenant, set "
                f"the IANA time zone the start dates are in, e.g. timezone: {suggestion}"
            )
        zone = SIMULATOR_TIMEZONE
    else:
        zone = str(p["timezone"]).strip()
    problem = timezone_problem(zone)
    if problem is not None:
        raise ConfigError(f"{at('pass', 'timezone')}: pass.timezone {problem}")
    pass_ = PassSettings(
        lifetime_minutes=p["lifetime_minutes"],
        usable_once=p["usable_once"],
        start_time=start_time,
        timezone=zone,
        existing=str(choice("pass", "existing", EXISTING)),
        allow_existing_accounts=p["allow_existing_accounts"],
    )

    run = RunSettings(**m["run"])  # every value checked against SETTINGS above
    out_dir = path_or_none("output", "dir") or base / "audit"
    output = OutputSettings(out_dir, secret("output", "password"), m["output"]["redacted_copy"])
    s = m["simulator"]
    simulator = SimulatorSettings(**{**s, "tenant": path_or_none("simulator", "tenant")})
    state = StateSettings(path_or_none("state", "path") or base / DEFAULT_STATE_PATH)
    return Config(graph, auth, inp, pass_, run, output, simulator, state, source)


def tenant_problem(tenant: str) -> str | None:
    """Why `tenant` cannot be auth.tenant_id (None if it can): a GUID or a domain name."""
    if tenant.lower() in _UNSAFE_TENANTS:
        return f"must be your tenant's id or domain, not '{tenant}'"
    if not (_GUID.match(tenant) or _DOMAIN.match(tenant)):
        return f"{tenant!r} is neither a GUID nor a domain name"
    return None


def client_id_problem(client: str) -> str | None:
    """Why `client` cannot be an app registration's client id (None if it can)."""
    if not _GUID.match(client):
        return f"{client!r} is not a GUID (the app's Application (client) ID)"
    return None


def timezone_problem(zone: str) -> str | None:
    """Why `zone` cannot be pass.timezone (None if it can): an IANA name this machine knows."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{zone!r} is not an IANA time zone (e.g. {EXAMPLE_TIMEZONE})"
    return None


def machine_zone(environ: Mapping[str, str], etc: Path = Path("/etc")) -> str | None:
    """This machine's IANA time zone, to suggest (never to use unasked): from TZ,
    /etc/timezone, or the zone file /etc/localtime links to. None when none of them tells."""
    found: list[str] = []
    tz = environ.get("TZ", "").lstrip(":")  # ":Europe/Paris" and a zone file's path mean it too
    if tz:
        found.append(tz.rpartition("zoneinfo/")[2])
    with contextlib.suppress(OSError, UnicodeDecodeError):
        found.append((etc / "timezone").read_text(encoding="utf-8").strip())
    with contextlib.suppress(OSError):  # not a link (a copy of the zone file), or absent
        found.append(os.readlink(etc / "localtime").rpartition("zoneinfo/")[2])
    return next((zone for zone in found if zone and timezone_problem(zone) is None), None)


def normal_url(url: str) -> str:
    """One spelling per address: scheme and host in lower case, no default port, no trailing
    slash. The journal records a run's Graph root by it, so HTTPS://Graph.Microsoft.com:443/
    is the same Graph as https://graph.microsoft.com."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    port = "" if parts.port in (None, default) else f":{parts.port}"
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{host}{port}{path}"


def _check_ca_bundle(path: Path, where: str) -> None:
    if not path.exists():
        raise ConfigError(f"{where}: graph.ca_bundle {path} does not exist")
    try:
        read_small(path, CERTIFICATE_FILE_LIMIT)
    except (NotAFile, OSError) as exc:
        why = str(exc) if isinstance(exc, NotAFile) else exc.strerror
        raise ConfigError(f"{where}: graph.ca_bundle {path}: cannot be used: it {why}") from None
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError):
        raise ConfigError(
            f"{where}: graph.ca_bundle {path} holds no PEM certificate (export the proxy's CA "
            "certificate as Base-64 / PEM)"
        ) from None


def _check_https(url: str, key: str, where: str) -> None:
    """https:// only, so tokens and passes never cross a network in clear; plain http:// only
    to this machine (a local simulator or test double)."""
    parts = urlsplit(url)
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(
            f"{where}: {key} must be an https:// URL (http:// only to this machine: localhost, "
            f"127.0.0.1 or ::1), got {url!r}"
        )


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_inline_secrets(raw: dict[str, Any], source: Path) -> None:
    """A secret written in the config file is refused unless only its owner can read the file."""
    inline = [
        f"{section}.{key}"
        for section, key in INLINE_SECRETS
        if isinstance(raw.get(section), dict) and raw[section].get(key) is not None
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


def _parse_time(value: str, where: str) -> time:
    # An unquoted 08:00 is text too: StrictLoader does not read base-60 numbers (YAML 1.1 would
    # read it as 480).
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ConfigError(f"{where}: pass.start_time must be HH:MM (24-hour), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))
