"""Configuration loading, defaults, environment overrides and clear errors."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from onboard.config import CLOUDS, env_override_names, load_config
from onboard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


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
    path = write(tmp_path, "run:\n  concurrency: 4\n")
    config = load_config(path, {"ONBOARD_RUN_CONCURRENCY": "12",
                                "ONBOARD_PASS_USABLE_ONCE": "false",
                                "ONBOARD_PASS_TIMEZONE": "America/New_York"})
    assert (config.run.concurrency, config.pass_.usable_once, config.pass_.timezone) == (
        12, False, "America/New_York")
    assert "ONBOARD_AUTH_TENANT_ID" in env_override_names()


def test_cloud_sets_graph_root_for_a_real_tenant(tmp_path: Path) -> None:
    """endpoint null means the cloud's Graph root."""
    path = write(tmp_path, "graph:\n  endpoint: null\n  cloud: usgov\n"
                 "auth:\n  tenant_id: contoso.onmicrosoft.us\n  client_id: abc\n")
    config = load_config(path)
    assert config.graph.endpoint == CLOUDS["usgov"].graph_root == "https://graph.microsoft.us"


def test_unquoted_start_time_is_understood(tmp_path: Path) -> None:
    """YAML reads an unquoted 08:30 as 510 (base 60); it still means 08:30."""
    config = load_config(write(tmp_path, "pass:\n  start_time: 08:30\n"))
    assert config.pass_.start_time == time(8, 30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("graph:\n  endpont: x\n", "unknown key(s) in 'graph': endpont"),
        ("grpah: {}\n", "unknown section(s): grpah"),
        ("pass:\n  timezone: Mars/Olympus\n", "not an IANA time zone"),
        ("pass:\n  lifetime_minutes: 5\n", "pass.lifetime_minutes must be between 10 and 43200"),
        ("pass:\n  start_time: 25:00\n", "pass.start_time must be HH:MM"),
        ("run:\n  concurrency: many\n", "run.concurrency must be a number"),
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
    path = write(tmp_path, "run:\n  concurrency: 8\n")
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
