"""--log-file (what it may touch, what it holds, a log that cannot be written) and reading the
journal without its lock (`runs`, `report`, `validate` never stand in a run's way)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import gc
import hashlib
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import users

from onboard import job
from onboard.cli import (
    EXIT_ABORTED,
    EXIT_BAD_INPUT,
    EXIT_LOCKED,
    EXIT_OK,
    _LogFile,
    _setup_logging,
    main,
)
from onboard.config import load_config
from onboard.files import LockFile
from onboard.journal import SCHEMA, Journal
from onboard.outcomes import Origin, PassRequest
from onboard.simulator import SimulatorState

ROOT = Path(__file__).resolve().parent.parent
SOON = (date.today() + timedelta(days=1)).isoformat()
LATER = (date.today() + timedelta(days=60)).isoformat()
USERS = ["ann@contoso.com", "bob@contoso.com"]


def config_file(tmp_path: Path) -> Path:
    """The built-in simulator, with the audit and journal in the test's folder."""
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        graph:
          endpoint: simulator
        output:
          dir: {tmp_path / "audit"}
        state:
          path: {tmp_path / "state" / "journal.sqlite"}
        """),
        encoding="utf-8",
    )
    return path


def sheet(tmp_path: Path, rows: list[tuple[str, str]] | None = None) -> Path:
    path = tmp_path / "hires.csv"
    rows = rows if rows is not None else [(u, SOON) for u in USERS]
    path.write_text("UPN,Start Date\n" + "".join(f"{u},{d}\n" for u, d in rows), encoding="utf-8")
    return path


def run(tmp_path: Path, *extra: str) -> int:
    return main(["run", str(sheet(tmp_path)), "-c", str(config_file(tmp_path)), *extra])


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- what --log-file may change ---------------------------------------------------------------
@pytest.mark.parametrize("through_symlink", [False, True])
def test_dev_null_as_the_log_keeps_its_mode(
    tmp_path: Path, through_symlink: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file /dev/null (as root, or through a symlink) leaves the device's mode alone."""
    target = "/dev/null"
    given = tmp_path / "log-link" if through_symlink else Path(target)
    if through_symlink:
        given.symlink_to(target)
    before = mode(target)
    try:
        assert run(tmp_path, "--log-file", str(given)) == EXIT_OK
        assert mode(target) == before
    finally:
        if mode(target) != before:  # the bug: put the system's /dev/null back
            os.chmod(target, before)


def test_a_fifo_with_a_reader_is_refused_and_never_chmodded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO, even with a reader, is refused (exit 2, nothing sent): a reader that stops
    reading would block every log line, and the run with it. Its mode is left alone."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo, 0o644)
    os.chmod(fifo, 0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so a writer may open it
    try:
        assert run(tmp_path, "--log-file", str(fifo)) == EXIT_BAD_INPUT
    finally:
        os.close(reader)
    assert mode(fifo) == 0o644
    assert "is a pipe or a socket: give a file" in capsys.readouterr().err


def test_a_fifo_nobody_reads_stops_the_run_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no reader, opening a FIFO would wait for ever: exit 2 at once instead."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    returned = threading.Event()

    def reader_after_all() -> None:
        # Were the run to wait on the FIFO, a reader comes after 30 s: the test fails, not hangs.
        if not returned.wait(30):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    watchdog = threading.Thread(target=reader_after_all, daemon=True)
    watchdog.start()
    started = time.monotonic()
    try:
        code = run(tmp_path, "--log-file", str(fifo))
    finally:
        returned.set()
        watchdog.join()
    assert time.monotonic() - started < 30
    assert code == EXIT_BAD_INPUT
    assert f"cannot write the log file {fifo}: a FIFO nobody reads" in capsys.readouterr().err
    assert not (tmp_path / "audit").exists()


def test_a_symlink_to_a_file_writes_the_file_and_tightens_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symlink to a log file the caller owns: lines go to the file, which becomes 0600."""
    real = tmp_path / "real.log"
    real.write_text("earlier line\n")
    real.chmod(0o644)
    link = tmp_path / "onboard.log"
    link.symlink_to(real)
    assert run(tmp_path, "--log-file", str(link)) == EXIT_OK
    assert link.is_symlink() and mode(real) == 0o600
    lines = real.read_text().splitlines()
    assert lines[0] == "earlier line" and "run started" in lines[1]


def test_a_folder_as_the_log_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--log-file naming a folder: exit 2 before anything is read or sent."""
    folder = tmp_path / "logs"
    folder.mkdir()
    assert run(tmp_path, "--log-file", str(folder)) == EXIT_BAD_INPUT
    assert f"cannot write the log file {folder}: Is a directory" in capsys.readouterr().err
    assert not (tmp_path / "audit").exists()


# --- a log that cannot be written -------------------------------------------------------------
def test_a_log_that_takes_no_line_stops_the_run_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file /dev/full: exit 2 with one clear line, no "Logging error" traceback, and
    nothing sent (no audit, no journal)."""
    assert run(tmp_path, "--log-file", "/dev/full") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == (
        "onboard: cannot write the log file /dev/full: No space left on device; nothing was "
        "sent to Graph.\n"
    )
    assert not (tmp_path / "audit").exists() and not (tmp_path / "state").exists()


class _FullDisk:
    """A stream whose every write fails as a full disk's does."""

    closed = False

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.closed = True


def test_a_log_that_fails_later_is_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write that fails mid-run is said once on stderr, never a traceback per line."""
    _setup_logging(0, str(tmp_path / "onboard.log"))
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, _LogFile)]
    handler.stream = _FullDisk()  # type: ignore[assignment]
    for n in range(3):
        logging.getLogger("onboard.job").info("row %d", n)
    err = capsys.readouterr().err
    assert err == (
        f"onboard: cannot write the log file {tmp_path / 'onboard.log'}: No space left on "
        "device: it gets no more lines from this run\n"
    )


# --- a line for every row, and for every abort ------------------------------------------------
def test_a_not_yet_due_row_has_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each row has a line in the log file: issued, and not yet due."""
    log = tmp_path / "onboard.log"
    sheet(tmp_path, [(USERS[0], SOON), (USERS[1], LATER)])
    code = main(["run", str(tmp_path / "hires.csv"), "-c", str(config_file(tmp_path)),
                 "--due-within", "3", "--log-file", str(log)])  # fmt: skip
    assert code == EXIT_OK
    logged = log.read_text()
    assert f"hires.csv row 2 {USERS[0]}: pass issued" in logged
    assert f"hires.csv row 3 {USERS[1]}: skipped: not yet due" in logged
    last = logged.splitlines()[-1]
    assert last.endswith("1 issued, 0 failed, 1 skipped (1 not yet due) (exit 0)")


def test_rows_a_stopped_run_never_sent_have_their_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run stopped before sending: each row not sent gets its line too."""
    config = load_config(config_file(tmp_path))
    stop = asyncio.Event()
    stop.set()
    with caplog.at_level(logging.INFO):
        report = asyncio.run(job.run(config, [sheet(tmp_path)], env={}, stop=stop))
    assert [f.user for f in report.not_sent] == USERS
    for row, user in enumerate(USERS, start=2):
        assert f"hires.csv row {row} {user}: Not sent: run stopped" in caplog.text


def test_an_aborted_run_writes_its_reason_in_the_log(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Exit 3 (a refused secret): the log file has the reason and the exit code, as stderr."""
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", "not-the-secret")
    sim = serve_simulator(SimulatorState(users(*USERS)))
    log = tmp_path / "onboard.log"
    code = main(["run", str(sheet(tmp_path)), "-c", str(sim.config(tmp_path / "c.yaml")),
                 "--log-file", str(log)])  # fmt: skip
    assert code == EXIT_ABORTED
    last = log.read_text().splitlines()[-1]
    assert " ERROR onboard: run aborted: " in last and "invalid_client" in last
    assert last.endswith("; no pass was created. (exit 3)")
    assert "not-the-secret" not in log.read_text()


def test_bad_input_and_a_held_journal_write_their_reason_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 (a missing input) and exit 5 (another run holds the journal) are in the log."""
    log = tmp_path / "onboard.log"
    config = str(config_file(tmp_path))
    missing = tmp_path / "nope.csv"
    assert main(["run", str(missing), "-c", config, "--log-file", str(log)]) == EXIT_BAD_INPUT
    assert (
        log.read_text()
        .splitlines()[-1]
        .endswith(f"{missing}: file not found; nothing was sent to Graph. (exit 2)")
    )
    with Journal(tmp_path / "state" / "journal.sqlite"):
        assert run(tmp_path, "--log-file", str(log)) == EXIT_LOCKED
    last = log.read_text().splitlines()[-1]
    assert "another onboard run is using the journal" in last and last.endswith("(exit 5)")


# --- reading the journal never locks it, never writes it --------------------------------------
@pytest.fixture
def lock_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file onboard flock()s from now on, by name."""
    calls: list[str] = []
    real = fcntl.flock

    def spy(fd: int, operation: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", spy)
    return calls


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_runs_report_and_validate_never_lock_or_write_the_journal(
    tmp_path: Path, lock_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run: `runs`, `report` of the finished run and `validate` take no lock (a run
    starting meanwhile would be turned away, exit 5) and leave the journal's bytes as they were."""
    assert run(tmp_path) == EXIT_OK
    run_id = capsys.readouterr().out.split("onboard run ")[1].split(":")[0]
    path = tmp_path / "state" / "journal.sqlite"
    before = digest(path)
    lock_calls.clear()
    config = str(config_file(tmp_path))
    assert main(["runs", "-c", config]) == EXIT_OK
    assert main(["report", run_id, "-c", config]) == EXIT_OK
    assert main(["validate", str(tmp_path / "hires.csv"), "-c", config]) == EXIT_OK
    out = capsys.readouterr().out
    assert "completed" in out and "rebuilt from the journal" in out
    assert "2 to skip" in out  # validate did read the journal
    assert [name for name in lock_calls if "journal" in name] == []
    assert digest(path) == before


def test_a_run_takes_the_lock_while_a_reader_reads(tmp_path: Path) -> None:
    """A read-only reader holding the journal open does not keep a run out, and sees what the
    run commits."""
    assert run(tmp_path) == EXIT_OK
    path = tmp_path / "state" / "journal.sqlite"
    reader = Journal(path).open(lock=False)
    try:
        (first,) = reader.runs()
        with Journal(path) as writer:  # the lock is free: a run starts
            writer.begin("r2", datetime.now(UTC), "[]", {"settings": [], "files": []},
                         tenant="t root", tenant_name=None, simulated=True)  # fmt: skip
            assert [r.run_id for r in reader.runs()] == [first.run_id, "r2"]
            assert reader.lock_held()
        assert not reader.lock_held()
    finally:
        reader.close()


HOLDER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from onboard.journal import Journal
journal = Journal(Path(sys.argv[1])).open()
journal.begin("held-run", datetime.now(UTC), "[]", {"settings": [], "files": []},
              tenant="t root", tenant_name=None, simulated=True)
print("holding", flush=True)
sys.stdin.read()
"""


def test_runs_tells_a_live_run_from_a_killed_one_without_the_lock(
    tmp_path: Path, lock_calls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """While another process holds the journal, `runs` says "running now"; once it is killed,
    "stopped early: resume"; neither takes the lock."""
    path = tmp_path / "state" / "journal.sqlite"
    config = str(config_file(tmp_path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert main(["runs", "-c", config]) == EXIT_OK
        assert "running now" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert main(["runs", "-c", config]) == EXIT_OK
    assert "stopped early: resume" in capsys.readouterr().out
    assert [name for name in lock_calls if "journal" in name] == []


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path: Path) -> None:
    """The lock file names its holder's pid and start: a live process with that pid but
    another start time, or a pid that is gone, holds nothing."""
    lock = LockFile(tmp_path / "x.lock")
    assert lock.acquire("test") is None
    text = (tmp_path / "x.lock").read_bytes()
    assert lock.held()
    lock.release()
    assert not lock.held()  # released cleanly: the holder's lines are gone
    pid, started = text.decode().splitlines()[1].split()[1:]
    (tmp_path / "x.lock").write_bytes(text.replace(started.encode(), b"0:12345"))
    assert not lock.held()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (tmp_path / "x.lock").write_bytes(text.replace(pid.encode(), gone.stdout.strip().encode()))
    assert not lock.held()


def test_an_older_journal_is_read_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal written before runs had tenants: `runs` lists it without adding its columns
    (which would be a write), showing the run's tenant as unknown."""
    path = tmp_path / "state" / "journal.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("INSERT INTO runs (run_id, started, finished, status, input_key, meta) "
                   "VALUES ('old-run', '2025-01-02T03:04:05+00:00', NULL, 'completed', '[]', "
                   "'{}')")  # fmt: skip
    db.close()
    before = digest(path)
    assert main(["runs", "-c", str(config_file(tmp_path))]) == EXIT_OK
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("old-run")]
    assert "completed" in line and "unknown" in line
    assert digest(path) == before
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(runs)")}
    assert "tenant" not in columns


def test_a_journal_with_its_wal_open_elsewhere_is_read(tmp_path: Path) -> None:
    """WAL: a reader sees what a writer committed while the writer still holds -wal and -shm
    (nothing checkpointed yet), and reads a closed journal that has neither."""
    assert run(tmp_path) == EXIT_OK
    path = tmp_path / "state" / "journal.sqlite"
    assert not path.with_name(path.name + "-wal").exists()  # closed cleanly
    reader = Journal(path).open(lock=False)
    assert len(reader.runs()) == 1
    reader.close()
    writer = Journal(path).open()
    writer.begin("r2", datetime.now(UTC), "[]", {"settings": [], "files": []},
                 tenant="t root", tenant_name=None, simulated=True)  # fmt: skip
    try:
        assert path.with_name(path.name + "-wal").stat().st_size > 0
        reader = Journal(path).open(lock=False)
        assert [r.status for r in reader.runs()] == ["completed", "running"]
        reader.close()
    finally:
        writer.close()


def test_a_journal_in_a_folder_it_cannot_write_is_read_as_immutable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where SQLite cannot make the -shm file (a read-only folder), a journal no writer has
    open (no -wal) is read as immutable; one with a -wal is refused, saying so."""
    assert run(tmp_path) == EXIT_OK
    path = tmp_path / "state" / "journal.sqlite"
    real = sqlite3.connect
    tried: list[str] = []

    def read_only_folder(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        tried.append(database)
        if "immutable=1" not in database:
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only_folder)
    reader = Journal(path).open(lock=False)
    assert len(reader.runs()) == 1
    reader.close()
    assert tried[-1].endswith("?mode=ro&immutable=1")
    path.with_name(path.name + "-wal").write_bytes(b"")
    with pytest.raises(Exception, match="cannot read the run journal"):
        Journal(path).open(lock=False)


def test_a_failed_group_commit_nobody_awaits_any_more_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The run stops on the first journal failure and cancels the workers waiting on a group
    commit: that commit's failure is not logged a second time, as a task nobody retrieved."""

    class Full(sqlite3.Connection):
        """A journal whose disk fills up at the first row written."""

        def executemany(self, sql: str, params: Any, /) -> sqlite3.Cursor:
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=Full))
    journal = Journal(tmp_path / "journal.sqlite").open()
    journal.begin("r1", datetime.now(UTC), "[]", {}, tenant="t", tenant_name=None,
                  simulated=True)  # fmt: skip
    writer = journal.writer("r1")

    async def cancelled_while_committing() -> None:
        writer.add(PassRequest(Origin("hires.csv", 2), "ann@contoso.com", None, None, 480, True))
        waiting = asyncio.ensure_future(writer.durable())
        await asyncio.sleep(0)  # the commit has started, in its thread
        waiting.cancel()  # as the run stopping cancels its workers
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        # The commit ends, failing, with nobody waiting for it.
        await asyncio.wait(asyncio.all_tasks() - {asyncio.current_task()})

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(cancelled_while_committing())
        gc.collect()  # a task whose error nobody retrieved says so when it is collected
    journal.close()
    assert "never retrieved" not in caplog.text
