"""`--json`: standard output is one JSON value and nothing else, for every command a script
runs (run, validate, runs, report, status, revoke); logs stay on standard error; exit codes
are those of the same command without it; no pass value is ever in it."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import users

from onboard.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_ROWS_FAILED, main
from onboard.simulator import SimulatorState

ROOT = Path(__file__).resolve().parent.parent
PAST = (date.today() - timedelta(days=1)).isoformat()
LATER = (date.today() + timedelta(days=5)).isoformat()
HIRES = ["ada@contoso.com", "alan@contoso.com", "grace@contoso.com"]


def one_value(capsys: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    """Standard output parsed as exactly one JSON value (json.loads refuses anything after
    it), and standard error."""
    said = capsys.readouterr()
    return json.loads(said.out), said.err


def sheet(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "hires.csv"
    lines = "".join(f"{u},{LATER}\n" for u in HIRES)
    path.write_text(f"UPN,Start Date\n{lines}{extra}", encoding="utf-8")
    return path


def no_pass_value(state: SimulatorState, *texts: str) -> bool:
    return not any(p.value in text for p in state.issued for text in texts)


def test_run_json_has_the_run_its_counts_and_audit_and_no_pass_value(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --json`: run id, counts, audit path, simulated, each row; exit 1 as without it."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    path = sheet(tmp_path, f"ghost@contoso.com,{LATER}\n{HIRES[0]},{LATER}\n")
    assert main(["run", str(path), "-c", str(config), "--json", "-v"]) == EXIT_ROWS_FAILED
    said = capsys.readouterr()
    run = json.loads(said.out)
    assert "issued" in said.err  # -v's log lines: on standard error only
    assert no_pass_value(state, said.out, said.err)
    assert run["counts"] == {
        "issued": 3,
        "failed": 1,
        "skipped": 1,
        "held_elsewhere": 0,
        "not_sent": 0,
        "not_yet_due": 0,
    }
    assert run["simulated"] is True  # the simulator's tokens say so, even reached by URL
    assert run["status"] == "completed" and run["rows"] == 5
    assert Path(run["audit_path"]).is_file()
    assert [(f["user"], f["reason"], f["label"]) for f in run["failed"]] == [
        ("ghost@contoso.com", "user_not_found", "User not found")
    ]
    assert [s["reason"] for s in run["skipped"]] == ["repeated"]
    assert sorted(i["user"] for i in run["issued"]) == sorted(HIRES)
    assert {i["method_id"] for i in run["issued"]} == {p.id for p in state.issued}
    assert not any("temporary_access_pass" in json.dumps(i) for i in run["issued"])


def test_validate_json_lists_problems_and_keeps_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate --json` offline: the rows ready, each problem with its column; exit 1."""
    path = sheet(tmp_path, "bad@contoso.com,someday\n")
    args = ["validate", str(path), "-c", str(ROOT / "config.yaml"), "--out", str(tmp_path)]
    assert main([*args, "--json"]) == EXIT_ROWS_FAILED
    found, _ = one_value(capsys)
    assert (found["ok"], found["online"], found["ready"]) == (False, False, 3)
    (problem,) = found["problems"]
    assert (problem["row"], problem["column"], problem["reason"]) == (5, "Start Date", "invalid")
    assert Path(found["workbook"]).is_file()
    assert found["files"][0]["rows"] == 4
    assert main(args) == EXIT_ROWS_FAILED  # the same code without --json
    assert "ready to send" in capsys.readouterr().out


def test_runs_and_report_json(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runs --json`: every run with its counts; `report --json`: the workbook rebuilt."""
    state = SimulatorState(users(*HIRES))
    config = serve_simulator(state).config(tmp_path / "c.yaml")
    assert main(["runs", "-c", str(config), "--json"]) == EXIT_OK
    assert one_value(capsys)[0] == []  # no journal yet: an empty list, still JSON
    assert main(["run", str(sheet(tmp_path)), "-c", str(config), "--json"]) == EXIT_OK
    run_id = one_value(capsys)[0]["run_id"]
    assert main(["runs", "-c", str(config), "--json"]) == EXIT_OK
    (run,) = one_value(capsys)[0]
    assert (run["run_id"], run["status"], run["running_now"], run["simulated"]) == (
        run_id,
        "completed",
        False,
        True,
    )
    assert run["counts"] == {
        "issued": 3,
        "failed": 0,
        "skipped": 0,
        "held_elsewhere": 0,
        "not_sent": 0,
        "in_flight": 0,
        "revoked": 0,
    }
    assert main(["report", run_id, "-c", str(config), "--json"]) == EXIT_OK
    rebuilt, _ = one_value(capsys)
    assert (rebuilt["run_id"], rebuilt["pass_values"]) == (run_id, False)
    assert Path(rebuilt["workbook"]).is_file()


def test_status_and_revoke_json(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json`: an array, one object per pass with user, state, registered;
    `revoke --json`: an object with each pass's action, never a value."""
    state = SimulatorState(users(*HIRES))
    config = serve_simulator(state).config(tmp_path / "c.yaml")
    assert main(["run", str(sheet(tmp_path)), "-c", str(config), "--json"]) == EXIT_OK
    run_id = one_value(capsys)[0]["run_id"]
    assert main(["status", run_id, "-c", str(config), "--json"]) == EXIT_OK
    passes, _ = one_value(capsys)
    assert [(p["user"], p["state"], p["registered"]) for p in passes] == [
        (user, "not yet valid", []) for user in HIRES
    ]
    assert main(["revoke", run_id, "--yes", "-c", str(config), "--json"]) == EXIT_OK
    said = capsys.readouterr()
    done = json.loads(said.out)
    assert done["counts"] == {"deleted": 3}
    assert [p["action"] for p in done["passes"]] == ["deleted"] * 3
    assert no_pass_value(state, said.out)


def test_a_command_that_stops_still_prints_one_json_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error (exit 2 here) is one JSON object naming the exit code and why; stderr says it
    as without --json."""
    config = tmp_path / "c.yaml"
    config.write_text(f"graph:\n  endpoint: simulator\nstate:\n  path: {tmp_path / 'j.sqlite'}\n")
    assert main(["report", "nosuchrun", "-c", str(config), "--json"]) == EXIT_BAD_INPUT
    said, err = one_value(capsys)
    assert said["error"]["exit_code"] == EXIT_BAD_INPUT
    assert "no journal" in said["error"]["message"] and "no journal" in err


def test_the_quick_start_sample_run_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's demo with --json: 55 rows, 50 issued, 4 failed, 1 skipped, simulated."""
    monkeypatch.setenv("ONBOARD_STATE_PATH", str(tmp_path / "journal.sqlite"))
    # The demo's faults and throttling stay; only the client's waits before a retry are short.
    monkeypatch.setenv("ONBOARD_RUN_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("ONBOARD_RUN_BACKOFF_MAX_SECONDS", "0.05")
    code = main(
        [
            "run",
            str(ROOT / "samples" / "new_hires.xlsx"),
            "-c",
            str(ROOT / "config.yaml"),
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert code == EXIT_ROWS_FAILED
    run, _ = one_value(capsys)
    assert (run["rows"], run["counts"]["issued"], run["counts"]["failed"]) == (55, 50, 4)
    assert run["counts"]["skipped"] == 1 and run["simulated"] is True
    assert Path(run["audit_path"]).name.endswith("-simulated.xlsx")
