"""Configuration loading, defaults, environment overrides and clear errors."""

from __future__ import annotations

import re
import time as clock
from datetime import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from onboard.config import (
    CLOUDS,
    SETTINGS,
    SIMULATOR_TIMEZONE,
    InputSettings,
    Kind,
    Setting,
    config_keys,
    default_value,
    env_override_names,
    generated,
    load_config,
    machine_zone,
    reference_markdown,
)
from onboard.config.reference import REGENERATE
from onboard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SIM = "graph:\n  endpoint: simulator\n"
REAL = ("auth:\n  tenant_id: contoso.onmicrosoft.com\n"
        "  client_id: 11111111-2222-3333-4444-555555555555\n")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_runs_against_the_simulator() -> None:
    """config.yaml as shipped uses the simulator and the sample tenant."""
    config = load_config(ROOT / "config.yaml")
    assert config.graph.is_simulator
    assert config.simulator.tenant == ROOT / "samples" / "tenant.yaml"
    assert config.pass_.start_time == time(8, 0)
    assert config.output.dir == ROOT / "audit"


def test_environment_overrides_config(tmp_path: Path) -> None:
    """ONBOARD_<SECTION>_<KEY> overrides the file, read as YAML."""
    path = write(tmp_path, SIM + "run:\n  concurrency: 4\n")
    config = load_config(path, {"ONBOARD_RUN_CONCURRENCY": "12",
                                "ONBOARD_PASS_USABLE_ONCE": "false",
                                "ONBOARD_PASS_TIMEZONE": "America/New_York"})
    assert (config.run.concurrency, config.pass_.usable_once, config.pass_.timezone) == (
        12, False, "America/New_York")
    assert "ONBOARD_AUTH_TENANT_ID" in env_override_names()


def test_cloud_sets_graph_root_for_a_real_tenant(tmp_path: Path) -> None:
    """endpoint null means the cloud's Graph root."""
    path = write(tmp_path, "graph:\n  endpoint: null\n  cloud: usgov\n"
                 "auth:\n  tenant_id: contoso.onmicrosoft.us\n  client_id: abc\n"
                 "pass:\n  timezone: America/New_York\n")
    config = load_config(path)
    assert config.graph.endpoint == CLOUDS["usgov"].graph_root == "https://graph.microsoft.us"


def test_unquoted_start_time_is_understood(tmp_path: Path) -> None:
    """YAML reads an unquoted 08:30 as 510 (base 60); it still means 08:30."""
    config = load_config(write(tmp_path, SIM + "pass:\n  start_time: 08:30\n"))
    assert config.pass_.start_time == time(8, 30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("graph:\n  endpont: x\n", "unknown key(s) in 'graph': endpont"),
        ("grpah: {}\n", "unknown section(s): grpah"),
        (SIM + "pass:\n  timezone: Mars/Olympus\n", "not an IANA time zone"),
        (SIM + "pass:\n  lifetime_minutes: 5\n",
         "pass.lifetime_minutes must be between 10 and 43200"),
        (SIM + "pass:\n  start_time: 25:00\n", "pass.start_time must be HH:MM"),
        (SIM + "run:\n  concurrency: many\n",
         "run.concurrency must be a whole number between 1 and 256"),
        ("graph:\n  endpoint: http://graph.example.com\n", "must be an https:// URL"),
        ("graph:\n  endpoint: https://graph.microsoft.com\nauth:\n  tenant_id: common\n",
         "not 'common'"),
        ("graph:\n  endpoint: https://graph.microsoft.com\n", "auth.tenant_id is required"),
        ("- a\n- b\n", "expected sections"),
        ("graph: [\n", "is not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake names the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_mistyped_environment_variable_is_refused() -> None:
    """ONBOARD_RUN_CONCURENCY (a typo) is an error listing the real names, not silently ignored."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"ONBOARD_RUN_CONCURENCY": "2"})
    assert "ONBOARD_RUN_CONCURENCY is not a setting" in str(caught.value)
    assert "ONBOARD_RUN_CONCURRENCY" in str(caught.value)
    # the variables that hold secrets are not settings, and are allowed
    load_config(None, {"ONBOARD_CLIENT_SECRET": "x"})


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    """An invalid override is blamed on its variable, not on config.yaml."""
    path = write(tmp_path, SIM + "run:\n  concurrency: 8\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"ONBOARD_RUN_CONCURRENCY": "abc"})
    assert str(caught.value).startswith("environment variable ONBOARD_RUN_CONCURRENCY: ")


def test_ca_bundle_must_hold_a_certificate(tmp_path: Path) -> None:
    """A ca_bundle that is not PEM is a config error, before any connection."""
    bundle = tmp_path / "proxy.cer"
    bundle.write_bytes(b"\x30\x82garbage")
    path = write(tmp_path, f"graph:\n  ca_bundle: {bundle}\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        load_config(path)


def test_without_an_endpoint_a_file_means_the_real_graph(tmp_path: Path) -> None:
    """graph.endpoint left out is the cloud's Graph root: only 'simulator' simulates."""
    config = load_config(write(tmp_path, REAL + "pass:\n  timezone: Europe/Paris\n"))
    assert (config.graph.is_simulator, config.graph.endpoint) == (
        False, CLOUDS["global"].graph_root)
    cloud = load_config(write(tmp_path, REAL + "graph:\n  cloud: china\n  api_version: beta\n"
                              "pass:\n  timezone: Asia/Shanghai\n"))
    assert cloud.graph.endpoint == CLOUDS["china"].graph_root


def test_a_real_tenant_must_choose_its_time_zone(tmp_path: Path) -> None:
    """No pass.timezone for a real tenant: an error naming the key and this machine's zone."""
    path = write(tmp_path, REAL)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"TZ": ":America/Denver"})
    assert str(caught.value) == (
        f"{path}: pass.timezone is not set: for a real tenant, set the IANA time zone the "
        "start dates are in, e.g. timezone: America/Denver (this machine's zone)")
    assert load_config(path, {"ONBOARD_PASS_TIMEZONE": "Asia/Tokyo"}).pass_.timezone == (
        "Asia/Tokyo")


def test_the_simulator_without_a_zone_means_utc(tmp_path: Path) -> None:
    """With graph.endpoint: simulator, a missing pass.timezone is UTC."""
    assert load_config(write(tmp_path, SIM)).pass_.timezone == SIMULATOR_TIMEZONE == "UTC"


def test_machine_zone_from_tz_etc_timezone_or_the_localtime_link(tmp_path: Path) -> None:
    """TZ first, then /etc/timezone, then where /etc/localtime links; None if none tells."""
    etc = tmp_path / "etc"
    etc.mkdir()
    assert machine_zone({}, etc) is None
    (etc / "localtime").symlink_to("../usr/share/zoneinfo/Australia/Perth")
    assert machine_zone({}, etc) == "Australia/Perth"
    (etc / "timezone").write_text("Europe/Oslo\n")
    assert machine_zone({}, etc) == "Europe/Oslo"
    assert machine_zone({"TZ": "/usr/share/zoneinfo/Asia/Kolkata"}, etc) == "Asia/Kolkata"
    assert machine_zone({"TZ": "Not/AZone"}, etc) == "Europe/Oslo"


BOMB = "".join(
    [SIM, "simulator:\n  seed: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"]
    + [f"  x{n}: &{chr(98 + n)} [{', '.join(['*' + chr(97 + n)] * 9)}]\n" for n in range(5)]
)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    """Anchors and aliases are refused, naming the file and the line, in no time."""
    path = write(tmp_path, BOMB)
    started = clock.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert clock.perf_counter() - started < 1
    assert str(caught.value) == (
        f"{path}: an anchor (&a) on line 4: anchors and aliases are not allowed here")
    pointed = write(tmp_path, SIM + "pass:\n  timezone: *zone\n")
    with pytest.raises(ConfigError, match="an alias \\(\\*zone\\) on line 4"):
        load_config(pointed)


def test_an_alias_in_an_environment_variable_is_refused() -> None:
    """ONBOARD_* values are YAML too: an anchor or alias there is refused, naming it."""
    bomb = "[&a [1, 1], [*a, *a], [*a, *a]]"
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"ONBOARD_PASS_TIMEZONE": bomb})
    assert str(caught.value) == (
        "environment variable ONBOARD_PASS_TIMEZONE: an anchor (&a) on line 1: anchors and "
        "aliases are not allowed here")


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (SIM + "pass:\n  timezone: UTC\nrun:\n  concurrency: 2\npass:\n  lifetime_minutes: 60\n",
         "'pass' is given twice, on line 3 and on line 7"),
        (SIM + "run:\n  concurrency: 2\n  max_rate: 5\n  concurrency: 9\n",
         "'concurrency' is given twice, on line 4 and on line 6"),
    ],
)
def test_a_key_or_section_given_twice_is_refused(tmp_path: Path, text: str, lines: str) -> None:
    """A second section or key would silently replace the first: refused, naming both lines."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {lines}: keep one"


def _nodes(path: Path) -> dict[str, yaml.Node]:
    """Each dotted key of a YAML file, with its value's node (for its line)."""
    found: dict[str, yaml.Node] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        for key, value in node.value:
            name = f"{prefix}{key.value}"
            found[name] = value
            if isinstance(value, yaml.MappingNode):
                walk(value, name + ".")

    walk(yaml.compose(path.read_text(encoding="utf-8")), "")
    return found


def test_the_shipped_config_lists_every_key_and_notes_each_changed_default() -> None:
    """Every key config.py knows is in config.yaml; a value other than the default says so."""
    path = ROOT / "config.yaml"
    nodes = _nodes(path)
    shipped = yaml.safe_load(path.read_text(encoding="utf-8"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [k for k in config_keys() if k not in nodes] == []
    for key in config_keys():
        section, _, rest = key.partition(".")
        value = shipped[section]
        for part in rest.split("."):
            value = value[part]
        if value != default_value(key):
            line = lines[nodes[key].start_mark.line]
            assert re.search(r"#.*\bdefault\b", line), f"{key}: {line}"


def test_the_reference_gives_the_defaults_of_the_models() -> None:
    """The configuration reference documents every key, each with its default (read back as
    YAML), and the ONBOARD_* variable that overrides it."""
    rows = re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|.*\| ([^|]*) \|$", reference_markdown(),
                      re.MULTILINE)
    table = {key: (yaml.safe_load(cell), variable) for key, cell, variable in rows}
    assert table == {k: (default_value(k), f"`{SETTINGS[k].env}`" if SETTINGS[k].env else "(none)")
                     for k in config_keys()}


def test_the_reference_and_the_shipped_config_are_generated_from_the_models() -> None:
    """docs/reference/configuration.md and config.yaml are the text the models generate: a
    key changed in onboard/config/settings.py fails here until they are regenerated."""
    for path, text in generated().items():
        committed = ROOT / path
        assert committed.is_file() and committed.read_text(encoding="utf-8") == text, (
            f"{path} differs from the settings models: regenerate it with `{REGENERATE}`, "
            "from the repository's root")


def test_every_key_has_a_doc_that_fits_a_comment() -> None:
    """Each key's description starts with a one-line doc short enough for a config file's
    comment; the cloud choices are the clouds onboard knows."""
    assert {k: s.summary for k, s in SETTINGS.items() if not 0 < len(s.summary) <= 70} == {}
    assert SETTINGS["graph.cloud"].choices == tuple(CLOUDS)


WRONG = {  # YAML text of values no key but a few accepts
    "list": "[x]",
    "mapping": "{a: 1}",
    "bool": "true",
    "inf": ".inf",
    "minus inf": "-.inf",
    "nan": ".nan",
    "huge": "1" + "0" * 30,
}
RIGHT_FOR = {Kind.FLAG: {"bool"}, Kind.HEADERS: {"list"}}


def _setting(key: str) -> Setting:
    """The SETTINGS entry of a dotted key (input.columns.user is input.columns's)."""
    return SETTINGS.get(key) or SETTINGS[key.rpartition(".")[0]]


def _file_with(tmp_path: Path, key: str, raw: str) -> Path:
    """A simulator config whose `key` (dotted) is written as the YAML text `raw`; owner-only,
    so an inline secret is looked at."""
    section, _, rest = key.partition(".")
    lines = {"graph": ["  endpoint: simulator"]}
    lines.setdefault(section, [])
    if section == "graph":
        lines["graph"] = [line for line in lines["graph"] if not line.startswith(f"  {rest}:")]
    if "." in rest:
        outer, _, inner = rest.partition(".")
        lines[section] += [f"  {outer}:", f"    {inner}: {raw}"]
    else:
        lines[section].append(f"  {rest}: {raw}")
    path = write(tmp_path, "".join(f"{s}:\n" + "".join(f"{x}\n" for x in v)
                                    for s, v in lines.items()))
    path.chmod(0o600)
    return path


def test_every_key_says_what_it_takes() -> None:
    """SETTINGS declares every key of the defaults, and nothing else: no key goes unchecked."""
    declared = {key if key in SETTINGS else key.rpartition(".")[0] for key in config_keys()}
    assert declared == set(SETTINGS)


CASES = [(key, name) for key in config_keys() for name in WRONG
         if name not in RIGHT_FOR.get(_setting(key).kind, set())]


@pytest.mark.parametrize(("key", "name"), CASES)
def test_every_key_refuses_a_value_of_the_wrong_kind(tmp_path: Path, key: str, name: str) -> None:
    """A list, mapping, true, .inf, .nan or huge number where the key wants none: exit 2's
    ConfigError naming the file and the key (never an OverflowError, never a file named ['x'])."""
    path = _file_with(tmp_path, key, WRONG[name])
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert key in message or key.rpartition(".")[0] in message
    assert not re.search("pydantic|Input should|validation error", message), message
    if _setting(key).kind is Kind.SECRET:
        assert "(not shown)" in message


ENV_CASES = [(key, name) for key in config_keys()
             if f"ONBOARD_{key.replace('.', '_').upper()}" in env_override_names()
             for name in WRONG if name not in RIGHT_FOR.get(_setting(key).kind, set())]


@pytest.mark.parametrize(("key", "name"), ENV_CASES)
def test_every_variable_refuses_a_value_of_the_wrong_kind(
    tmp_path: Path, key: str, name: str
) -> None:
    """The same values in ONBOARD_* variables: refused, naming the variable and the key."""
    variable = f"ONBOARD_{key.replace('.', '_').upper()}"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, SIM), {variable: WRONG[name]})
    assert str(caught.value).startswith(f"environment variable {variable}: {key} ")
    assert not re.search("pydantic|Input should|validation error", str(caught.value))


NUMBERS = [key for key in config_keys() if _setting(key).kind in (Kind.WHOLE, Kind.NUMBER)]


@pytest.mark.parametrize("key", NUMBERS)
def test_leading_zeros_are_decimal_in_every_number(tmp_path: Path, key: str) -> None:
    """YAML 1.1 reads 010 as octal 8 and 0120 as 80: onboard reads them as 10 and 120, as
    YAML 1.2 and people do."""
    setting = _setting(key)
    number = next(n for n in (10, 120, 0) if setting.low <= n <= setting.high)
    config = load_config(_file_with(tmp_path, key, f"0{number}"))
    section, _, name = key.partition(".")
    assert getattr(getattr(config, "pass_" if section == "pass" else section), name) == number


def test_a_huge_number_is_too_large_with_its_bound(tmp_path: Path) -> None:
    """A number past the key's bound says "too large" and the bound, not "must be a number"."""
    path = write(tmp_path, SIM + "run:\n  timeout_seconds: 1e300\n  concurrency: 1000\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (f"{path}: run.concurrency is too large: at most 256, "
                                 "got 1000")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, SIM + "run:\n  timeout_seconds: 1e300\n"))
    assert "run.timeout_seconds is too large: at most 3600, got 1e+300" in str(caught.value)
    long = write(tmp_path, SIM + "simulator:\n  seed: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(long)
    assert str(caught.value) == f"{long}: a number of 5000 digits on line 4: too large"


def test_infinity_in_a_variable_is_exit_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ONBOARD_RUN_CONCURRENCY=.inf was exit 4 (OverflowError): now exit 2, naming it."""
    from onboard.cli import EXIT_BAD_INPUT, main

    monkeypatch.setenv("ONBOARD_RUN_CONCURRENCY", ".inf")
    assert main(["runs", "-c", str(write(tmp_path, SIM))]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith(
        "onboard: environment variable ONBOARD_RUN_CONCURRENCY: run.concurrency must be a "
        "finite number between 1 and 256, got inf\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state:\n  path: [x]\n", "state.path must be a file or folder name (or null), got ['x']"),
        ("output:\n  dir: {a: 1}\n", "output.dir must be a file or folder name"),
        ("state:\n  path: \"a\\0b\"\n", "state.path must be a file or folder name (or null) "
         "without control characters"),
        ("state:\n  path: ~no-such-user-here/j.sqlite\n", "its ~ cannot be expanded"),
        ("auth:\n  tenant_id: 0120\n", "auth.tenant_id must be text (or null), got 120: quote "
         "it to mean it as text"),
        ("pass:\n  start_time: 480\n", "pass.start_time must be text, got 480: quote it"),
        ("input:\n  sheet: -1\n", "input.sheet must be between 0 and 9999, got -1"),
        ("run:\n  batch_size: 2.5\n", "run.batch_size must be a whole number between 1 and 20"),
        ("run:\n  1: 2\n  x: 3\n", "unknown key(s) in 'run': 1, x"),
        ("pass: []\n", "'pass' must be a mapping of keys"),
    ],
)
def test_paths_and_text_refuse_what_is_not_text(tmp_path: Path, text: str, message: str) -> None:
    """A path or text setting takes text only, printable; other mistakes name the key too."""
    path = write(tmp_path, SIM + text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}: ")


def test_china_needs_the_beta_api_named_in_the_error(tmp_path: Path) -> None:
    """In China the pass endpoints are documented in beta only: v1.0 there is refused, naming
    graph.api_version; beta loads."""
    path = tmp_path / "c.yaml"
    base = (
        "graph:\n  cloud: china\n{version}auth:\n  tenant_id: contoso.partner.onmschina.cn\n"
        "  client_id: 11111111-2222-3333-4444-555555555555\npass:\n  timezone: Asia/Shanghai\n"
    )
    path.write_text(base.format(version=""), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"graph\.api_version: beta"):
        load_config(path)
    path.write_text(base.format(version="  api_version: beta\n"), encoding="utf-8")
    assert load_config(path).graph.api_version == "beta"


@pytest.mark.parametrize(
    "spelled",
    ["HTTPS://GRAPH.microsoft.com", "https://graph.microsoft.com:443/", "https://Graph.Microsoft.com"],
)
def test_one_graph_root_has_one_spelling(tmp_path: Path, spelled: str) -> None:
    """The Graph root the journal records a run's tenant by does not depend on how the URL is
    written (case, default port, trailing slash)."""
    path = write(tmp_path, REAL + f"graph:\n  endpoint: {spelled}\npass:\n  timezone: UTC\n")
    assert load_config(path).graph.endpoint == "https://graph.microsoft.com"


@pytest.mark.parametrize("kind", ["fifo", "zero", "folder"])
def test_a_secret_or_config_file_that_is_no_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO (it would block for ever), /dev/zero (it never ends) or a folder, given as a
    secret file or as the config itself: exit 2 naming it, at once, without reading it."""
    import os

    if kind == "fifo":
        odd = tmp_path / "secret.fifo"
        os.mkfifo(odd)
    elif kind == "zero":
        odd = Path("/dev/zero")
    else:
        odd = tmp_path / "folder"
        odd.mkdir()
    config = write(tmp_path, REAL + f"  client_secret_file: {odd}\npass:\n  timezone: UTC\n")
    secret = load_config(config).auth.client_secret
    started = clock.monotonic()
    with pytest.raises(ConfigError, match="cannot read"):
        secret.read({})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(odd)
    assert clock.monotonic() - started < 5


def test_yaml_nested_thousands_deep_is_refused_not_a_crash(tmp_path: Path) -> None:
    """[[[[...]]]] thousands deep (in the file or a variable): exit 2, never RecursionError."""
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  concurrency: " + "[" * 5000 + "]" * 5000 + "\n", "utf-8")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(None, {"ONBOARD_RUN_CONCURRENCY": "[" * 5000 + "]" * 5000})


SECTIONS_KNOWN = "graph, auth, input, pass, run, output, delivery, state, simulator"
COLUMNS_KNOWN = ("user, start_date, lifetime_minutes, usable_once, display_name, mail, "
                 "employee_id, deliver_to")


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (SIM + "run:\n  concurrency: many\n", {},
         "{path}: run.concurrency must be a whole number between 1 and 256, got 'many'"),
        (SIM + "pass:\n  usable_once: maybe\n", {},
         "{path}: pass.usable_once must be true or false, got 'maybe'"),
        (SIM + "pass:\n  lifetime_minutes: 5\n", {},
         "{path}: pass.lifetime_minutes must be between 10 and 43200, got 5"),
        (SIM + "simulator:\n  fault_rate: 1.5\n", {},
         "{path}: simulator.fault_rate is too large: at most 1, got 1.5"),
        ("graph:\n  endpont: x\n", {},
         "{path}: unknown key(s) in 'graph': endpont; known: cloud, endpoint, api_version, "
         "ca_bundle"),
        ("grpah: {}\npas: {}\n", {},
         "{path}: unknown section(s): grpah, pas; known: " + SECTIONS_KNOWN),
        ("graph:\n  endpoint: simulator\n  cloud: mars\n", {},
         "{path}: graph.cloud must be global | usgov | usgov-dod | china, got 'mars'"),
        (SIM + "input:\n  date_order: DYM\n", {},
         "{path}: input.date_order must be DMY | MDY | YMD (or null), got 'DYM'"),
        (SIM + "input:\n  columns:\n    usr: [Person]\n", {},
         "{path}: unknown key(s) in 'input.columns': usr; known: " + COLUMNS_KNOWN),
        (SIM + "input:\n  columns:\n    user: 5\n", {},
         "{path}: input.columns.user must be a list of header names, got 5"),
        (SIM + "input:\n  columns: [user]\n", {},
         "{path}: input.columns must be a mapping of keys, got ['user']"),
        (SIM, {"ONBOARD_PASS_EXISTING": "keep"},
         "environment variable ONBOARD_PASS_EXISTING: pass.existing must be skip | replace, "
         "got 'keep'"),
        (SIM, {"ONBOARD_OUTPUT_PASSWORD": "x"},
         "environment variable ONBOARD_OUTPUT_PASSWORD is not read: a secret comes from the "
         "variable that output.password_env names, or the file output.password_file names"),
        (REAL + "graph:\n  cloud: china\n  api_version: beta\npass:\n  timezone: UTC\n",
         {"ONBOARD_GRAPH_API_VERSION": "v1.0"},
         "environment variable ONBOARD_GRAPH_API_VERSION: graph.cloud china: Graph documents "
         "the Temporary Access Pass endpoints there only in beta; set graph.api_version: beta"),
        (REAL + "  method: certificate\npass:\n  timezone: UTC\n", {},
         "{path}: auth.method certificate needs auth.certificate_path"),
    ],
)
def test_each_kind_of_mistake_in_words(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    """A wrong type, a value out of bounds, an unknown key or section, a bad choice, a bad
    variable: one sentence naming the file or variable, the key and what it takes."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    assert str(caught.value) == message.format(path=path)


def test_unknown_keys_come_before_a_bad_value_and_missing_keys_after() -> None:
    """With several mistakes, the one reported is the one that was reported before the
    settings were models: unknown keys first, then values in order, then what a real tenant
    lacks."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"ONBOARD_RUN_CONCURRENCY": "0", "ONBOARD_INPUT_MAX_ROWS": "x"})
    assert str(caught.value).startswith(
        "environment variable ONBOARD_INPUT_MAX_ROWS: input.max_rows must be a whole number")


def test_settings_are_frozen_and_copied_with_their_source(tmp_path: Path) -> None:
    """A loaded configuration cannot be changed in place; a copy with one section replaced
    keeps the file it came from."""
    path = write(tmp_path, SIM)
    config = load_config(path)
    with pytest.raises(ValidationError):
        config.run.concurrency = 3  # type: ignore[misc]
    copied = config.model_copy(update={"run": config.run.model_copy(update={"concurrency": 3})})
    assert (copied.source, copied.run.concurrency, config.run.concurrency) == (path, 3, 20)


def test_columns_read_as_a_mapping_of_header_names(tmp_path: Path) -> None:
    """input.columns keeps its defaults for the columns a file leaves out, and reads as a
    mapping (the reader looks a column up by name and walks them in order)."""
    config = load_config(write(tmp_path, SIM + "input:\n  columns:\n    user: Person\n"))
    columns = config.input.columns
    assert columns["user"] == ("Person",)
    assert columns["start_date"] == InputSettings().columns["start_date"] == (
        "Start Date", "Hire Date")
    assert [name for name, _ in columns.items()] == [
        k.rpartition(".")[2] for k in config_keys() if k.startswith("input.columns.")]
    with pytest.raises(KeyError):
        columns["items"]


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(config_keys()), value=VALUES)
def test_any_value_for_any_key_loads_or_is_refused_in_words(
    tmp_path: Path, key: str, value: object
) -> None:
    """Whatever a key is given, in the file or its variable: it loads, or a ConfigError names
    where and says why in onboard's words (never pydantic's, never another exception)."""
    raw = yaml.safe_dump(value, default_flow_style=True, width=2**16).removesuffix("\n...\n")
    path = _file_with(tmp_path, key, raw.strip())
    variable = f"ONBOARD_{key.replace('.', '_').upper()}"
    for loading in ((path, {}), (write(tmp_path, SIM), {variable: raw})):
        try:
            load_config(*loading)
        except ConfigError as exc:
            assert not re.search("pydantic|Input should|validation error", str(exc)), str(exc)
