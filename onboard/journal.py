"""The run journal: a SQLite file that makes onboard safe to kill, safe to re-run, safe to schedule.

Every row of a run is written here the moment something happens to it: marked in flight (with
its attempt count) before each request is sent, and its outcome committed as soon as it is
known. A pass value is kept only until the audit workbook holding it is on disk; `finish` wipes
the values in the same transaction that marks the run finished. What stays: each row's outcome,
user, start date, method id, request id and times, so later runs know who already has a pass.

With output.password set, the pass values are encrypted here too (Fernet, with a key derived
from that password by scrypt and a salt kept in the journal): the audit workbook is then not the
only thing that is never in clear on disk, the journal is not either, even mid-run.

A lock file beside the journal keeps two runs from using it at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import ConfigError, JournalLocked
from .files import private_dir
from .outcomes import (
    INTERRUPTED,
    NOT_SENT,
    Failed,
    Issued,
    Origin,
    Outcome,
    PassRequest,
    Skipped,
    not_sent,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,    -- running; then completed, stopped, aborted, crashed, recovered
    input_key TEXT NOT NULL,         -- the input files and their SHA-256: "the same command"
    meta TEXT NOT NULL,              -- JSON: files, settings, notes (never a secret)
    audit_path TEXT
);
CREATE TABLE IF NOT EXISTS rows (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    source TEXT NOT NULL,
    row INTEGER NOT NULL,
    user_key TEXT NOT NULL,
    state TEXT NOT NULL,             -- see STATES
    start_key TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    may_have_pass INTEGER NOT NULL DEFAULT 0,  -- a create of unknown fate was sent
    method_id TEXT,
    record TEXT,                     -- JSON of the outcome, without the pass value
    pass_value TEXT,                 -- only until the audit workbook is written
    issued_at TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (run_id, source, row)
);
CREATE INDEX IF NOT EXISTS rows_by_user ON rows (user_key, updated);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SEALED = "sealed:"  # the prefix of a pass value encrypted with output.password
# A row's states. in_flight: a create was sent, no answer recorded yet. issued: Graph returned
# the pass and nothing sent since can have replaced it. unclear: issued, but a request whose
# answer was lost may still replace it: check with Graph before trusting it. interrupted: the
# run stopped with the request in flight. not_sent: the run stopped before sending. failed,
# skipped: as in the audit.
STATES = ("in_flight", "issued", "unclear", "interrupted", "not_sent", "failed", "skipped")
# Rows a resumed run decides again rather than keeping.
REDECIDE = ("in_flight", "interrupted", "not_sent", "skipped")
FINISHED = ("completed", "stopped", "aborted", "crashed", "recovered")


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    started: datetime
    finished: datetime | None
    status: str
    input_key: str
    meta: dict[str, Any]
    audit_path: str | None
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class PreviousPass:
    """The last pass an earlier run audited for a user."""

    run_id: str
    stands: bool  # False: a later request of unknown fate may have replaced it at Graph
    start_key: str
    issued_at: datetime | None
    method_id: str | None


@dataclass(frozen=True, slots=True)
class RowState:
    state: str
    user_key: str
    attempts: int
    outcome: Outcome | None  # None while in flight


class Journal:
    """One SQLite journal, opened and locked for the length of a run."""

    def __init__(self, path: Path, password: str | None = None) -> None:
        self.path = path
        self._password = password
        self._fernet: Fernet | None = None
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._guard = threading.Lock()

    # --- opening, locking ---------------------------------------------------------------------
    def open(self, *, lock: bool = True) -> Journal:
        """Create (owner-only) or open the journal and take its lock. Raises JournalLocked.

        lock=False only reads (listing runs while another run holds the lock).
        """
        try:
            private_dir(self.path.parent)
            if lock:
                self._lock()
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            else:
                self.path.chmod(0o600)  # it holds passes until their audit is written
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the run journal {self.path}: {exc.strerror}; set state.path to a "
                "writable file"
            ) from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed outcome survives power loss
            db.execute("PRAGMA secure_delete=ON")  # a wiped pass value is overwritten on disk
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ConfigError(f"the run journal {self.path} is unusable: {exc}") from None
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.chmod(0o600)
        self._db = db
        if self._password is not None:
            self._fernet = Fernet(_derive_key(self._password, self._salt(db)))
        return self

    def _salt(self, db: sqlite3.Connection) -> bytes:
        db.execute(
            "INSERT OR IGNORE INTO settings (name, value) VALUES ('salt', ?)",
            (base64.b64encode(os.urandom(16)).decode(),),
        )
        (salt,) = db.execute("SELECT value FROM settings WHERE name='salt'").fetchone()
        return base64.b64decode(salt)

    def seal(self, value: str) -> str:
        """A pass value as the journal stores it: encrypted when output.password is set."""
        if self._fernet is None:
            return value
        return SEALED + self._fernet.encrypt(value.encode()).decode()

    def unseal(self, stored: str | None) -> str | None:
        if stored is None or not stored.startswith(SEALED):
            return stored
        if self._fernet is None:
            raise ConfigError(
                f"the run journal {self.path} holds pass values encrypted with output.password: "
                "set it as it was for that run"
            )
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED).encode()).decode()
        except InvalidToken:
            raise ConfigError(
                f"the run journal {self.path} holds pass values encrypted with a different "
                "output.password: set the one used for that run"
            ) from None

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.lseek(fd, 1, os.SEEK_SET)
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalLocked(
                f"another onboard run is using the journal {self.path} ({holder}); this run "
                "stopped before sending anything",
                holder=holder,
            )
        # Byte 0 is the lock; after it, who holds it, for the message a second run prints.
        os.ftruncate(fd, 1)
        os.lseek(fd, 1, os.SEEK_SET)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.write(fd, f"pid {os.getpid()}, started {stamp}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        with self._guard:  # never under a commit running in the ledger's thread
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "journal not open"
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._guard:  # grouped commits come from a worker thread (job._Ledger)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # --- runs ---------------------------------------------------------------------------------
    def unfinished_runs(self) -> list[RunInfo]:
        return [r for r in self.runs() if r.status == "running"]

    def runs(self) -> list[RunInfo]:
        rows = self.db.execute(
            "SELECT run_id, started, finished, status, input_key, meta, audit_path FROM runs "
            "ORDER BY started"
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for run_id, state, n in self.db.execute(
            "SELECT run_id, state, count(*) FROM rows GROUP BY run_id, state"
        ):
            counts.setdefault(run_id, {})[state] = n
        return [
            RunInfo(
                r[0],
                _time(r[1]) or datetime.min,
                _time(r[2]),
                r[3],
                r[4],
                json.loads(r[5]),
                r[6],
                counts.get(r[0], {}),
            )
            for r in rows
        ]

    def run(self, run_id: str) -> RunInfo | None:
        return next((r for r in self.runs() if r.run_id == run_id), None)

    def begin(self, run_id: str, started: datetime, input_key: str, meta: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, started, status, input_key, meta) "
                "VALUES (?, ?, 'running', ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET status='running', meta=excluded.meta",
                (run_id, started.isoformat(), input_key, json.dumps(meta)),
            )

    def finish(self, run_id: str, status: str, audit_path: Path | None) -> None:
        """Mark the run finished and wipe its pass values: call only once the audit is on disk."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status=?, finished=?, audit_path=? WHERE run_id=?",
                (status, datetime.now(UTC).isoformat(), str(audit_path or ""), run_id),
            )
            db.execute("UPDATE rows SET pass_value=NULL WHERE run_id=?", (run_id,))
        # Fold the WAL into the database file and empty it, so no old page keeps a value.
        with self._guard:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- rows ---------------------------------------------------------------------------------
    def write(self, steps: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> None:
        """Run prepared statements (see `sending_params`, `record_params`) in one transaction.

        `sending_params`: before each request the row is in flight, one more attempt counted,
        and its earlier outcome (and pass) dropped: once sent, Graph may replace that pass.

        Made for a worker thread: the caller builds the parameters, so the thread holds the
        interpreter lock for little more than the hand-over to SQLite.
        """
        with self._transaction() as db:
            for sql, params in steps:
                db.executemany(sql, params)

    def queued(self, run_id: str, requests: Sequence[PassRequest]) -> None:
        """Before sending: every row to send is known, so a killed run's audit lists them all."""
        now = _now()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO rows (run_id, source, row, user_key, state, start_key, attempts, "
                "record, updated) VALUES (?, ?, ?, ?, 'not_sent', ?, ?, ?, ?) "
                "ON CONFLICT(run_id, source, row) DO UPDATE SET state='not_sent', "
                "record=excluded.record, updated=excluded.updated "
                "WHERE rows.state IN ('skipped', 'not_sent')",
                [
                    (
                        run_id,
                        r.origin.source,
                        r.origin.row,
                        r.key,
                        r.start_key,
                        r.prior_attempts,
                        json.dumps(to_record(not_sent(r))),
                        now,
                    )
                    for r in requests
                ],
            )

    def unsettled(self, user_key: str, *, excluding: str) -> bool:
        """For a user with no audited pass: whether an earlier run sent a request of unknown fate.

        (With an audited pass, `previous_pass(...).stands` already answers this.)
        """
        row = self.db.execute(
            "SELECT 1 FROM rows JOIN runs USING (run_id) WHERE user_key=? "
            "AND runs.status != 'running' AND rows.run_id != ? AND may_have_pass=1 LIMIT 1",
            (user_key, excluding),
        ).fetchone()
        return row is not None

    def record(self, run_id: str, outcome: Outcome) -> None:
        """Commit one row's outcome (with its pass value, if issued) the moment it is known."""
        self.write([(RECORD_SQL, [record_params(run_id, outcome, self.seal)])])

    def rows(self, run_id: str) -> dict[Origin, RowState]:
        """Every row of a run as the journal knows it, outcomes rebuilt (values where held)."""
        found: dict[Origin, RowState] = {}
        for source, row, state, user_key, attempts, record, value in self.db.execute(
            "SELECT source, row, state, user_key, attempts, record, pass_value FROM rows "
            "WHERE run_id=?",
            (run_id,),
        ):
            outcome = from_record(json.loads(record), self.unseal(value)) if record else None
            found[Origin(source, row)] = RowState(state, user_key, attempts, outcome)
        return found

    def previous_pass(self, user_key: str, *, excluding: str) -> PreviousPass | None:
        """The last pass a finished run audited for this user, and whether it still stands.

        It stands when nothing of unknown fate was sent for the user after it (a request whose
        answer was lost, a run stopped with the request in flight): otherwise Graph may hold a
        different pass, and it must be asked before the row is skipped.
        """
        audited = self.db.execute(
            "SELECT rows.run_id, state, start_key, issued_at, method_id, updated FROM rows "
            "JOIN runs USING (run_id) WHERE user_key=? AND runs.status != 'running' "
            "AND rows.run_id != ? AND state IN ('issued', 'unclear') "
            "ORDER BY updated DESC LIMIT 1",
            (user_key, excluding),
        ).fetchone()
        if audited is None:
            return None
        run_id, state, start_key, issued_at, method_id, updated = audited
        later = self.db.execute(
            "SELECT 1 FROM rows JOIN runs USING (run_id) WHERE user_key=? "
            "AND runs.status != 'running' AND rows.run_id != ? AND may_have_pass=1 "
            "AND state NOT IN ('issued', 'unclear') AND updated > ? LIMIT 1",
            (user_key, excluding, updated),
        ).fetchone()
        stands = state == "issued" and later is None
        return PreviousPass(run_id, stands, start_key, _time(issued_at), method_id)


# --- outcomes to and from JSON (never the pass value: it has its own column) -----------------
SENDING_SQL = (
    "INSERT INTO rows (run_id, source, row, user_key, state, start_key, attempts, "
    "may_have_pass, updated) VALUES (?, ?, ?, ?, 'in_flight', ?, ?, 1, ?) "
    "ON CONFLICT(run_id, source, row) DO UPDATE SET state='in_flight', "
    "attempts=max(attempts + 1, excluded.attempts), may_have_pass=1, record=NULL, "
    "pass_value=NULL, method_id=NULL, updated=excluded.updated"
)
RECORD_SQL = (
    "INSERT INTO rows (run_id, source, row, user_key, state, start_key, attempts, "
    "may_have_pass, method_id, record, pass_value, issued_at, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(run_id, source, row) DO UPDATE SET state=excluded.state, "
    "start_key=excluded.start_key, attempts=max(attempts, excluded.attempts), "
    "may_have_pass=max(may_have_pass, excluded.may_have_pass), "
    "method_id=excluded.method_id, record=excluded.record, "
    "pass_value=excluded.pass_value, issued_at=excluded.issued_at, "
    "updated=excluded.updated"
)


def sending_params(run_id: str, request: PassRequest) -> tuple[Any, ...]:
    return (
        run_id,
        request.origin.source,
        request.origin.row,
        request.key,
        request.start_key,
        request.prior_attempts + 1,
        _now(),
    )


def record_params(run_id: str, outcome: Outcome, seal: Callable[[str], str]) -> tuple[Any, ...]:
    value = method_id = issued_at = None
    start_key = ""
    attempts = 0
    may_have_pass = False
    if isinstance(outcome, Issued):
        state = "unclear" if outcome.unconfirmed else "issued"
        user, value = outcome.request.key, seal(outcome.temporary_access_pass)
        start_key, attempts = outcome.request.start_key, outcome.attempts
        method_id, may_have_pass = outcome.method_id, True
        issued_at = (outcome.created or datetime.now(UTC)).isoformat()
    elif isinstance(outcome, Failed):
        user, attempts, may_have_pass = (
            outcome.user.casefold(),
            outcome.attempts,
            outcome.may_have_pass,
        )
        state = {INTERRUPTED: "interrupted", NOT_SENT: "not_sent"}.get(outcome.reason, "failed")
    else:
        state, user = "skipped", outcome.user.casefold()
    return (
        run_id,
        outcome.origin.source,
        outcome.origin.row,
        user,
        state,
        start_key,
        attempts,
        int(may_have_pass),
        method_id,
        json.dumps(to_record(outcome)),
        value,
        issued_at,
        _now(),
    )


def to_record(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Issued):
        return {
            "kind": "issued",
            "request": _request(outcome.request),
            "method_id": outcome.method_id,
            "starts": outcome.starts.isoformat(),
            "expires": outcome.expires.isoformat(),
            "lifetime_minutes": outcome.lifetime_minutes,
            "usable_once": outcome.usable_once,
            "created": outcome.created.isoformat() if outcome.created else None,
            "attempts": outcome.attempts,
            "request_id": outcome.request_id,
            "note": outcome.note,
            "unconfirmed": outcome.unconfirmed,
        }
    if isinstance(outcome, Failed):
        return {
            "kind": "failed",
            "origin": [outcome.origin.source, outcome.origin.row],
            "user": outcome.user,
            "reason": outcome.reason,
            "detail": outcome.detail,
            "http_status": outcome.http_status,
            "graph_code": outcome.graph_code,
            "attempts": outcome.attempts,
            "request_id": outcome.request_id,
            "column": outcome.column,
            "may_have_pass": outcome.may_have_pass,
        }
    return {
        "kind": "skipped",
        "origin": [outcome.origin.source, outcome.origin.row],
        "user": outcome.user,
        "reason": outcome.reason,
        "previous_run": outcome.previous_run,
        "issued_at": outcome.issued_at.isoformat() if outcome.issued_at else None,
    }


def from_record(data: dict[str, Any], value: str | None) -> Outcome:
    """Rebuild an outcome. An issued row whose value was wiped shows a placeholder."""
    kind = data["kind"]
    if kind == "issued":
        return Issued(
            _unrequest(data["request"]),
            value if value is not None else WIPED,
            data["method_id"],
            _time(data["starts"]) or datetime.min,
            _time(data["expires"]) or datetime.min,
            data["lifetime_minutes"],
            data["usable_once"],
            _time(data["created"]),
            data["attempts"],
            data["request_id"],
            data["note"],
            unconfirmed=data.get("unconfirmed", False),
        )
    origin = Origin(*data["origin"])
    if kind == "failed":
        return Failed(
            origin,
            data["user"],
            data["reason"],
            data["detail"],
            data["http_status"],
            data["graph_code"],
            data["attempts"],
            data["request_id"],
            data["column"],
            may_have_pass=data.get("may_have_pass", False),
        )
    return Skipped(
        origin, data["user"], data["reason"], data["previous_run"], _time(data["issued_at"])
    )


WIPED = "(not kept: see the run's own audit workbook)"


def _request(r: PassRequest) -> dict[str, Any]:
    return {
        "origin": [r.origin.source, r.origin.row],
        "user": r.user,
        "display_name": r.display_name,
        "start": r.start.isoformat() if r.start else None,
        "lifetime_minutes": r.lifetime_minutes,
        "usable_once": r.usable_once,
        "note": r.note,
        "start_date": r.start_date.isoformat() if r.start_date else None,
        "sheet_value": r.sheet_value,
        "extra": [list(pair) for pair in r.extra],
    }


def _unrequest(d: dict[str, Any]) -> PassRequest:
    return PassRequest(
        Origin(*d["origin"]),
        d["user"],
        d["display_name"],
        _time(d["start"]),
        d["lifetime_minutes"],
        d["usable_once"],
        d["note"],
        start_date=date.fromisoformat(d["start_date"]) if d["start_date"] else None,
        sheet_value=d.get("sheet_value"),  # journals written before it was kept: none
        extra=tuple((str(h), str(v)) for h, v in d.get("extra", ())),  # likewise
    )


def _try_lock(fd: int) -> bool:
    """Take the lock file's lock without waiting; released when the file is closed."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def input_key(files: Sequence[tuple[Path, str]]) -> str:
    """What makes two invocations "the same command": the same files with the same contents."""
    return json.dumps(sorted([str(path.resolve()), digest] for path, digest in files))


def _derive_key(password: str, salt: bytes) -> bytes:
    """A Fernet key from the password: scrypt (n=2**14, r=8, p=1), about 50 ms, once per open."""
    key = Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(password.encode())
    return base64.urlsafe_b64encode(key)
