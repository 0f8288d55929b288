"""The journal: kill -9 and resume, safe re-runs, signals, the lock, due dates, report and runs."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    audit_path_from,
    kill_after_creates,
    read_audit,
    run_cli,
    run_id_from,
    stderr_until,
    summary_of,
    users,
    wait_until,
)

from onboard import job
from onboard.cli import EXIT_LOCKED, EXIT_OK, EXIT_ROWS_FAILED, EXIT_TERMINATED, main
from onboard.config import load_config
from onboard.errors import AuditWriteError, ConfigError
from onboard.files import check_free_space
from onboard.journal import Journal, RunStatus
from onboard.simulator import Faults, SimulatorState

HIRES = [f"new{n:02d}@contoso.com" for n in range(60)]
SOON = (date.today() + timedelta(days=3)).isoformat()
LATER = (date.today() + timedelta(days=40)).isoformat()


def write_sheet(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("UPN,Start Date\n" + "".join(f"{u},{d}\n" for u, d in rows), encoding="utf-8")
    return path


def held_values(journal: Path) -> int:
    with sqlite3.connect(journal) as db:
        return int(db.execute("SELECT count(*) FROM rows WHERE pass_value IS NOT NULL")
                   .fetchone()[0])


def test_kill_9_at_several_points_then_the_same_command_finishes_the_job(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL part-way, three times, then run again: every row once, passes match Graph."""
    # Some creates finish at Graph only after the client gave up on them (and retried), so a
    # kill can leave a request at Graph that lands after the resumed run's new pass.
    hires = HIRES[:24]
    state = SimulatorState(
        users(*hires), faults=Faults(late_create_rate=0.25, late_create_seconds=0.4), seed=3
    )
    sim = serve_simulator(state)
    sheet = write_sheet(tmp_path / "hires.csv",
                        [(u, SOON) for u in hires] + [("ghost@contoso.com", SOON)])
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 3, "timeout_seconds": 0.2,
                                                  "settle_seconds": 1.0, "max_attempts": 10})
    journal = tmp_path / "state" / "journal.sqlite"
    for created in (3, 9, 15):  # kill at three different points
        kill_after_creates(sim, config, sheet, created)
    assert state.counts.get("late", 0) > 0
    created_before_final = len(state.issued)
    assert 0 < created_before_final < len(hires)  # the kills really landed part-way
    assert held_values(journal) > 0  # passes issued so far wait in the journal

    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    assert "resumed run" in out
    sheets = read_audit(audit_path_from(out))
    rows = [r["Row"] for name in ("Issued", "Failed", "Skipped") for r in sheets[name]]
    assert sorted(rows) == list(range(2, len(hires) + 3))  # every row exactly once
    assert [r["User"] for r in sheets["Failed"]] == ["ghost@contoso.com"]
    assert len(sheets["Issued"]) == len(hires)
    for row in sheets["Issued"]:
        user = str(row["User"])
        assert row["Temporary Access Pass"] == state.current_pass(user)
        # every pass Graph created for this user was a request the audit counts
        assert state.passes_created_for(user) <= int(row["Attempts"])  # type: ignore[arg-type]
    assert held_values(journal) == 0  # wiped once the audit was on disk


def test_rerun_of_a_finished_sheet_sends_nothing_and_reissue_user_overrides(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Running a finished sheet again creates no pass; --reissue-user replaces just one."""
    state = SimulatorState(users(*HIRES[:10]))
    sim = serve_simulator(state)
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:10]])
    config = sim.config(tmp_path / "c.yaml")
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    first_run = run_id_from(capsys.readouterr().out)
    created = len(state.issued)

    attempts = sum(state.create_attempts.values())
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert sum(state.create_attempts.values()) == attempts  # no create request at all
    sheets = read_audit(audit_path_from(out))
    assert sheets["Issued"] == []
    assert {r["Previous run"] for r in sheets["Skipped"]} == {first_run}
    assert all(str(r["Reason"]).startswith("already issued") and r["Issued at"]
               for r in sheets["Skipped"])

    assert main(["run", str(sheet), "-c", str(config), "--reissue-user", HIRES[4].upper()]) == 0
    sheets = read_audit(audit_path_from(capsys.readouterr().out))
    assert len(state.issued) == created + 1
    (again,) = sheets["Issued"]
    assert again["User"] == HIRES[4]
    assert again["Temporary Access Pass"] == state.current_pass(HIRES[4])
    assert f"replaces the one run {first_run} issued" in str(again["Note"])


def test_moved_start_date_issues_a_new_pass_and_says_so(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """HR moves a start date after the pass was issued: the next run issues for the new date."""
    state = SimulatorState(users(*HIRES[:3]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:3]])
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    capsys.readouterr()
    moved = (date.today() + timedelta(days=5)).isoformat()
    write_sheet(sheet, [(HIRES[0], SOON), (HIRES[1], moved), (HIRES[2], SOON)])
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    sheets = read_audit(audit_path_from(capsys.readouterr().out))
    (issued,) = sheets["Issued"]
    assert issued["User"] == HIRES[1]
    assert f"start moved from {SOON} 08:00–16:00 UTC to {moved} 08:00–16:00 UTC" in str(
        issued["Note"]
    )
    assert issued["Temporary Access Pass"] == state.current_pass(HIRES[1])
    assert len(sheets["Skipped"]) == 2


def test_due_within_issues_only_rows_starting_soon(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """--due-within 7 issues the rows starting within 7 days; the rest wait, counted."""
    state = SimulatorState(users(*HIRES[:4]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    sheet = write_sheet(tmp_path / "hires.csv", [(HIRES[0], SOON), (HIRES[1], LATER),
                                                  (HIRES[2], SOON), (HIRES[3], LATER)])
    assert main(["run", str(sheet), "-c", str(config), "--due-within", "7"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "(2 not yet due)" in out
    sheets = read_audit(audit_path_from(out))
    assert sorted(r["User"] for r in sheets["Issued"]) == [HIRES[0], HIRES[2]]
    assert all(str(r["Reason"]).startswith("not yet due") for r in sheets["Skipped"])
    assert summary_of(sheets)["Not yet due"] == 2
    # a daily job later: with a wider window the waiting rows are issued, the others skipped
    assert main(["run", str(sheet), "-c", str(config), "--due-within", "60"]) == EXIT_OK
    sheets = read_audit(audit_path_from(capsys.readouterr().out))
    assert sorted(r["User"] for r in sheets["Issued"]) == [HIRES[1], HIRES[3]]
    assert len(state.issued) == 4
    # a narrow window again: rows that already have a pass say so, not "not yet due"
    later_still = (date.today() + timedelta(days=50)).isoformat()
    write_sheet(sheet, [(HIRES[0], SOON), (HIRES[1], LATER), (HIRES[2], SOON),
                        (HIRES[3], later_still)])
    assert main(["run", str(sheet), "-c", str(config), "--due-within", "7"]) == EXIT_OK
    sheets = read_audit(audit_path_from(capsys.readouterr().out))
    reasons = {r["User"]: str(r["Reason"]) for r in sheets["Skipped"]}
    assert reasons[HIRES[1]].startswith("already issued")
    assert reasons[HIRES[3]].startswith("not yet due") and f"start moved from {LATER}" in (
        reasons[HIRES[3]])
    assert len(state.issued) == 4
    assert main(["run", str(sheet), "-c", str(config), "--reissue-user", "nobody@x.com"]) == 2
    assert "--reissue-user names no row" in capsys.readouterr().err


def test_sigterm_finishes_in_flight_writes_the_audit_and_a_rerun_completes(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM: no new rows, the audit is written (exit 143); the same command finishes later."""
    hires = HIRES[:20]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in hires])
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 2})
    # The signal lands while the fifth pass is made and not yet answered: requests in flight.
    with sim.hold_after(5) as reached:
        proc = run_cli(config, str(sheet))
        wait_until(lambda: reached.is_set() or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        said = stderr_until(proc, "finishing the requests in flight")
    out, err = proc.communicate(timeout=60)
    err = said + err
    assert proc.returncode == EXIT_TERMINATED, err
    assert "finishing the requests in flight" in err
    sheets = read_audit(audit_path_from(out))
    assert summary_of(sheets)["Status"] == "stopped"
    rows = sorted(r["Row"] for n in ("Issued", "Failed", "Skipped") for r in sheets[n])
    assert rows == list(range(2, len(hires) + 2))
    issued_first = {r["User"] for r in sheets["Issued"]}
    assert 0 < len(issued_first) < len(hires)
    assert {r["Reason"] for r in sheets["Failed"]} == {"Not sent: run stopped"}
    for row in sheets["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))

    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    sheets = read_audit(audit_path_from(capsys.readouterr().out))
    assert {r["User"] for r in sheets["Skipped"]} == issued_first
    assert len(sheets["Issued"]) == len(hires) - len(issued_first)
    assert len(state.issued) == len(hires)


def test_second_run_on_the_same_journal_exits_with_the_lock_code(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one run holds the journal, another exits 5 at once, naming the holder."""
    state = SimulatorState(users(*HIRES[:2]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:2]])
    with Journal(tmp_path / "state" / "journal.sqlite"):
        assert main(["run", str(sheet), "-c", str(config)]) == EXIT_LOCKED
    err = capsys.readouterr().err
    assert "another onboard run is using the journal" in err and f"pid {os.getpid()}" in err
    assert state.counts == {}


def test_report_recovers_a_killed_run_and_runs_lists_it(
    tmp_path: Path, serve_simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`onboard report` writes a killed run's audit with the passes it held; `runs` lists it."""
    hires = HIRES[:20]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in hires])
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 2})
    kill_after_creates(sim, config, sheet, 5)

    assert main(["runs", "-c", str(config)]) == EXIT_OK
    listing = capsys.readouterr().out
    (line,) = [line for line in listing.splitlines() if "stopped early: resume" in line]
    run_id = line.split()[0]
    assert main(["report", run_id, "-c", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    path = Path(out.split("journal: ")[1].split()[0])
    sheets = read_audit(path)
    assert sheets["Issued"]
    for row in sheets["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))
    assert held_values(tmp_path / "state" / "journal.sqlite") == 0
    assert main(["report", run_id, "-c", str(config)]) == EXIT_OK  # again: no values now
    out = capsys.readouterr().out
    assert "pass values are not in it" in out
    rebuilt = read_audit(Path(out.split("journal: ")[1].split()[0]))
    assert all(str(r["Temporary Access Pass"]).startswith("(not kept") for r in rebuilt["Issued"])


def test_journal_and_log_file_are_owner_only_and_hold_no_passes(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run the journal (0600) holds no pass values; --log-file has timestamped lines."""
    state = SimulatorState(users(*HIRES[:5]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:5]])
    log_file = tmp_path / "onboard.log"
    assert main(["run", str(sheet), "-c", str(config), "--log-file", str(log_file)]) == EXIT_OK
    capsys.readouterr()
    journal = tmp_path / "state" / "journal.sqlite"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700
    assert held_values(journal) == 0
    logged = log_file.read_text()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert "pass issued" in logged and logged[:4].isdigit()
    everything = logged + journal.read_bytes().decode("latin-1")
    for created in state.issued:
        assert created.value not in everything


def test_too_little_disk_space_stops_before_sending(tmp_path: Path) -> None:
    """The free-space check refuses a run whose journal and audit may not fit."""
    with pytest.raises(ConfigError, match="not enough free disk space"):
        check_free_space([tmp_path], 10**12)


def test_a_killed_run_of_an_edited_sheet_is_recovered_and_its_users_checked(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed, then HR adds a row (so not "the same command"): the killed run's workbook lists
    all its rows, and the new run skips the issued users and checks the doubtful ones."""
    state = SimulatorState(users(*HIRES[:16]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 2, "settle_seconds": 0.3})
    sheet = write_sheet(tmp_path / "january.csv", [(u, SOON) for u in HIRES[:15]])
    kill_after_creates(sim, config, sheet, 5)

    write_sheet(sheet, [(u, SOON) for u in HIRES[:16]])  # HR added a row
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    recovered = [p for p in (tmp_path / "audit").glob("onboard-*.xlsx")
                 if summary_of(read_audit(p))["Status"] == "recovered from the journal"]
    (path,) = recovered
    old = read_audit(path)
    rows = sorted(r["Row"] for n in ("Issued", "Failed", "Skipped") for r in old[n])
    assert rows == list(range(2, 17))  # every row of the killed run, sent or not
    assert {r["Reason"] for r in old["Failed"]} <= {"Not sent: run stopped", "Interrupted"}
    for row in old["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))

    new = read_audit(audit_path_from(out))
    assert {r["User"] for r in new["Skipped"]} == {r["User"] for r in old["Issued"]}
    assert len(new["Issued"]) + len(new["Skipped"]) == 16
    for row in new["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))
    interrupted = {r["User"] for r in old["Failed"] if r["Reason"] == "Interrupted"}
    checked = {r["User"] for r in new["Issued"] if "may still land" in str(r["Note"])}
    assert checked == interrupted
    assert held_values(tmp_path / "state" / "journal.sqlite") == 0


def test_readme_crontab_line_works(tmp_path: Path) -> None:
    """The cron guide's crontab command, run by /bin/sh as cron would: logs, alerts on exit 1."""
    guide = (ROOT / "docs" / "guide" / "cron.md").read_text(encoding="utf-8")
    block = guide.split("```cron\n", 1)[1].split("```", 1)[0]
    (entry,) = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    command = entry.split(None, 5)[5]  # drop the five schedule fields
    env_file = tmp_path / "env"
    env_file.write_text(
        "export ONBOARD_CLIENT_SECRET=simulator-secret\n"
        f"export ONBOARD_STATE_PATH={tmp_path / 'journal.sqlite'}\n"
        f"export ONBOARD_OUTPUT_DIR={tmp_path / 'audit'}\n"
        "export ONBOARD_SIMULATOR_TENANT=null\n"  # every name@domain exists
        # The shipped config's simulator is slow and flaky for the demo: not what this tests.
        "export ONBOARD_SIMULATOR_LATENCY_MS=0 ONBOARD_SIMULATOR_FAULT_RATE=0\n"
    )
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    sheet = write_sheet(tmp_path / "hires.csv", [
        ("a@contoso.com", tomorrow), ("b@contoso.com", tomorrow), ("c@contoso.com", LATER),
        ("d@contoso.com", "someday"), ("e@contoso.com", LATER), ("f@contoso.com", tomorrow),
    ])
    for old, new in {
        "/opt/onboard": str(ROOT),
        "/etc/onboard/env": str(env_file),
        ".venv/bin/onboard": f"{sys.executable} -m onboard",
        "/srv/hr/new-hires.xlsx": str(sheet),
        "/var/log/onboard.log": str(tmp_path / "onboard.log"),
        "/var/log/onboard-run.log": str(tmp_path / "onboard-run.log"),
    }.items():
        assert old in command, old
        command = command.replace(old, new)
    mail_at = command.index("mail ")
    command = command[:mail_at] + f"cat > {tmp_path / 'mail'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
    done = subprocess.run(["/bin/sh", "-c", command], env=env, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "onboard.log").read_text()
    assert stat.S_IMODE((tmp_path / "onboard.log").stat().st_mode) == 0o600  # umask 077
    assert "6 rows: 3 issued, 1 failed, 2 skipped (2 not yet due)" in log
    assert "onboard exit 1" in (tmp_path / "mail").read_text()  # the unreadable date
    assert "Invalid Start Date" in (tmp_path / "onboard-run.log").read_text()


def test_a_later_request_of_unknown_fate_is_checked_before_skipping(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run A issues; run B's --reissue-user loses every answer and gives up; run C must not
    trust A's pass (Graph holds B's), so it asks Graph and issues again."""
    user = HIRES[0]
    state = SimulatorState(users(user, HIRES[1]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", run={"max_attempts": 2})
    sheet = write_sheet(tmp_path / "hires.csv", [(user, SOON), (HIRES[1], SOON)])
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    capsys.readouterr()
    state.faults.lost_response_rate = 1.0
    assert main(["run", str(sheet), "-c", str(config), "--reissue-user", user]) == 1
    capsys.readouterr()
    state.faults.lost_response_rate = 0.0
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    sheets = read_audit(audit_path_from(capsys.readouterr().out))
    (issued,) = sheets["Issued"]
    assert issued["User"] == user and "may not stand" in str(issued["Note"])
    assert issued["Temporary Access Pass"] == state.current_pass(user)
    (skipped,) = sheets["Skipped"]  # the other user's pass stands: no need to even ask
    assert skipped["User"] == HIRES[1]


def test_rows_not_sent_before_a_stop_are_sent_when_the_run_resumes(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """Stopped (nothing sent), then the audit cannot be written, which leaves the journal as a
    kill before the audit would: resuming sends those rows."""
    state = SimulatorState(users(*HIRES[:6]))
    sim = serve_simulator(state)
    config = load_config(sim.config(tmp_path / "c.yaml"), {})
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:6]])
    folder = config.output.dir

    def audit_folder_lost(doing: str) -> None:
        if folder.is_dir():  # checked writable at the start; a file by the time of the audit
            folder.rmdir()
            folder.write_bytes(b"")

    stopped = asyncio.Event()
    stopped.set()  # stopped before the first row
    with pytest.raises(AuditWriteError):
        asyncio.run(job.run(config, [sheet], env=os.environ, stop=stopped,
                            on_phase=audit_folder_lost))  # fmt: skip
    assert state.issued == []
    folder.unlink()
    report = asyncio.run(job.run(config, [sheet], env=os.environ))
    assert report.resumed
    assert len(report.issued) == 6 and report.failed == [] and report.skipped == []
    for item in report.issued:
        assert item.temporary_access_pass == state.current_pass(item.request.user)


def test_second_signal_stops_at_once_and_the_same_command_resumes(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two SIGINTs: exit 130 at once, no audit; the journal lets the same command finish."""
    hires = HIRES[:20]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in hires])
    # Creates only (no reads ahead of them), so that creates are in flight at the signal: a
    # stop abandons reads at once, but gives requests that may make a pass their grace.
    creates_only = {"existing": "replace", "allow_existing_accounts": True}
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 2}, **{"pass": creates_only})
    # Hold the answers to the requests in flight, so the run cannot finish them (and write its
    # audit) between the two signals.
    with sim.hold_after(5) as reached:
        proc = run_cli(config, str(sheet))
        wait_until(lambda: reached.is_set() or proc.poll() is not None)
        proc.send_signal(signal.SIGINT)
        said = stderr_until(proc, "finishing the requests in flight")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    err = said + err
    assert proc.returncode == 130, err
    assert "stopping at once" in err and "audit workbook:" not in out
    assert "Traceback" not in err and "never retrieved" not in err
    assert not list((tmp_path / "audit").glob("onboard-*.xlsx"))
    assert held_values(tmp_path / "state" / "journal.sqlite") > 0

    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "resumed run" in out
    sheets = read_audit(audit_path_from(out))
    assert len(sheets["Issued"]) == len(hires)
    for row in sheets["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))


def test_no_pass_value_survives_in_the_journal_files(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the audit is written, neither the journal nor its WAL holds any pass value."""
    state = SimulatorState(users(*HIRES[:30]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:30]])
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    capsys.readouterr()
    files = list((tmp_path / "state").iterdir())
    data = b"".join(f.read_bytes() for f in files if f.is_file())
    for created in state.issued:
        assert created.value.encode() not in data
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_a_killed_request_that_lands_after_the_resend_is_caught(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed while its create was at Graph; that create lands after the resumed run's new one.
    The resumed run checks with Graph after settling and issues again."""
    user = HIRES[0]
    state = SimulatorState(users(user), faults=Faults(late_create_rate=1.0,
                                                     late_create_seconds=1.5))
    sim = serve_simulator(state)
    sheet = write_sheet(tmp_path / "hires.csv", [(user, SOON)])
    config = sim.config(tmp_path / "c.yaml", run={"timeout_seconds": 30, "settle_seconds": 2})
    proc = run_cli(config, str(sheet))
    wait_until(lambda: sum(state.create_attempts.values()) >= 1)  # the create is at Graph
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    state.faults.late_create_rate = 0.0  # Graph answers the resumed run at once

    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    (row,) = read_audit(audit_path_from(capsys.readouterr().out))["Issued"]
    wait_until(lambda: state.passes_created_for(user) >= 2)  # the killed request has landed
    assert state.passes_created_for(user) >= 3  # killed one, resent one, and one more after it
    assert row["Temporary Access Pass"] == state.current_pass(user)
    assert "issued again" in str(row["Note"])


def test_reissue_replaces_every_pass_and_a_concurrent_run_is_refused(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reissue sends every row again; meanwhile a second run exits 5 at once, naming the
    process that holds the journal."""
    state = SimulatorState(users(*HIRES[:20]))
    sim = serve_simulator(state)
    sheet = write_sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:20]])
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 1})
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_OK
    assert capsys.readouterr().out

    reissued: list[job.RunReport] = []

    def reissue() -> None:
        loaded = load_config(config, os.environ)
        reissued.append(asyncio.run(job.run(loaded, [sheet], env=os.environ, reissue=True)))

    again = threading.Thread(target=reissue)
    with sim.hold_after(22) as reached:  # the --reissue run is issuing, held mid-way
        again.start()
        wait_until(lambda: reached.is_set() or not again.is_alive())
        started = time.monotonic()
        assert main(["run", str(sheet), "-c", str(config)]) == EXIT_LOCKED
        assert time.monotonic() - started < 10  # at once, not after the other run
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    again.join(120)
    (report,) = reissued  # it ended as `run` exits 0: completed, nothing failed or doubtful
    assert report.status is RunStatus.COMPLETED and not report.failed and not report.attention
    assert report.audit_path is not None
    sheets = read_audit(report.audit_path)
    assert len(sheets["Issued"]) == 20
    assert all("issued again on request (--reissue)" in str(r["Note"]) for r in sheets["Issued"])
    for row in sheets["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))


def test_reissue_user_whose_rows_failed_does_not_stop_the_run(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reissue-user for a user whose rows failed their checks warns; the others are issued."""
    state = SimulatorState(users(*HIRES[:3]))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    sheet = write_sheet(tmp_path / "hires.csv", [(HIRES[0], SOON), (HIRES[0], LATER),
                                                  (HIRES[1], SOON), (HIRES[2], SOON)])
    code = main(["run", str(sheet), "-c", str(config), "--reissue-user", f" {HIRES[0].upper()} "])
    captured = capsys.readouterr()
    assert code == EXIT_ROWS_FAILED  # the conflicting rows fail; the others are issued
    assert "rows failed their checks" in captured.err
    sheets = read_audit(audit_path_from(captured.out))
    assert sorted(r["User"] for r in sheets["Issued"]) == [HIRES[1], HIRES[2]]
    assert {r["Reason"] for r in sheets["Failed"]} == {"Conflicting rows"}
