"""End to end: the CLI against the simulator, as an admin would run it."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import read_audit, users
from openpyxl import load_workbook

from onboard import job
from onboard.cli import (
    EXIT_ABORTED,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_ROWS_FAILED,
    _parser,
    _Progress,
    _setup_logging,
    main,
)
from onboard.simulator import Faults, SimulatorState

ROOT = Path(__file__).resolve().parent.parent
SIM = "graph:\n  endpoint: simulator\n"
GOOD = [f"hire{n:02d}@contoso.com" for n in range(40)]


SOON = [(date.today() + timedelta(days=30 + n)).isoformat() for n in range(5)]


def sheet(tmp_path: Path, extra: str = "") -> Path:
    lines = ["Name,Work Email,Start Date,Lifetime"]
    lines += [f"Hire {n},{upn},{SOON[n % 5]}," for n, upn in enumerate(GOOD)]
    path = tmp_path / "hires.csv"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def audit_rows(path: Path) -> dict[str, list[dict[str, object]]]:
    """The Issued, Failed and Skipped sheets' rows."""
    sheets = read_audit(path)
    return {name: sheets[name] for name in ("Issued", "Failed", "Skipped")}


def latest_audit(directory: Path) -> Path:
    (path,) = sorted(p for p in directory.glob("onboard-*.xlsx") if "-validate-" not in p.name)
    return path


def test_run_at_vv_logs_requests_and_prints_no_pass(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """-vv logs every request with Graph's request-id; a failed row exits 1; no pass value
    and no client secret is printed or logged (what the run does with faults and throttling:
    test_api.test_run_with_throttling_and_faults_accounts_for_every_row)."""
    state = SimulatorState(users(*GOOD[:8]), faults=Faults(lost_response_rate=0.5), seed=11)
    sim = serve_simulator(state)
    path = tmp_path / "hires.csv"
    path.write_text("UPN,Start Date\n" + "".join(f"{upn},{SOON[0]}\n" for upn in GOOD[:8])
                    + f"ghost@contoso.com,{SOON[0]}\n", encoding="utf-8")
    config = sim.config(tmp_path / "config.yaml", run={"max_attempts": 20})
    code = main(["run", str(path), "-c", str(config), "-vv"])
    printed = capsys.readouterr()
    assert code == EXIT_ROWS_FAILED
    everything = printed.out + printed.err
    assert "request-id" in everything  # -vv really logged requests
    assert state.issued and state.counts.get("lost", 0) > 0
    for created in state.issued:  # no pass value, current or replaced, was printed or logged
        assert created.value not in everything
    assert "simulator-secret" not in everything


def test_all_issued_exits_zero_and_names_the_audit(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clean run exits 0 and prints the counts and the audit workbook's path."""
    sim = serve_simulator(SimulatorState(users(*GOOD)))
    code = main(["run", str(sheet(tmp_path)), "-c", str(sim.config(tmp_path / "c.yaml"))])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert f"{len(GOOD)} rows: {len(GOOD)} issued, 0 failed, 0 skipped" in out
    assert str(latest_audit(tmp_path / "audit")) in out


def test_missing_input_is_bad_input_and_sends_nothing(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file exits 2 with its name, before any request reaches Graph."""
    state = SimulatorState(users(*GOOD))
    sim = serve_simulator(state)
    missing = tmp_path / "nope.xlsx"
    code = main(["run", str(missing), "-c", str(sim.config(tmp_path / "c.yaml"))])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert f"{missing}: file not found" in err
    assert state.counts == {}


def test_wrong_secret_aborts_before_any_pass(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refused client secret exits 3 with advice; no create request is sent."""
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", "not-the-secret")
    state = SimulatorState(users(*GOOD))
    sim = serve_simulator(state)
    code = main(["run", str(sheet(tmp_path)), "-c", str(sim.config(tmp_path / "c.yaml"))])
    err = capsys.readouterr().err
    assert code == EXIT_ABORTED
    assert "invalid_client" in err and "not-the-secret" not in err
    assert state.issued == [] and "graph_requests" not in state.counts


def test_unwritable_output_dir_fails_before_any_request(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the audit cannot be written, the run stops first: no pass is created and lost."""
    state = SimulatorState(users(*GOOD))
    sim = serve_simulator(state)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["run", str(sheet(tmp_path)), "-c", str(sim.config(tmp_path / "c.yaml")),
                 "--out", str(blocker / "audit")])
    assert code == EXIT_BAD_INPUT
    assert "cannot write the audit workbook" in capsys.readouterr().err
    assert state.issued == []


def test_validate_lists_problems_without_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate prints a table of problems (file, row, column, problem, what to do), writes
    the same to a workbook in the output folder, and exits 1 when there are any."""
    path = sheet(tmp_path, "Bad,bad@contoso.com,31/02/2027,\n")
    out_dir = tmp_path / "out"
    code = main(["validate", str(path), "-c", str(ROOT / "config.yaml"), "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == EXIT_ROWS_FAILED
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("hires.csv  42"))
    assert lines[row].split() == [
        "hires.csv", "42", "Start", "Date", "bad@contoso.com", "Invalid", "Start", "Date"]
    assert "'31/02/2027' is not a valid date" in lines[row + 1]
    assert f"{len(GOOD)} rows ready to send, 1 with problems" in out
    (written,) = out_dir.glob("onboard-validate-*.xlsx")
    book = load_workbook(written)
    rows = list(book["Problems"].iter_rows(values_only=True))
    assert rows[0] == ("Source file", "Row", "Column", "User", "Kind", "Problem", "What to do")
    assert rows[1][:6] == ("hires.csv", 42, "Start Date", "bad@contoso.com", "problem",
                           "Invalid Start Date")
    assert "is not a valid date" in str(rows[1][6])


def test_validate_passes_a_clean_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No problem: exit 0, nothing to fix."""
    path = sheet(tmp_path)
    code = main(["validate", str(path), "-c", str(ROOT / "config.yaml"), "--out",
                 str(tmp_path / "out")])
    assert code == EXIT_OK
    assert f"{len(GOOD)} rows ready to send, 0 with problems" in capsys.readouterr().out


def test_every_command_has_help() -> None:
    """Each subcommand documents itself."""
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {"run", "deliver", "validate", "simulate", "report", "runs", "status",
                             "revoke", "init"}
    for name, sub in commands.items():
        assert sub.description, name
        assert all(a.help for a in sub._actions if a.dest != "help"), name


def test_quick_start_demo_prints_what_the_readme_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's demo: the shipped config and sample against the built-in simulator exit 1
    and print what the README shows, and no pass value (the rows' outcomes:
    test_api.test_the_sample_fails_the_rows_it_is_meant_to)."""
    for name in [k for k in os.environ if k.startswith("ONBOARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ONBOARD_STATE_PATH", str(tmp_path / "journal.sqlite"))
    monkeypatch.chdir(ROOT)  # the README's command finds ./config.yaml
    code = main(["run", "samples/new_hires.xlsx", "--out", str(tmp_path)])
    printed = capsys.readouterr()
    assert code == EXIT_ROWS_FAILED, printed.err
    assert "55 rows: 50 issued, 4 failed, 1 skipped" in printed.out
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("prints on standard output:\n\n```\n", 1)[1].split("```", 1)[0]
    run_id = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
    folder = re.compile(r"(?m)^(audit workbook: ).*/")
    same = [run_id.sub("RUN", folder.sub(r"\1", text)) for text in (shown, printed.out)]
    assert same[0] == same[1]  # the README shows what the demo prints, but for id and folder
    for row in audit_rows(latest_audit(tmp_path))["Issued"]:
        assert str(row["Temporary Access Pass"]) not in printed.out + printed.err


def test_simulate_serves_a_tenant_a_config_can_point_at_until_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`onboard simulate` prints the URL and CA to put in a config; a run against it works;
    Ctrl-C is how the simulator is stopped: 'simulator stopped', exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "onboard", "simulate", "--port", "0", "--cert-dir",
         str(tmp_path / "certs"), "-c", str(ROOT / "config.yaml")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(12)]
        printed = "".join(lines)
        assert lines[-1].startswith("and the demo client secret: export ONBOARD_CLIENT_SECRET=")
        url = next(line.split()[-1] for line in lines if "endpoint:" in line)
        assert url.startswith("https://127.0.0.1:")
        block = printed.split("point a config at it with:\n")[1].split("and the demo")[0]
        config = tmp_path / "url.yaml"  # the printed lines, as they are, and two of our own
        config.write_text(textwrap.dedent(block) + f"output:\n  dir: {tmp_path / 'audit'}\n"
                          "run:\n  backoff_seconds: 0.01\n")
        monkeypatch.setenv("ONBOARD_CLIENT_SECRET", "simulator-secret")
        code = main(["run", str(ROOT / "samples" / "new_hires.csv"), "-c", str(config)])
        out = capsys.readouterr().out
        assert code == EXIT_ROWS_FAILED
        assert "55 rows: 50 issued, 4 failed, 1 skipped" in out
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=10)
        assert (server.returncode, err) == (EXIT_OK, "simulator stopped\n")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_internal_error_exits_4_with_a_short_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug in the run exits 4 naming only its type, never its message (it may hold data);
    the audit the run still writes: test_api.test_internal_error_still_writes_the_audit."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(job, "run", broken)
    config = tmp_path / "config.yaml"
    config.write_text(SIM)
    code = main(["run", str(sheet(tmp_path)), "-c", str(config)])
    err = capsys.readouterr().err
    assert code == EXIT_INTERNAL
    assert "internal error (RuntimeError)" in err and "secret detail" not in err


def test_same_file_twice_and_same_names_in_two_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same file given twice is refused; two files with one name are told apart by path."""
    monkeypatch.chdir(tmp_path)  # the problems workbook goes to ./audit: here, not the checkout
    first = sheet(tmp_path)
    assert main(["validate", str(first), str(first)]) == EXIT_BAD_INPUT
    assert "is given twice" in capsys.readouterr().err
    other = tmp_path / "site2"
    other.mkdir()
    (other / "hires.csv").write_text(f"UPN,Start Date\nzed@contoso.com,{SOON[0]}\n")
    assert main(["validate", str(first), str(other / "hires.csv")]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{other / 'hires.csv'}: 1 rows" in out or f"{other / 'hires.csv'}: 1 row" in out


def test_run_and_validate_online_refuse_without_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ./config.yaml and no -c: run and validate --online exit 2 saying how to start,
    instead of reporting simulated passes; validate (offline) still checks the sheet."""
    monkeypatch.chdir(tmp_path)
    path = sheet(tmp_path)
    for args in (["run", str(path)], ["validate", "--online", str(path)]):
        assert main(args) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert "no config file" in err and "'onboard init'" in err
        assert "'graph.endpoint: simulator'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hires.csv"]  # no audit, no journal
    assert main(["validate", str(path)]) == EXIT_OK


def test_config_option_before_or_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`onboard -c FILE validate ...` uses FILE, as `onboard validate ... -c FILE` does."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "people.yaml"
    config.write_text(SIM + "input:\n  columns:\n    user: [Person]\n")
    hires = tmp_path / "hires.csv"
    hires.write_text(f"Person,Start Date\nada@contoso.com,{SOON[0]}\n")
    assert main(["-c", str(config), "validate", str(hires)]) == EXIT_OK
    assert main(["validate", str(hires), "-c", str(config)]) == EXIT_OK
    assert "1 row ready to send" in capsys.readouterr().out
    assert _parser().parse_args(["-c", "a.yaml", "runs"]).config == "a.yaml"
    assert _parser().parse_args(["-c", "a.yaml", "runs", "-c", "b.yaml"]).config == "b.yaml"
    assert _parser().parse_args(["-v", "runs"]).verbose == 1


@pytest.mark.parametrize("name", ["folder", "x.csv", "x.xlsx"])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_directory_as_input_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, name: str
) -> None:
    """A folder (even one named like a spreadsheet) is exit 2 naming it, not an internal error."""
    config = tmp_path / "config.yaml"
    config.write_text(SIM)
    folder = tmp_path / name
    folder.mkdir()
    assert main([command, str(folder), "-c", str(config)]) == EXIT_BAD_INPUT
    assert f"onboard: {folder}: is a directory, not a spreadsheet" in capsys.readouterr().err


def test_simulate_on_a_busy_port_names_the_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port another program holds is a usage error (exit 2) naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["simulate", "--port", str(port), "--cert-dir", str(tmp_path / "certs"),
                     "-c", str(ROOT / "config.yaml")])
    assert code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == (
        f"onboard: cannot serve the simulator on 127.0.0.1 port {port}: Address already in "
        "use; choose another with --port (0: any free port)\n")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, so the progress bar draws on it."""

    def isatty(self) -> bool:
        return True


def test_the_bar_is_redrawn_while_no_row_finishes() -> None:
    """keep_fresh redraws the bar every second (its clock moves) with no row done."""
    screen = Terminal()
    progress = _Progress(screen)
    progress.start(3)
    drawn = screen.getvalue().count("\r")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(progress.keep_fresh(sleep=sleep))
    progress.close()
    assert waits == [1.0] * 4
    assert screen.getvalue().count("\r") >= drawn + 3
    assert screen.getvalue().count("0/3") >= 4


def test_log_lines_print_above_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning during a run clears the bar's line, prints, and draws the bar again below."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    _setup_logging(0)
    progress = _Progress()
    progress.start(3)
    before = len(screen.getvalue())
    logging.getLogger("onboard.pool").warning("row 5 failed")
    progress.close()
    written = screen.getvalue()[before:]
    assert re.match(r"\r +\r\S+ WARNING onboard\.pool: row 5 failed\n\r +0%\|", written), written
