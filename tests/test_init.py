"""`onboard init`: a commented config.yaml for a real tenant, from options or answers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import CLIENT_ID, TENANT, users

from onboard.cli import EXIT_BAD_INPUT, EXIT_OK, _init, _parser, main
from onboard.config import (
    CLOUDS,
    SETTINGS,
    TenantSetup,
    config_keys,
    default_value,
    load_config,
    render_config,
)
from onboard.simulator import SimulatorState

FLAGS = ["--tenant-id", TENANT, "--client-id", CLIENT_ID, "--timezone", "America/Chicago"]
SET_BY_INIT = {"auth.tenant_id", "auth.client_id", "auth.method", "auth.certificate_path",
               "graph.cloud", "pass.timezone"}


def answers(*replies: str) -> tuple[Callable[[str], str], list[str]]:
    """A fake `input`: gives the replies in turn and records each prompt."""
    prompts: list[str] = []
    queue = list(replies)

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return queue.pop(0)

    return ask, prompts


def flatten(text: str) -> dict[str, object]:
    """Dotted keys of a YAML mapping (input.columns.user ...) with their values."""
    found: dict[str, object] = {}

    def walk(mapping: dict[str, object], prefix: str) -> None:
        for key, value in mapping.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                found[f"{prefix}{key}"] = value

    walk(yaml.safe_load(text), "")
    return found


def test_flags_alone_write_a_config_load_config_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a terminal, the options make the whole file: it loads as a real tenant's."""
    path = tmp_path / "onboard.yaml"
    assert main(["init", str(path), *FLAGS, "--cloud", "usgov"]) == EXIT_OK
    config = load_config(path, {})
    assert (config.auth.tenant_id, config.auth.client_id, config.auth.method) == (
        TENANT, CLIENT_ID, "client_secret")
    assert (config.pass_.timezone, config.graph.is_simulator, config.graph.endpoint) == (
        "America/Chicago", False, CLOUDS["usgov"].graph_root)
    assert config.auth.client_secret.env == "ONBOARD_CLIENT_SECRET"
    out = capsys.readouterr().out
    assert f"wrote {path}" in out
    assert "export ONBOARD_CLIENT_SECRET=" in out
    assert f"onboard validate --online HIRES.xlsx -c {path}" in out


def test_missing_flags_without_a_terminal_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a terminal nothing is asked: the missing options are an exit-2 error."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    path = tmp_path / "config.yaml"
    assert main(["init", str(path), "--tenant-id", TENANT]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == (
        "onboard: not on a terminal, so nothing can be asked: give --client-id and --timezone "
        "(this machine's zone: Asia/Tokyo); nothing was written\n")
    assert not path.exists()
    assert main(["init", str(path), *FLAGS, "--auth-method", "certificate"]) == EXIT_BAD_INPUT
    assert "give --certificate-path" in capsys.readouterr().err


def test_bad_values_in_flags_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tenant that is no GUID or domain, a client id that is no GUID, an unknown zone."""
    path = tmp_path / "config.yaml"
    for flag, bad in (("--tenant-id", "common"), ("--client-id", "my-app"),
                      ("--timezone", "Mars/Olympus")):
        given = [*FLAGS]
        given[given.index(flag) + 1] = bad
        assert main(["init", str(path), *given]) == EXIT_BAD_INPUT
        assert capsys.readouterr().err.startswith(f"onboard: {flag}: ")
    assert not path.exists()


def test_an_existing_file_is_never_replaced_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """init refuses to overwrite; --force replaces."""
    path = tmp_path / "config.yaml"
    path.write_text("mine: true\n")
    assert main(["init", str(tmp_path), *FLAGS]) == EXIT_BAD_INPUT  # a folder: its config.yaml
    assert "already exists: nothing was written (--force replaces it)" in capsys.readouterr().err
    assert path.read_text() == "mine: true\n"
    assert main(["init", str(path), *FLAGS, "--force"]) == EXIT_OK
    assert load_config(path, {}).auth.tenant_id == TENANT


def test_on_a_terminal_it_asks_and_asks_again_until_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each missing value is asked for, checked, and asked again when it is wrong; the time
    zone suggested is this machine's."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    path = tmp_path / "config.yaml"
    ask, prompts = answers(
        "common", "8f2c1d3e-0000-4000-8000-00000000abcd",  # tenant: refused, then a GUID
        "",  # credential: the suggested client_secret
        "not-a-guid", CLIENT_ID,  # client id
        "Mars/Olympus", "Pacific/Auckland",  # time zone
    )
    assert _init(_parser().parse_args(["init", str(path)]), ask=ask) == EXIT_OK
    assert len(prompts) == 7
    assert prompts[2].startswith("credential: client_secret | certificate | managed_identity")
    assert prompts[5] == "time zone of the start dates (IANA) [Asia/Tokyo]: "
    config = load_config(path, {})
    assert (config.auth.tenant_id, config.auth.client_id, config.auth.method,
            config.pass_.timezone) == (
        "8f2c1d3e-0000-4000-8000-00000000abcd", CLIENT_ID, "client_secret", "Pacific/Auckland")
    out = capsys.readouterr().out
    assert "must be your tenant's id or domain, not 'common'" in out
    assert "'not-a-guid' is not a GUID" in out and "'Mars/Olympus' is not an IANA" in out


def test_a_terminal_asks_only_what_the_flags_left_out(tmp_path: Path) -> None:
    """Flags given are not asked again; a system-assigned identity needs no client id."""
    path = tmp_path / "config.yaml"
    ask, prompts = answers("", "Europe/Rome")
    args = _parser().parse_args(
        ["init", str(path), "--tenant-id", TENANT, "--auth-method", "managed_identity"])
    assert _init(args, ask=ask) == EXIT_OK
    assert [p.split(" ")[0] for p in prompts] == ["client", "time"]
    config = load_config(path, {})
    assert (config.auth.method, config.auth.client_id, config.pass_.timezone) == (
        "managed_identity", None, "Europe/Rome")


def test_no_answer_writes_nothing(tmp_path: Path) -> None:
    """End of input (Ctrl-D) at a prompt: exit 2, no file."""
    path = tmp_path / "config.yaml"

    def closed(prompt: str) -> str:
        raise EOFError

    assert _init(_parser().parse_args(["init", str(path)]), ask=closed) == EXIT_BAD_INPUT
    assert not path.exists()


def test_the_written_file_lists_every_key_with_its_default_and_a_comment() -> None:
    """Every key config.py knows, its default unless init set it, a comment on its line;
    the secret is named by its variable, never written."""
    text = render_config(TenantSetup(TENANT, CLIENT_ID, "Europe/Paris"))
    values = flatten(text)
    assert sorted(values) == sorted(config_keys())
    for key in set(config_keys()) - SET_BY_INIT:
        assert values[key] == default_value(key), key
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert line.endswith(":") or " # " in line, line
    assert values["auth.client_secret"] is None
    assert "export ONBOARD_CLIENT_SECRET=" in text


def test_the_written_file_comments_each_key_with_its_doc() -> None:
    """Each key's comment is the first sentence of its description in the settings models
    (after its choices, when it has some): the file is generated, never typed twice."""
    text = render_config(TenantSetup(TENANT, CLIENT_ID, "Europe/Paris"))
    lines = text.splitlines()
    found: dict[str, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        for key, value in node.value:
            found[prefix + key.value] = lines[key.start_mark.line].partition(" # ")[2]
            if isinstance(value, yaml.MappingNode):
                walk(value, f"{prefix}{key.value}.")

    walk(yaml.compose(text), "")
    for key, setting in SETTINGS.items():
        choices = " | ".join(setting.choices)
        assert found[key].startswith(choices), key
        assert found[key].endswith(setting.summary[1:]), key


def test_validate_online_with_the_written_file_signs_in(
    tmp_path: Path, serve_simulator, secret_env, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file init writes is complete: validate --online signs in and checks the sheet
    (the simulator stands in for the tenant's hosts through ONBOARD_* overrides)."""
    state = SimulatorState(users("ada@contoso.com"))
    sim = serve_simulator(state)
    path = tmp_path / "config.yaml"
    assert main(["init", str(path), *FLAGS]) == EXIT_OK
    for name, value in (("ONBOARD_GRAPH_ENDPOINT", sim.url), ("ONBOARD_AUTH_AUTHORITY", sim.url),
                        ("ONBOARD_GRAPH_CA_BUNDLE", str(sim.ca_file))):
        monkeypatch.setenv(name, value)
    sheet = tmp_path / "hires.csv"
    sheet.write_text(f"UPN,Start Date\nada@contoso.com,{date.today() + timedelta(days=9)}\n")
    code = main(["validate", "--online", str(sheet), "-c", str(path), "--out",
                 str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "1 row ready to send, 0 with problems" in out
    assert state.tokens  # signed in
