"""The run journal: a SQLite file that makes onboard safe to kill, safe to re-run, safe to schedule.

Every row of a run is written here the moment something happens to it: marked in flight (with
its attempt count) before each request is sent, and its outcome committed as soon as it is
known. A pass value is kept only until the audit workbook holding it is on disk; `finish` wipes
the values in the same transaction that marks the run finished. What stays: each row's outcome,
user, start date, method id, request id and times, so later runs know who already has a pass.

With output.password set, the pass values are encrypted here too (Fernet, with a key derived
from that password by scrypt and a salt kept in the journal): the audit workbook is then not the
only thing that is never in clear on disk, the journal is not either, even mid-run.

Every run, and every row and pass it records, belongs to one tenant: the tenant id from the
token and the Graph root (`tenant.Tenant.key`). Skips, resumes and re-issues only ever use
records of the tenant the run signed in to; records written before runs were bound to a tenant
are "tenant unknown" and never trusted for a skip. Which record is the latest is told by a
sequence number the journal counts up, never by the wall clock (which can step back).

What `onboard revoke` did is kept per tenant and method id (the `revocations` table): a DELETE
is recorded before it is sent and again when answered, so a revoke stopped part-way and run
again never sends one for a pass already deleted.

A lock file beside the journal's real path (symlinks resolved) keeps two runs from using it at
once, however each reached it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import ConfigError, JournalLocked, JournalWriteError
from .files import LockFile, boot_id, holder_line, private_dir
from .outcomes import (
    Failed,
    Issued,
    Origin,
    Outcome,
    PassRequest,
    Reason,
    Skipped,
    not_sent,
)

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (
    tenant TEXT NOT NULL,            -- tenant.Tenant.key of the run that issued the pass
    method_id TEXT NOT NULL,         -- the pass, as Graph names it: never its value
    run_id TEXT NOT NULL,            -- the run that issued it
    user_key TEXT NOT NULL,
    state TEXT NOT NULL,             -- see RevokeState
    revoke_id TEXT NOT NULL,         -- the `onboard revoke` that wrote it last
    updated TEXT NOT NULL,
    PRIMARY KEY (tenant, method_id)
);
"""
# Columns added since the first journals: added to an older journal when it is opened. A run or
# row without a tenant was written before runs were bound to one: "tenant unknown".
ADDED_COLUMNS = {
    "runs": {
        "tenant": "TEXT",  # tenant.Tenant.key: the tenant id and the Graph root
        "tenant_name": "TEXT",  # auth.tenant_id as configured (a GUID or a domain)
        "simulated": "INTEGER NOT NULL DEFAULT 0",
    },
    "rows": {
        "tenant": "TEXT",
        "seq": "INTEGER NOT NULL DEFAULT 0",  # counts up with every write: which is the latest
        "sent_at": "TEXT",  # when the last request for the row was sent (wall clock, UTC)
        # ... and by the monotonic clock: "<boot id> <seconds>", which no step of the wall
        # clock (NTP, a VM restore) moves
        "sent_clock": "TEXT",
        "object_id": "TEXT",  # the person's directory object id, where known
    },
}
INDEXES = """
CREATE INDEX IF NOT EXISTS rows_by_person ON rows (tenant, user_key, seq);
CREATE INDEX IF NOT EXISTS rows_by_object ON rows (tenant, object_id, seq);
CREATE INDEX IF NOT EXISTS rows_by_method ON rows (tenant, method_id);
CREATE INDEX IF NOT EXISTS rows_by_seq ON rows (seq);
"""
_NEXT_SEQ = "(SELECT IFNULL(MAX(seq), 0) + 1 FROM rows)"
SEALED = "sealed:"  # the prefix of a pass value encrypted with output.password


class RunStatus(StrEnum):
    """How a run stands (the journal's `status` column)."""

    RUNNING = "running"  # going on now, or killed before it finished (then resumed)
    COMPLETED = "completed"
    STOPPED = "stopped"  # a signal: rows in flight finished, the rest not sent
    ABORTED = "aborted"  # sign-in refused, the policy turned off: the rest not sent
    CRASHED = "crashed"  # a journal that cannot be written, or a bug
    RECOVERED = "recovered"  # killed; its audit was written later from the journal


class RowState(StrEnum):
    """Where a row stands in the journal (the `state` column)."""

    IN_FLIGHT = "in_flight"  # a create was sent, no answer recorded yet
    ISSUED = "issued"  # Graph returned the pass and nothing sent since can have replaced it
    UNCLEAR = "unclear"  # issued, but a request of unknown fate may still replace it
    INTERRUPTED = "interrupted"  # the run stopped with the request in flight
    NOT_SENT = "not_sent"  # the run stopped before sending
    FAILED = "failed"
    SKIPPED = "skipped"
    HELD = "held"  # skipped: the user holds a pass no record of this journal explains


class RevokeState(StrEnum):
    """Where the revoking of one pass stands (the `revocations` table's `state` column)."""

    DELETING = "deleting"  # a DELETE was sent, no answer recorded yet
    DELETED = "deleted"  # Graph answered 204: this revoke deleted it
    GONE = "gone"  # Graph held no pass of that id: nothing to delete
    REPLACED = "replaced"  # Graph holds another pass (someone issued one since): kept


# Revocations that are over: Graph no longer holds that method id, so no revoke sends
# anything for it again. DELETING is not: Graph is asked again.
REVOKED_FOR_GOOD = frozenset({RevokeState.DELETED, RevokeState.GONE, RevokeState.REPLACED})


# Rows a resumed run decides again rather than keeping.
REDECIDE = frozenset(
    {RowState.IN_FLIGHT, RowState.INTERRUPTED, RowState.NOT_SENT, RowState.SKIPPED, RowState.HELD}
)


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    started: datetime
    finished: datetime | None
    status: RunStatus
    input_key: str
    meta: dict[str, Any]
    audit_path: str | None
    counts: dict[str, int]
    tenant: str | None = None  # tenant.Tenant.key; None: written before runs had a tenant
    tenant_name: str | None = None
    simulated: bool = False
    revoked: int = 0  # passes of this run `onboard revoke` deleted

    @property
    def tenant_shown(self) -> str:
        """The tenant for people: the configured name and the tenant id; "unknown" for runs
        recorded before runs had a tenant."""
        if self.tenant is None:
            return "unknown (before tenants were recorded)"
        tid, _, root = self.tenant.partition(" ")
        name = self.tenant_name if self.tenant_name and self.tenant_name != tid else None
        where = (
            ""
            if root in ("simulator",) or root.startswith("https://graph.microsoft.com")
            else (f" at {root}")
        )
        return (f"{name} ({tid})" if name else tid) + where


@dataclass(frozen=True, slots=True)
class PreviousPass:
    """The last pass an earlier run of this tenant audited for a person."""

    run_id: str
    stands: bool  # False: a later request of unknown fate may have replaced it at Graph
    start_key: str
    issued_at: datetime | None
    method_id: str | None
    # When the last request for this person that may have made a pass was sent (UTC), and
    # how many seconds ago by the monotonic clock when it was sent in this same boot.
    last_sent: datetime | None = None
    sent_ago: float | None = None
    # False: Graph made this pass but it could not be used when it was made (outside the
    # policy's groups), so its value was never kept: nobody can hand it out.
    value_kept: bool = True


@dataclass(frozen=True, slots=True)
class RecordedPass:
    """A pass a run made, as the journal keeps it for ever: who, its method id and its times,
    never its value (status and revoke work from these)."""

    origin: Origin
    user: str  # as the request named the user (a UPN, or an object id)
    user_key: str
    object_id: str | None
    method_id: str
    state: RowState  # ISSUED or UNCLEAR; FAILED: a pass Graph made that nobody can use
    starts: datetime | None = None  # None for a FAILED row's pass (not recorded)
    expires: datetime | None = None
    created: datetime | None = None
    hire_starts: datetime | None = None  # when the sheet says the hire starts (UTC)


@dataclass(frozen=True, slots=True)
class RowRecord:
    """A row of a run as the journal holds it (outcome rebuilt; None while in flight)."""

    state: RowState
    user_key: str
    attempts: int
    outcome: Outcome | None  # None while in flight
    may_have_pass: bool = False


@dataclass(frozen=True, slots=True)
class Person:
    """Who a row is, as the journal matches people: the name the row gives (casefolded), and
    the directory object id where it is known. Records with an object id match by it alone."""

    key: str
    object_id: str | None = None

    @classmethod
    def of(cls, request: PassRequest) -> Person:
        return cls(request.key, request.object_id.lower() if request.object_id else None)


class Journal:
    """One SQLite journal, opened and locked for the length of a run."""

    def __init__(self, path: Path, password: str | None = None) -> None:
        self.path = path
        # The journal's real place, symlinks resolved: two runs that reach it through different
        # paths (a symlink, a bind mount of its folder) lock the same lock file.
        self.real_path = path.resolve()
        self._password = password
        self._fernet: Fernet | None = None
        self._lock = LockFile(self.real_path.with_name(self.real_path.name + ".lock"))
        self._file_lock: int | None = None  # a descriptor holding a flock on the file itself
        self._db: sqlite3.Connection | None = None
        self._guard = threading.Lock()
        self.tenant: str | None = None  # the tenant of the run being recorded (begin)

    # --- opening, locking ---------------------------------------------------------------------
    def open(self, *, lock: bool = True) -> Journal:
        """Create (owner-only) or open the journal and take its lock. Raises JournalLocked.

        lock=False opens it to read only (`onboard runs`, `report` of a finished run,
        `validate`): no lock is taken, so a run starting meanwhile is never turned away, and
        nothing is written, the journal's file or its schema (see `_open_to_read`).
        """
        if not lock:
            return self._open_to_read()
        path = self.real_path
        try:
            private_dir(path.parent)
            self._take_lock()
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            elif not path.is_file():  # a FIFO or a device would hang SQLite, or worse
                self._release()
                raise ConfigError(
                    f"the run journal {self.path} is not a regular file (a device, a pipe or a "
                    "folder?): set state.path to a file"
                )
            else:
                path.chmod(0o600)  # it holds passes until their audit is written
            self._lock_file_itself(path)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except OSError as exc:
            self._release()
            raise ConfigError(
                f"cannot open the run journal {self.path}: {exc.strerror}; set state.path to a "
                "writable file"
            ) from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed outcome survives power loss
            db.execute("PRAGMA secure_delete=ON")  # a wiped pass value is overwritten on disk
            db.executescript(SCHEMA)
            _add_columns(db)
            db.executescript(INDEXES)
        except sqlite3.DatabaseError as exc:
            db.close()
            self._release()
            raise ConfigError(f"the run journal {self.path} is unusable: {exc}") from None
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.chmod(0o600)
        self._db = db
        if self._password is not None:
            self._fernet = Fernet(_derive_key(self._password, self._salt(db)))
        return self

    def _open_to_read(self) -> Journal:
        """The journal opened read-only (SQLite mode=ro, query_only), without its lock.

        In WAL mode a reader needs the -shm file: SQLite makes it (with the journal's own
        mode and owner) when the folder lets it; in a folder it cannot write, a journal with
        no -wal beside it (no writer has it open) is read as immutable instead. A journal
        written by an older onboard is read as today's: the columns it lacks are made up, as
        their defaults, in views of the connection's own TEMP schema, never in the file.
        """
        path = self.real_path
        if not path.is_file():
            raise ConfigError(f"no run journal at {self.path} (state.path): no run recorded yet")
        uri = f"{path.as_uri()}?mode=ro"
        try:
            try:
                db = _connect_to_read(uri)
            except sqlite3.OperationalError:
                if path.with_name(path.name + "-wal").exists():
                    raise
                db = _connect_to_read(uri + "&immutable=1")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot read the run journal {self.path}: {exc}") from None
        try:
            _as_today(db)
            db.execute("PRAGMA query_only=ON")  # from now on not even TEMP is written
            salt = None
            if self._password is not None:
                salt = db.execute("SELECT value FROM settings WHERE name='salt'").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ConfigError(f"the run journal {self.path} is unusable: {exc}") from None
        self._db = db
        if self._password is not None and salt is not None:  # none: nothing was ever sealed
            self._fernet = Fernet(_derive_key(self._password, base64.b64decode(salt[0])))
        return self

    def lock_held(self) -> bool:
        """Whether a live process holds the journal's lock (a run is going on), told without
        taking it."""
        return self._lock.held()

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

    def _take_lock(self) -> None:
        holder = self._lock.acquire(holder_line(f"journal {self.path}"))
        if holder is not None:
            raise JournalLocked(
                f"another onboard run is using the journal {self.path} ({holder}); wait for it "
                "to finish",
                holder=holder,
            )

    def _lock_file_itself(self, path: Path) -> None:
        """Lock the journal's file too (its inode): a hard link, or a bind mount of the file
        alone, reaches it under another name and another lock file. (flock, which SQLite's
        own POSIX locks do not see; not on Windows, where a lock would bar SQLite itself.)"""
        if sys.platform == "win32":
            return
        import fcntl

        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._lock.release()
            raise JournalLocked(
                f"another onboard run is using the journal {self.path} through another name "
                "(a hard link or a mount of the same file); wait for it to finish",
                holder="the same journal file, under another name",
            ) from None
        self._file_lock = fd

    def _release(self) -> None:
        if self._file_lock is not None:
            os.close(self._file_lock)  # after SQLite's connection: see _lock_file_itself
            self._file_lock = None
        self._lock.release()

    def close(self) -> None:
        with self._guard:  # never under a commit running in the ledger's thread
            if self._db is not None:
                self._db.close()
                self._db = None
        self._release()

    def __enter__(self) -> Journal:
        # `with Journal(p).open(lock=False):` keeps the read-only opening it was given.
        return self if self._db is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "journal not open"
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. Any failure to write (a full disk, a quota, a file size
        limit) is a JournalWriteError: the run must stop rather than hand out passes it cannot
        keep."""
        with self._guard:  # grouped commits come from a worker thread (RowWriter)
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise JournalWriteError(
                    f"cannot write the run journal {self.path}: {exc} (is the disk full, or a "
                    "quota or file size limit reached?)"
                ) from None

    # --- runs ---------------------------------------------------------------------------------
    def unfinished_runs(self) -> list[RunInfo]:
        return [r for r in self.runs() if r.status is RunStatus.RUNNING]

    def runs(self) -> list[RunInfo]:
        rows = self.db.execute(
            "SELECT run_id, started, finished, status, input_key, meta, audit_path, tenant, "
            "tenant_name, simulated FROM runs ORDER BY rowid"
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for run_id, state, n in self.db.execute(
            "SELECT run_id, state, count(*) FROM rows GROUP BY run_id, state"
        ):
            counts.setdefault(run_id, {})[state] = n
        revoked = dict(
            self.db.execute(
                "SELECT run_id, count(*) FROM revocations WHERE state=? GROUP BY run_id",
                (RevokeState.DELETED,),
            ).fetchall()
        )
        return [
            RunInfo(
                r[0],
                _time(r[1]) or datetime.min,
                _time(r[2]),
                RunStatus(r[3]),
                r[4],
                json.loads(r[5]),
                r[6],
                counts.get(r[0], {}),
                r[7],
                r[8],
                bool(r[9]),
                revoked.get(r[0], 0),
            )
            for r in rows
        ]

    def run(self, run_id: str) -> RunInfo | None:
        return next((r for r in self.runs() if r.run_id == run_id), None)

    def untied_runs(self) -> int:
        """How many runs were recorded before runs were bound to a tenant (never trusted)."""
        (count,) = self.db.execute("SELECT count(*) FROM runs WHERE tenant IS NULL").fetchone()
        return int(count)

    def tenants_named(self, name: str | None, graph_root: str) -> set[str]:
        """The tenants earlier runs found behind this configured tenant name and Graph root
        (for a check without signing in: `onboard validate`)."""
        found = self.db.execute(
            "SELECT DISTINCT tenant FROM runs WHERE tenant IS NOT NULL AND tenant_name IS ? "
            "AND substr(tenant, instr(tenant, ' ') + 1) = ?",
            (name, graph_root),
        ).fetchall()
        return {t for (t,) in found}

    def begin(
        self,
        run_id: str,
        started: datetime,
        input_key: str,
        meta: dict[str, Any],
        *,
        tenant: str,
        tenant_name: str | None,
        simulated: bool,
    ) -> None:
        """Record a run (or take up one to resume) and bind what this journal object writes
        from now on to its tenant."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, started, status, input_key, meta, tenant, tenant_name, "
                "simulated) VALUES (?, ?, 'running', ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET status='running', meta=excluded.meta",
                (
                    run_id,
                    started.isoformat(),
                    input_key,
                    json.dumps(meta),
                    tenant,
                    tenant_name,
                    int(simulated),
                ),
            )
        self.tenant = tenant

    def finish(self, run_id: str, status: RunStatus, audit_path: Path | None) -> None:
        """Mark the run finished and wipe its pass values: call only once the audit is on disk."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status=?, finished=?, audit_path=? WHERE run_id=?",
                (status, datetime.now(UTC).isoformat(), str(audit_path or ""), run_id),
            )
            db.execute("UPDATE rows SET pass_value=NULL WHERE run_id=?", (run_id,))
        self._compact()

    def _compact(self) -> None:
        """Leave no wiped pass value anywhere in the file: secure_delete zeroes deleted cells,
        but a page SQLite rearranged may keep an old copy in its free space. VACUUM rewrites
        the file with live content only; then the WAL is folded in and emptied."""
        with self._guard:
            try:
                self.db.execute("VACUUM")
            except sqlite3.Error as exc:  # a reader holding the file, a full disk
                log.warning(
                    "could not compact the run journal %s (%s): wiped pass values may remain in "
                    "its free space until the next run compacts it",
                    self.path,
                    exc,
                )
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- rows ---------------------------------------------------------------------------------
    def _write(self, steps: Sequence[tuple[str, Sequence[tuple[Any, ...]]]]) -> None:
        """Run prepared statements (see `_sending_params`, `_record_params`) in one transaction.

        `_sending_params`: before each request the row is in flight, one more attempt counted,
        and its earlier outcome (and pass) dropped: once sent, Graph may replace that pass.

        Made for a worker thread: the caller builds the parameters, so the thread holds the
        interpreter lock for little more than the hand-over to SQLite.
        """
        with self._transaction() as db:
            for sql, params in steps:
                db.executemany(sql, params)

    def sending(self, run_id: str, request: PassRequest) -> None:
        """Mark one row in flight (one more attempt) before its request goes, and commit."""
        self._write([(_SENDING_SQL, [_sending_params(run_id, request, self.tenant)])])

    def writer(self, run_id: str) -> RowWriter:
        """A group-commit writer for this run's rows (see RowWriter)."""
        return RowWriter(self, run_id)

    def queued(self, run_id: str, requests: Sequence[PassRequest]) -> None:
        """Before sending: every row to send is known, so a killed run's audit lists them all."""
        now = _now()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO rows (run_id, source, row, user_key, state, start_key, attempts, "  # noqa: S608 (constant SQL; values are ? parameters)
                "record, updated, tenant, object_id, seq) "
                f"VALUES (?, ?, ?, ?, 'not_sent', ?, ?, ?, ?, ?, ?, {_NEXT_SEQ}) "
                "ON CONFLICT(run_id, source, row) DO UPDATE SET state='not_sent', "
                "record=excluded.record, updated=excluded.updated, seq=excluded.seq "
                "WHERE rows.state IN ('skipped', 'held', 'not_sent')",
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
                        self.tenant,
                        _object_id(r),
                    )
                    for r in requests
                ],
            )

    def record(self, run_id: str, outcome: Outcome) -> None:
        """Commit one row's outcome (with its pass value, if issued) the moment it is known."""
        self._write([(_RECORD_SQL, [_record_params(run_id, outcome, self.seal, self.tenant)])])

    def rows(self, run_id: str) -> dict[Origin, RowRecord]:
        """Every row of a run as the journal knows it, outcomes rebuilt (values where held)."""
        found: dict[Origin, RowRecord] = {}
        for source, row, state, user_key, attempts, record, value, maybe in self.db.execute(
            "SELECT source, row, state, user_key, attempts, record, pass_value, may_have_pass "
            "FROM rows WHERE run_id=?",
            (run_id,),
        ):
            outcome = from_record(json.loads(record), self.unseal(value)) if record else None
            found[Origin(source, row)] = RowRecord(
                RowState(state), user_key, attempts, outcome, bool(maybe)
            )
        return found

    def passes(self, run_id: str) -> list[RecordedPass]:
        """The passes a run made that Graph may still hold, by source row: issued ones, and
        ones Graph made that nobody can use (a failed row with a method id). Never a value."""
        found = []
        for source, row, state, user_key, method_id, object_id, record in self.db.execute(
            "SELECT source, row, state, user_key, method_id, object_id, record FROM rows "
            "WHERE run_id=? AND method_id IS NOT NULL AND record IS NOT NULL "
            "AND state IN ('issued', 'unclear', 'failed') ORDER BY source, row",
            (run_id,),
        ):
            data = json.loads(record)
            origin = Origin(source, row)
            if data["kind"] == "issued":
                request = data["request"]
                found.append(
                    RecordedPass(
                        origin,
                        str(request["user"]),
                        user_key,
                        object_id or request.get("object_id"),
                        method_id,
                        RowState(state),
                        _time(data["starts"]),
                        _time(data["expires"]),
                        _time(data["created"]),
                        _time(request.get("intended_start") or request.get("start")),
                    )
                )
            else:
                user = str(data["user"])
                found.append(
                    RecordedPass(origin, user, user_key, object_id, method_id, RowState(state))
                )
        return found

    def revocations(self, tenant: str) -> dict[str, RevokeState]:
        """What `onboard revoke` recorded for this tenant's passes, by method id."""
        return {
            method_id: RevokeState(state)
            for method_id, state in self.db.execute(
                "SELECT method_id, state FROM revocations WHERE tenant=?", (tenant,)
            )
        }

    def revoking(
        self, tenant: str, run_id: str, recorded: RecordedPass, state: RevokeState, revoke_id: str
    ) -> None:
        """Record where the revoking of one pass stands, and commit: DELETING before its
        DELETE is sent, then what Graph answered."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO revocations (tenant, method_id, run_id, user_key, state, revoke_id, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tenant, method_id) DO UPDATE "
                "SET state=excluded.state, revoke_id=excluded.revoke_id, updated=excluded.updated",
                (tenant, recorded.method_id, run_id, recorded.user_key, state, revoke_id, _now()),
            )

    # --- what earlier runs of the same tenant did -----------------------------------------
    def previous_pass(
        self, tenant: str | None, person: Person, *, excluding: str
    ) -> PreviousPass | None:
        """The last pass a finished run of this tenant audited for this person, and whether it
        still stands.

        It stands when nothing of unknown fate was sent for the person after it (a request whose
        answer was lost, a run stopped with the request in flight): otherwise Graph may hold a
        different pass, and it must be asked before the row is skipped. "After" is the journal's
        own sequence of writes, never the wall clock.
        """
        if tenant is None:
            return None
        match, params = _person_match(tenant, person, excluding)
        audited = self.db.execute(
            "SELECT rows.run_id, state, start_key, issued_at, method_id, seq FROM rows "  # noqa: S608 (constant SQL; values are ? parameters)
            f"JOIN runs USING (run_id) WHERE {match} AND state IN ('issued', 'unclear') "
            "ORDER BY seq DESC LIMIT 1",
            params,
        ).fetchone()
        if audited is None:
            return None
        run_id, state, start_key, issued_at, method_id, seq = audited
        later = self.db.execute(
            f"SELECT 1 FROM rows JOIN runs USING (run_id) WHERE {match} AND may_have_pass=1 "  # noqa: S608 (constant SQL; values are ? parameters)
            "AND state NOT IN ('issued', 'unclear') AND seq > ? LIMIT 1",
            (*params, seq),
        ).fetchone()
        stands = state == "issued" and later is None
        wall, ago = self.last_sent(tenant, person, excluding=excluding)
        return PreviousPass(run_id, stands, start_key, _time(issued_at), method_id, wall, ago)

    def unsettled(self, tenant: str | None, person: Person, *, excluding: str) -> bool:
        """For a person with no audited pass: whether an earlier run of this tenant sent a
        request of unknown fate. (With an audited pass, `previous_pass(...).stands` says it.)"""
        if tenant is None:
            return False
        match, params = _person_match(tenant, person, excluding)
        row = self.db.execute(
            f"SELECT 1 FROM rows JOIN runs USING (run_id) WHERE {match} AND may_have_pass=1 "  # noqa: S608 (constant SQL; values are ? parameters)
            "LIMIT 1",
            params,
        ).fetchone()
        return row is not None

    def last_sent(
        self, tenant: str, person: Person, *, excluding: str
    ) -> tuple[datetime | None, float | None]:
        """When an earlier run last sent a request for this person that may have made a pass:
        by the wall clock, and how many seconds ago by the monotonic clock (None when no such
        request was sent in this boot)."""
        match, params = _person_match(tenant, person, excluding)
        rows = self.db.execute(
            f"SELECT sent_at, sent_clock FROM rows JOIN runs USING (run_id) WHERE {match} "  # noqa: S608 (constant SQL; values are ? parameters)
            "AND may_have_pass=1",
            params,
        ).fetchall()
        wall = max((t for t in (_time(r[0]) for r in rows) if t is not None), default=None)
        now, boot = time.monotonic(), boot_id()
        agos = [
            now - float(clock.split()[1])
            for _, clock in rows
            if clock and boot is not None and clock.split()[0] == boot
        ]
        return wall, (min(agos) if agos else None)

    def issued_in(self, tenant: str | None) -> bool:
        """Whether any run of this tenant issued a pass (so a row may be one of its people)."""
        if tenant is None:
            return False
        found = self.db.execute(
            "SELECT 1 FROM rows WHERE tenant=? AND state IN ('issued', 'unclear') LIMIT 1",
            (tenant,),
        ).fetchone()
        return found is not None

    def issued_by(self, tenant: str | None, method_id: str) -> PreviousPass | None:
        """The pass with this method id, if a run of this tenant issued it: a pass Graph holds
        is then this journal's own, whatever name the row gives the person now."""
        if tenant is None:
            return None
        found = self.db.execute(
            "SELECT run_id, start_key, issued_at, state FROM rows WHERE tenant=? AND "
            "method_id=? AND state IN ('issued', 'unclear', 'failed') ORDER BY seq DESC LIMIT 1",
            (tenant, method_id),
        ).fetchone()
        if found is None:
            return None
        run_id, start_key, issued_at, state = found
        return PreviousPass(
            run_id, True, start_key, _time(issued_at), method_id, value_kept=state != "failed"
        )

    # --- a stage's own table (deliver.py keeps its messages here) -----------------------------
    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction, as the rows get (a failure is a JournalWriteError)."""
        return self._transaction()


def _person_match(tenant: str, person: Person, excluding: str) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause for a person's rows in finished runs of a tenant (not `excluding`).

    A record with an object id is the person with that id; one without (a name only) is the
    person only when the row has no object id either, or when the name is the same and the
    record could not know the id. Records of no tenant (older journals) never match.
    """
    if person.object_id is None:
        clause = "rows.tenant=? AND user_key=?"
        params: tuple[Any, ...] = (tenant, person.key)
    else:
        clause = "rows.tenant=? AND (object_id=? OR (object_id IS NULL AND user_key=?))"
        params = (tenant, person.object_id, person.key)
    return (
        f"{clause} AND runs.status != 'running' AND rows.run_id != ?",
        (*params, excluding),
    )


def _connect_to_read(uri: str) -> sqlite3.Connection:
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens it: fails here
    except sqlite3.Error:
        db.close()
        raise
    return db


def _as_today(db: sqlite3.Connection) -> None:
    """Make a read-only connection see an older (or empty) journal with today's tables: what
    the file lacks is made up in TEMP, which shadows the file's own tables for this connection
    only."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:  # created, never written
        db.executescript(SCHEMA.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE"))
        _add_columns(db)
        return
    if "settings" not in tables:  # older than the journal's settings: nothing sealed in it
        db.execute("CREATE TEMP TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    if "revocations" not in tables:  # older than `onboard revoke`: nothing revoked
        db.execute(
            "CREATE TEMP TABLE revocations (tenant TEXT, method_id TEXT, run_id TEXT, "
            "user_key TEXT, state TEXT, revoke_id TEXT, updated TEXT)"
        )
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA main.table_info({table})")}
        made_up = [
            f"{kind.partition(' DEFAULT ')[2] or 'NULL'} AS {name}"
            for name, kind in columns.items()
            if name not in present
        ]
        if made_up:
            db.execute(
                f"CREATE TEMP VIEW {table} AS SELECT rowid AS rowid, *, {', '.join(made_up)} "  # noqa: S608 (names from ADDED_COLUMNS, not input)
                f"FROM main.{table}"
            )


def _add_columns(db: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _object_id(request: PassRequest) -> str | None:
    return request.object_id.lower() if request.object_id else None


# --- outcomes to and from JSON (never the pass value: it has its own column) -----------------
_SENDING_SQL = (
    "INSERT INTO rows (run_id, source, row, user_key, state, start_key, attempts, "  # noqa: S608 (constant SQL; values are ? parameters)
    "may_have_pass, updated, sent_at, sent_clock, tenant, object_id, seq) "
    f"VALUES (?, ?, ?, ?, 'in_flight', ?, ?, 1, ?, ?, ?, ?, ?, {_NEXT_SEQ}) "
    "ON CONFLICT(run_id, source, row) DO UPDATE SET state='in_flight', "
    "attempts=max(attempts + 1, excluded.attempts), may_have_pass=1, record=NULL, "
    "pass_value=NULL, method_id=NULL, updated=excluded.updated, sent_at=excluded.sent_at, "
    "sent_clock=excluded.sent_clock, "
    "object_id=excluded.object_id, seq=excluded.seq"
)
# An outcome says whether the row may hold a pass from a request of unknown fate: it is what
# the pool worked out from every attempt (a request answered 429 made no pass).
_RECORD_SQL = (
    "INSERT INTO rows (run_id, source, row, user_key, state, start_key, attempts, "  # noqa: S608 (constant SQL; values are ? parameters)
    "may_have_pass, method_id, record, pass_value, issued_at, updated, tenant, object_id, seq) "
    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_NEXT_SEQ}) "
    "ON CONFLICT(run_id, source, row) DO UPDATE SET state=excluded.state, "
    "start_key=excluded.start_key, attempts=max(attempts, excluded.attempts), "
    "may_have_pass=excluded.may_have_pass, "
    "method_id=excluded.method_id, record=excluded.record, "
    "pass_value=excluded.pass_value, issued_at=excluded.issued_at, "
    "updated=excluded.updated, object_id=IFNULL(excluded.object_id, object_id), "
    "seq=excluded.seq"
)


def _sending_params(run_id: str, request: PassRequest, tenant: str | None) -> tuple[Any, ...]:
    now = _now()
    boot = boot_id()
    return (
        run_id,
        request.origin.source,
        request.origin.row,
        request.key,
        request.start_key,
        request.prior_attempts + 1,
        now,
        now,
        f"{boot} {time.monotonic():.3f}" if boot else None,
        tenant,
        _object_id(request),
    )


_FAILED_STATES = {Reason.INTERRUPTED: RowState.INTERRUPTED, Reason.NOT_SENT: RowState.NOT_SENT}


def _record_params(
    run_id: str, outcome: Outcome, seal: Callable[[str], str], tenant: str | None
) -> tuple[Any, ...]:
    value = method_id = issued_at = object_id = None
    start_key = ""
    attempts = 0
    may_have_pass = False
    if isinstance(outcome, Issued):
        state = RowState.UNCLEAR if outcome.unconfirmed else RowState.ISSUED
        user, value = outcome.request.key, seal(outcome.temporary_access_pass)
        start_key, attempts = outcome.request.start_key, outcome.attempts
        method_id, may_have_pass = outcome.method_id, True
        issued_at = (outcome.created or datetime.now(UTC)).isoformat()
        object_id = _object_id(outcome.request)
    elif isinstance(outcome, Failed):
        user, attempts, may_have_pass = (
            outcome.user.casefold(),
            outcome.attempts,
            outcome.may_have_pass,
        )
        state = _FAILED_STATES.get(outcome.reason, RowState.FAILED)
        method_id = outcome.method_id  # a pass Graph made that cannot be used: revocable
    else:
        state = RowState.HELD if outcome.held_elsewhere else RowState.SKIPPED
        user = outcome.user.casefold()
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
        tenant,
        object_id,
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
            "reason": outcome.reason.value,
            "label": outcome.label,
            "detail": outcome.detail,
            "http_status": outcome.http_status,
            "graph_code": outcome.graph_code,
            "attempts": outcome.attempts,
            "request_id": outcome.request_id,
            "column": outcome.column,
            "may_have_pass": outcome.may_have_pass,
            "method_id": outcome.method_id,
        }
    return {
        "kind": "skipped",
        "origin": [outcome.origin.source, outcome.origin.row],
        "user": outcome.user,
        "reason": outcome.reason.value,
        "detail": outcome.detail,
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
        reason, label = _failure(data["reason"])
        return Failed(
            origin,
            data["user"],
            reason,
            data["detail"],
            data["http_status"],
            data["graph_code"],
            data["attempts"],
            data["request_id"],
            data["column"],
            may_have_pass=data.get("may_have_pass", False),
            method_id=data.get("method_id"),
            label=data.get("label", label),
        )
    # A journal written before reasons were values kept a skip's text alone, as "reason": of
    # its kind, only "held elsewhere" is a value (its flag), and it is the only one code reads.
    # The text is kept as the detail people see.
    old = Reason.HELD_ELSEWHERE if data.get("held_elsewhere") else Reason.ALREADY_ISSUED
    return Skipped(
        origin,
        data["user"],
        Reason(data["reason"]) if "detail" in data else old,
        data.get("detail", data["reason"]),
        data["previous_run"],
        _time(data["issued_at"]),
    )


# The labels of failures in journals written before reasons were values, where a reason was
# renamed since; any other old label is shown as it was recorded.
_OLD_FAILURES = {
    "Lifetime refused by the pass policy": Reason.LIFETIME_OUTSIDE_POLICY,
    "Start refused": Reason.START_IN_PAST,
}
_REASONS = {reason.value: reason for reason in Reason}


def _failure(recorded: str) -> tuple[Reason, str | None]:
    """A recorded failure's reason, and the label it was shown with when that was its own."""
    reason = _REASONS.get(recorded) or _OLD_FAILURES.get(recorded)
    return (reason, None) if reason is not None else (Reason.REFUSED, recorded)


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
        "intended_start": r.intended_start.isoformat() if r.intended_start else None,
        "object_id": r.object_id,
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
        intended_start=_time(d.get("intended_start")),
        object_id=d.get("object_id"),
        extra=tuple((str(h), str(v)) for h, v in d.get("extra", ())),  # likewise
    )


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


def _seen(done: asyncio.Future[None]) -> None:
    """Mark a finished commit's error as seen (whoever awaits it still gets it)."""
    if not done.cancelled():
        done.exception()


class RowWriter:
    """Rows' journal writes, grouped: `add` queues a row about to be sent (a PassRequest) or an
    outcome; `await durable()` commits everything queued in the same moment in one transaction,
    in a thread, so the event loop goes on while the disk syncs. A worker still sends nothing
    before its row is marked in flight on disk, and takes no new row before its outcome is on
    disk; but twenty workers share one fsync instead of paying for twenty. A failed write is a
    JournalWriteError: the run must stop rather than hand out passes it cannot keep.
    """

    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self._queued: list[PassRequest | Outcome] = []
        self._commit: asyncio.Future[None] | None = None
        self._committed = 0  # items written so far
        self._in_commit = 0  # items being written now
        self._unwritten: list[tuple[int, Any]] = []  # prepared, not yet on disk
        self._writing = threading.Lock()

    def add(self, item: PassRequest | Outcome) -> None:
        self._queued.append(item)

    async def durable(self) -> None:
        """Wait until everything queued so far is committed (whatever is queued meanwhile goes
        into the next commit, together)."""
        target = self._committed + self._in_commit + len(self._queued)
        while self._committed < target:
            if self._commit is None:
                self._commit = asyncio.ensure_future(self._commit_queued())
                # Every worker waiting on a failed commit may have been cancelled by then (the
                # run stops on the first failure): its error is reported once, not again as
                # "Task exception was never retrieved".
                self._commit.add_done_callback(_seen)
            await asyncio.shield(self._commit)

    def flush(self) -> None:
        """Commit whatever is queued or being committed, now (also when the run is torn down)."""
        items, self._queued = self._queued, []
        if items:
            self._unwritten.append((len(items), self._prepare(items)))
            self._committed += len(items)
        self._write_unwritten()

    async def _commit_queued(self) -> None:
        items, self._queued = self._queued, []
        steps = self._prepare(items)  # on the loop: the thread then barely needs the GIL
        batch = (len(items), steps)
        self._unwritten.append(batch)
        self._in_commit = len(items)
        try:
            await asyncio.to_thread(self._write_unwritten, batch)
        finally:
            self._in_commit = 0
            self._commit = None
        self._committed += len(items)

    def _write_unwritten(self, only: tuple[int, Any] | None = None) -> None:
        """Write prepared batches not yet on disk (`only`: just that one, if still unwritten).

        The lock makes `flush` wait for a commit in progress, and a batch is written once:
        by its thread, or by `flush` if its thread never ran (a cancelled run).
        """
        with self._writing:
            for batch in [b for b in self._unwritten if only is None or b is only]:
                try:
                    self.journal._write(batch[1])
                except JournalWriteError:
                    raise
                except (sqlite3.Error, OSError) as exc:  # whatever the store itself raised
                    raise JournalWriteError(
                        f"cannot write the run journal {self.journal.path}: {exc}"
                    ) from None
                self._unwritten.remove(batch)

    def _prepare(self, items: list[PassRequest | Outcome]) -> list[tuple[str, list[Any]]]:
        """The statements for these items, in their order (runs of one kind go together)."""
        journal, run_id = self.journal, self.run_id
        steps: list[tuple[str, list[Any]]] = []
        for item in items:
            if isinstance(item, PassRequest):
                sql, params = _SENDING_SQL, _sending_params(run_id, item, journal.tenant)
            else:
                sql = _RECORD_SQL
                params = _record_params(run_id, item, journal.seal, journal.tenant)
            if steps and steps[-1][0] == sql:
                steps[-1][1].append(params)
            else:
                steps.append((sql, [params]))
        return steps
