"""Re-runs and resumes that must not hand out a dead pass or replace a live one: waiting for
earlier requests to settle, the journal's own order, throttled rows, the real file behind a
path, the person behind a name, and the start and end instants of a pass."""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import read_audit, users

from onboard import job
from onboard.cli import EXIT_ABORTED, EXIT_OK, main
from onboard.config import load_config
from onboard.decide import settle_wait
from onboard.journal import Journal, Person, RunStatus
from onboard.outcomes import Issued, Origin, Outcome, PassRequest
from onboard.simulator import WRITE_LIMIT, Faults, SimulatorState

ROOT = Path(__file__).resolve().parent.parent
SOON = (date.today() + timedelta(days=5)).isoformat()
HIRES = [f"hire{n}@contoso.com" for n in range(6)]
ENV = {"ONBOARD_CLIENT_SECRET": "simulator-secret"}


def sheet(path: Path, rows: list[tuple[str, str]], header: str = "UPN,Start Date") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{u},{d}\n" for u, d in rows), encoding="utf-8")
    return path


def run(config: Path, *inputs: Path | str, **kwargs: object) -> job.RunReport:
    """One run in this process, through the library entry point the CLI calls."""
    loaded = load_config(config, ENV)
    return asyncio.run(job.run(loaded, list(inputs), env=ENV, **kwargs))  # type: ignore[arg-type]


async def _stop_when(condition: Callable[[], bool], stop: asyncio.Event) -> None:
    while not condition():
        await asyncio.sleep(0.01)
    stop.set()


def test_settle_wait_counts_from_the_last_send_and_distrusts_a_clock_stepped_back() -> None:
    """Wait until settle_seconds after the last request of unknown fate; a clock reading
    earlier than that request waits the whole time."""
    sent = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert settle_wait(sent, sent + timedelta(seconds=3), 10) == pytest.approx(7)
    assert settle_wait(sent, sent + timedelta(seconds=30), 10) == 0
    assert settle_wait(sent, sent - timedelta(hours=1), 10) == 10
    assert settle_wait(None, sent, 10) == 0


def test_a_pass_left_unconfirmed_is_checked_only_once_earlier_requests_settled(
    tmp_path: Path, serve_simulator
) -> None:
    """A run stopped while a create's answer was lost (the create lands late), then run again
    at once: the check waits until settle_seconds after that request, sees the late pass
    replaced the audited one, and issues again; the audit holds the pass Graph holds."""
    late = Faults(late_create_rate=1.0, late_create_seconds=0.5)
    state = SimulatorState(users("ada@contoso.com"), faults=late)
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", run={"timeout_seconds": 0.15, "settle_seconds": 0.8,
                                                  "stop_grace_seconds": 2})  # fmt: skip
    path = sheet(tmp_path / "hires.csv", [("ada@contoso.com", SOON)])

    async def first() -> job.RunReport:
        stop = asyncio.Event()

        def seen(outcome: Outcome) -> None:
            if isinstance(outcome, Issued):
                stop.set()  # SIGTERM right after the retried create came back

        async def only_the_first_is_late() -> None:
            while not state.counts.get("late"):
                await asyncio.sleep(0.005)
            state.faults.late_create_rate = 0.0

        flip = asyncio.create_task(only_the_first_is_late())
        loaded = load_config(config, ENV)
        try:
            return await job.run(loaded, [path], env=ENV, stop=stop, on_outcome=seen)
        finally:
            flip.cancel()

    report = asyncio.run(first())
    assert [i.unconfirmed for i in report.issued] == [True]  # left flagged for the next run
    second = run(config, path)
    (issued,) = second.issued
    assert "may not stand" in issued.note  # the late create had replaced the first pass
    assert issued.temporary_access_pass == state.current_pass("ada@contoso.com")


def test_the_latest_pass_is_the_journals_latest_write_whatever_the_clock_says(
    tmp_path: Path,
) -> None:
    """Two finished runs issued a pass for one person; the clock stepped back an hour between
    them, so every time the journal holds for the later run is earlier. The later run's pass
    is the last one, not the one with the later timestamp."""
    tenant, person = "t root", Person("ada@contoso.com")
    noon = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    stepped = {"run-1": noon, "run-2": noon - timedelta(hours=1)}  # NTP stepped the clock back
    request = PassRequest(Origin("hires.csv", 2), "ada@contoso.com", None, None, 480, True)
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        for run_id, method in (("run-1", "m-old"), ("run-2", "m-new")):
            at = stepped[run_id]
            journal.begin(run_id, at, "k", {}, tenant=tenant, tenant_name=None, simulated=False)
            journal.record(run_id, Issued(request, "value", method, at, at, 480, True, at, 1,
                                          None))  # fmt: skip
            journal.finish(run_id, "completed", None)
    # The times the journal stamps itself (a row's last write, a run's end) read that clock too.
    with sqlite3.connect(path) as db:
        for run_id, at in stepped.items():
            db.execute("UPDATE rows SET updated=? WHERE run_id=?", (at.isoformat(), run_id))
            db.execute("UPDATE runs SET finished=? WHERE run_id=?", (at.isoformat(), run_id))
    with Journal(path) as journal:
        previous = journal.previous_pass(tenant, person, excluding="run-3")
    assert previous is not None and (previous.run_id, previous.method_id) == ("run-2", "m-new")


def test_a_row_answered_429_before_a_stop_holds_no_pass_and_is_checked_next_time(
    tmp_path: Path, serve_simulator
) -> None:
    """Its only request was throttled when the run stopped: "Not sent" (no pass), not
    "Interrupted (may have a pass)"; the next run checks for a pass before sending, so the
    pass a helpdesk issued meanwhile is not replaced blindly."""
    state = SimulatorState(users("ada@contoso.com"),
                           faults=Faults(throttle_rate=0.001, throttle_burst=1,
                                         retry_after_seconds=30))  # fmt: skip
    state.exhaust(WRITE_LIMIT)  # the create is refused (429) until long after the stop
    sim = serve_simulator(state)
    sending = {"existing": "replace", "timezone": "UTC", "allow_existing_accounts": True}
    replace = sim.config(tmp_path / "r.yaml", run={"stop_grace_seconds": 0.1},
                         **{"pass": sending})  # fmt: skip
    path = sheet(tmp_path / "hires.csv", [("ada@contoso.com", SOON)])

    async def first() -> job.RunReport:
        stop = asyncio.Event()
        watch = asyncio.create_task(_stop_when(lambda: bool(state.counts.get("429")), stop))
        try:
            return await job.run(load_config(replace, ENV), [path], env=ENV, stop=stop)
        finally:
            watch.cancel()

    report = asyncio.run(first())
    (row,) = report.failed
    assert row.not_sent and not row.may_have_pass and row.attempts == 1
    assert state.issued == []
    state.faults.throttle_rate = None
    state.give_pass("ada@contoso.com", lifetime_minutes=43_200)
    skip = sim.config(tmp_path / "s.yaml")
    second = run(skip, path)
    assert [s.held_elsewhere for s in second.skipped] == [True]
    assert state.current_pass("ada@contoso.com") == "handed-out"


def test_rows_are_the_same_rows_however_the_paths_are_typed(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two inputs share a name (a/hires.csv, b/hires.csv); a run stopped at once part-way is
    resumed with the paths typed absolute instead of relative: the passes issued before the
    stop are kept with their values, nothing is issued twice or called "held"."""
    state = SimulatorState(users(*HIRES), faults=Faults(latency_ms=30))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 1})
    sheet(tmp_path / "a" / "hires.csv", [(u, SOON) for u in HIRES[:3]])
    sheet(tmp_path / "b" / "hires.csv", [(u, SOON) for u in HIRES[3:]])
    monkeypatch.chdir(tmp_path)

    async def killed() -> None:
        task = asyncio.create_task(job.run(load_config(config, ENV),
                                           ["a/hires.csv", "b/hires.csv"], env=ENV))  # fmt: skip
        while len(state.issued) < 2:
            await asyncio.sleep(0.005)
        task.cancel()  # a second Ctrl-C: stopped at once, no audit yet
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(killed())
    with Journal(tmp_path / "state" / "journal.sqlite").open(lock=False) as journal:
        (stopped,) = journal.unfinished_runs()
        recorded = {
            state.outcome.request.user: state.outcome.temporary_access_pass
            for state in journal.rows(stopped.run_id).values()
            if state.state == "issued" and isinstance(state.outcome, Issued)
        }
    assert recorded  # passes were issued, and recorded, before the stop
    report = run(config, tmp_path / "a" / "hires.csv", tmp_path / "b" / "hires.csv")
    assert report.resumed and report.skipped == [] and report.failed == []
    assert len(report.issued) == len(HIRES)
    for issued in report.issued:
        assert issued.temporary_access_pass == state.current_pass(issued.request.user)
    for user, value in recorded.items():  # kept with their values, never issued again
        assert state.current_pass(user) == value and state.passes_created_for(user) == 1


def test_a_renamed_user_is_known_by_object_id(tmp_path: Path, serve_simulator) -> None:
    """match_by mail finds the object id: after the user's UPN changes, the journal still knows
    the person, so even pass.existing replace does not issue a second pass."""
    state = SimulatorState(users("ada@contoso.com", ada={"mail": "ada@contoso.com"}))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "mail"},
                        **{"pass": {"existing": "replace", "timezone": "UTC"}})  # fmt: skip
    path = sheet(tmp_path / "hires.csv", [("ada@contoso.com", SOON)], header="Mail,Start Date")
    assert len(run(config, path).issued) == 1
    user = state.find_user("ada@contoso.com")
    assert user is not None
    user.user_principal_name = "ada.lovelace@contoso.com"
    state.add_user(user)
    report = run(config, path)
    assert report.issued == [] and len(state.issued) == 1
    (skipped,) = report.skipped
    assert skipped.user == "ada.lovelace@contoso.com" and "already issued" in skipped.detail


def test_a_start_moved_within_the_day_is_a_new_pass(tmp_path: Path, serve_simulator) -> None:
    """09:00 to 13:00 with a 60-minute pass: the earlier pass would expire before the new
    start, so it is not "already issued for this start date": a new pass, and a note."""
    state = SimulatorState(users("ada@contoso.com"))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    header = "UPN,Start Date,Lifetime"
    path = sheet(tmp_path / "hires.csv", [("ada@contoso.com", f"{SOON} 09:00,60")], header)
    assert len(run(config, path).issued) == 1
    sheet(path, [("ada@contoso.com", f"{SOON} 13:00,60")], header)
    (issued,) = run(config, path).issued
    assert f"start moved from {SOON} 09:00–10:00 UTC to {SOON} 13:00–14:00 UTC" in issued.note
    assert issued.expires == issued.starts + timedelta(minutes=60)
    assert issued.starts.hour == 13


def test_a_pass_starting_after_the_start_fails_the_row(tmp_path: Path, serve_simulator) -> None:
    """A helpdesk pass for the 20th while the sheet now says the 10th: the hire would have no
    usable pass on day one, so the row fails saying what to do; the pass stays."""
    state = SimulatorState(users("ada@contoso.com"))
    sim = serve_simulator(state)
    later = datetime.combine(date.today() + timedelta(days=20), datetime.min.time(), UTC)
    state.give_pass("ada@contoso.com", start=later, lifetime_minutes=480)
    path = sheet(tmp_path / "hires.csv", [("ada@contoso.com", SOON)])
    report = run(sim.config(tmp_path / "c.yaml"), path)
    (failed,) = report.failed
    assert failed.reason == "Holds a pass that starts after the start"
    assert "--reissue-user" in failed.detail
    assert state.current_pass("ada@contoso.com") == "handed-out"


def test_a_resumed_run_that_aborts_says_its_passes_are_kept(
    tmp_path: Path, serve_simulator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Stopped at once after some passes, then run again with a wrong secret: exit 3, and the
    message says the passes are kept and names `onboard report RUN_ID` (not "no pass was
    created")."""
    state = SimulatorState(users(*HIRES), faults=Faults(latency_ms=30))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 1})
    path = sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES])

    async def killed() -> None:
        task = asyncio.create_task(job.run(load_config(config, ENV), [path], env=ENV))
        while len(state.issued) < 2:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(killed())
    with Journal(tmp_path / "state" / "journal.sqlite") as journal:
        (unfinished,) = journal.unfinished_runs()
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", "wrong")
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ABORTED
    err = capsys.readouterr().err
    assert "no pass was created" not in err
    assert f"kept in the journal: 'onboard report {unfinished.run_id}'" in err


def test_rows_never_sent_are_counted_as_not_sent(
    tmp_path: Path, serve_simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a stop, the rows never sent are "not sent" in the printed line and in `runs`,
    not failures."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    path = sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES])

    async def stopped() -> job.RunReport:
        stop = asyncio.Event()
        stop.set()  # Ctrl-C before the first row was taken
        return await job.run(load_config(config, ENV), [path], env=ENV, stop=stop)

    report = asyncio.run(stopped())
    assert len(report.not_sent) == len(HIRES) and report.failures == []
    from onboard.cli import _print_report

    _print_report(report, load_config(config, ENV))
    out = capsys.readouterr().out
    assert f"0 issued, 0 failed, 0 skipped, {len(HIRES)} not sent" in out
    assert main(["runs", "-c", str(config)]) == EXIT_OK
    line = capsys.readouterr().out.splitlines()[1]
    # issued, failed, skipped, held, not sent, in flight
    assert line.split()[-7:-1] == ["0", "0", "0", "0", str(len(HIRES)), "0"]


def test_validate_after_a_run_lists_what_run_would_skip(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A true dry run: after a run, validate reads the journal and lists the rows as already
    issued, ready to send none; a new row is ready."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    path = sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:3]])
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    sheet(path, [(u, SOON) for u in HIRES[:4]])
    capsys.readouterr()
    out_dir = tmp_path / "problems"
    assert main(["validate", str(path), "-c", str(config), "--out", str(out_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "1 row ready to send, 0 with problems, 3 to skip" in out
    assert out.count("skipped: already issued") == 3
    assert len(state.issued) == 3


def test_each_already_issued_skip_gets_a_line_at_v(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v promises a line per issued or skipped row: "already issued" skips included."""
    sim = serve_simulator(SimulatorState(users(*HIRES[:3])))
    config = sim.config(tmp_path / "c.yaml")
    path = sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:3]])
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    capsys.readouterr()
    assert main(["run", str(path), "-c", str(config), "-v"]) == EXIT_OK
    err = capsys.readouterr().err
    for user in HIRES[:3]:
        assert f"{user}: skipped: already issued" in err


def test_a_journal_that_cannot_be_written_is_exit_3_with_a_true_message(tmp_path: Path) -> None:
    """A file size limit (ulimit -f) reached mid-run: exit 3, no "internal error", and the
    message says where what was done is (the audit, written whole) or that nothing was."""
    rows = [(f"u{n}@contoso.com", SOON) for n in range(80)]
    path = sheet(tmp_path / "hires.csv", rows)
    config = tmp_path / "c.yaml"
    config.write_text("graph:\n  endpoint: simulator\npass:\n  timezone: UTC\n", "utf-8")
    # The journal outgrows it part-way through 80 rows (from 300 KB to 600 KB it still does);
    # the audit workbook of 80 rows (12 KB) fits.
    limit = 400 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
    done = subprocess.run(
        [sys.executable, "-m", "onboard", "run", str(path), "-c", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=small_files,
    )  # fmt: skip
    assert done.returncode == EXIT_ABORTED, done.stderr
    assert "internal error" not in done.stderr
    assert done.stderr.count("cannot write the run journal") == 1
    audits = list((tmp_path / "audit").glob("onboard-*.xlsx"))
    if audits:
        assert f"the audit workbook {audits[0]} holds what was done" in done.stderr
        sheets = read_audit(audits[0])
        assert sum(len(sheets[n]) for n in ("Issued", "Failed", "Skipped")) == len(rows)
    else:
        assert "no pass was created" in done.stderr


def test_an_audit_that_cannot_be_encrypted_is_exit_3_naming_report(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Encrypting the audit fails: exit 3, saying the passes are sealed in the journal and
    that `onboard report RUN_ID` writes them out; it then does."""
    from msoffcrypto.format.ooxml import OOXMLFile

    sim = serve_simulator(SimulatorState(users(*HIRES[:2])))
    monkeypatch.setenv("AUDIT_PASSWORD", "correct horse")
    config = sim.config(tmp_path / "c.yaml", output={"password_env": "AUDIT_PASSWORD",
                                                     "dir": str(tmp_path / "audit")})  # fmt: skip
    path = sheet(tmp_path / "hires.csv", [(u, SOON) for u in HIRES[:2]])

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("the encryption library failed")

    with monkeypatch.context() as patch:
        patch.setattr(OOXMLFile, "encrypt", broken)
        assert main(["run", str(path), "-c", str(config)]) == EXIT_ABORTED
    err = capsys.readouterr().err
    assert "internal error" not in err and "sealed (encrypted) in the journal" in err
    run_id = err.split("'onboard report ")[1].split("'")[0]
    assert main(["report", run_id, "-c", str(config)]) == EXIT_OK
    assert "holds the pass values" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as db:
        (held,) = db.execute("SELECT count(*) FROM rows WHERE pass_value IS NOT NULL").fetchone()
    assert held == 0  # wiped once `report` wrote them out


def test_a_sign_in_failure_during_the_checks_leaves_unsent_rows_without_a_pass(
    tmp_path: Path, serve_simulator
) -> None:
    """Graph stops taking the token while the existing passes are listed (the secret was
    rotated): the run stops as aborted (exit 3), the rows never sent are "not sent" (no pass),
    not "Not finished ... internal error"; the next run lists them first, so a helpdesk pass is
    kept, not replaced blindly. The checks run row by row ahead of the creates: bo (first) is
    listed and skipped, ada's listing is the third read, and her account check meets the
    refusal."""
    state = SimulatorState(users("ada@contoso.com", "bo@contoso.com"), faults=Faults(latency_ms=20))
    sim = serve_simulator(state)
    state.give_pass("bo@contoso.com", lifetime_minutes=43_200)
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 1})
    path = sheet(tmp_path / "hires.csv", [("bo@contoso.com", SOON), ("ada@contoso.com", SOON)])

    async def rotated() -> None:
        checks = 1 + 2  # the policy, then bo's current pass, then ada's
        watch = asyncio.create_task(_stop_when(
            lambda: state.counts.get("graph_requests", 0) >= checks, asyncio.Event()))  # fmt: skip
        task = asyncio.create_task(job.run(load_config(config, ENV), [path], env=ENV))
        await watch
        state.client_secret = "rotated"
        state.revoke_tokens()
        report = await task
        assert report.status is RunStatus.ABORTED and not report.issued

    asyncio.run(rotated())
    (first,) = (tmp_path / "audit").glob("onboard-*.xlsx")
    sheets = read_audit(first)
    # bo's pass was listed before the secret changed; ada's account check met the refusal
    assert [(r["User"], r["Reason"]) for r in sheets["Failed"]] == [
        ("ada@contoso.com", "Not sent: run stopped")
    ]
    assert "sign-in failed" in str(sheets["Failed"][0]["Detail"])
    assert [r["User"] for r in sheets["Skipped"]] == ["bo@contoso.com"]
    state.client_secret = "simulator-secret"
    report = run(config, path)
    assert [s.user for s in report.skipped if s.held_elsewhere] == ["bo@contoso.com"]
    assert state.current_pass("bo@contoso.com") == "handed-out"


def test_a_journal_reached_through_a_hard_link_is_locked_as_the_same_file(tmp_path: Path) -> None:
    """A hard link (or a bind mount of the file alone) names the same journal under another
    path, beside another lock file: the journal's own file is locked too."""
    from onboard.errors import JournalLocked

    real = tmp_path / "state" / "journal.sqlite"
    first = Journal(real).open()
    try:
        link = tmp_path / "elsewhere" / "journal.sqlite"
        link.parent.mkdir()
        os.link(real, link)
        with pytest.raises(JournalLocked, match="through another name"):
            Journal(link).open()
    finally:
        first.close()
    Journal(link).open().close()


def test_settle_is_measured_by_the_monotonic_clock_within_a_boot(tmp_path: Path) -> None:
    """A request sent moments ago in this boot: however far the wall clock jumped forward
    since, the check still waits the settle time out (measured by the monotonic clock)."""
    tenant, person = "t root", Person("ada@contoso.com")
    request = PassRequest(Origin("hires.csv", 2), "ada@contoso.com", None, None, 480, True)
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.begin("run-1", datetime.now(UTC), "k", {}, tenant=tenant, tenant_name=None,
                      simulated=False)  # fmt: skip

        journal.sending("run-1", request)
        journal.finish("run-1", "stopped", None)
        wall, ago = journal.last_sent(tenant, person, excluding="run-2")
    assert wall is not None and ago is not None and 0 <= ago < 5
    stepped = datetime.now(UTC) + timedelta(hours=1)  # NTP stepped the clock an hour ahead
    assert settle_wait(wall, stepped, 10) == 0  # the wall clock alone would not wait
    assert settle_wait(wall, stepped, 10, ago) == pytest.approx(10 - ago, abs=0.5)


def test_after_a_journal_failure_the_passes_in_the_first_audit_are_kept_not_replaced(
    tmp_path: Path, serve_simulator
) -> None:
    """The journal fills up mid-run (ulimit -f): the audit written then lists passes the
    journal never recorded. Running the same command again keeps those passes (Graph still
    holds them), instead of replacing what the admin may have handed out, and writes its own
    workbook beside the first, never over it."""
    hires = [f"u{n:03d}@contoso.com" for n in range(80)]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 8})
    path = sheet(tmp_path / "hires.csv", [(u, SOON) for u in hires])
    limit = 400 * 1024  # the journal outgrows it part-way through 80 rows; the audit fits

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")} | ENV
    done = subprocess.run(
        [sys.executable, "-m", "onboard", "run", str(path), "-c", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=small_files,  # a limit for the child only
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    (first,) = (tmp_path / "audit").glob("onboard-*.xlsx")
    shown = {r["User"]: r["Temporary Access Pass"] for r in read_audit(first)["Issued"]}
    assert shown  # some passes were issued before the journal failed
    report = run(config, path)
    assert report.resumed
    final = {i.request.user: i.temporary_access_pass for i in report.issued}
    for user, value in shown.items():  # every pass the first workbook showed still stands
        assert final[user] == value == state.current_pass(user)
    assert len(final) == len(hires)
    assert report.audit_path is not None and report.audit_path != first and first.exists()


def test_under_replace_a_renamed_user_gets_no_second_pass(tmp_path: Path, serve_simulator) -> None:
    """pass.existing replace, a sheet by UPN, the user renamed since the pass was issued (same
    object id): the journal issued passes in this tenant, so the row's current pass is listed;
    it is the one this journal issued, for the same start: already issued, no second pass."""
    state = SimulatorState(users("ann@contoso.com"))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", **{"pass": {"existing": "replace", "timezone": "UTC"}})
    path = sheet(tmp_path / "hires.csv", [("ann@contoso.com", SOON)])
    assert len(run(config, path).issued) == 1
    user = state.find_user("ann@contoso.com")
    assert user is not None
    user.user_principal_name = "ann.lee@contoso.com"
    state.add_user(user)
    renamed = sheet(tmp_path / "renamed.csv", [("ann.lee@contoso.com", SOON)])
    report = run(config, renamed)
    assert report.issued == [] and state.passes_created_for("ann.lee@contoso.com") == 1
    (skipped,) = report.skipped
    assert "already issued" in skipped.detail and "confirmed with Graph" in skipped.detail


def test_a_token_for_another_tenant_than_the_configured_guid_is_refused(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """auth.tenant_id names one tenant (a GUID), the token is for another (an authority that
    names a different tenant): exit 3 before anything is sent."""
    state = SimulatorState(users("ann@contoso.com"))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml",
                        auth={"tenant_id": "aaaaaaaa-0000-4000-8000-000000000001"})  # fmt: skip
    path = sheet(tmp_path / "hires.csv", [("ann@contoso.com", SOON)])
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ABORTED
    assert "the token is for the tenant" in capsys.readouterr().err
    assert state.issued == []
