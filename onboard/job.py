"""One run, start to finish: read the files, get a token, issue the passes, write the audit.

This is the library entry point the CLI calls; it prints nothing and exits nothing. With
``graph.endpoint: simulator`` it starts the built-in simulator on a loopback port first and
then runs exactly the production path against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from . import __version__
from .audit import (
    AuditOptions,
    FileSummary,
    Note,
    RunSummary,
    audit_options,
    audit_path,
    free_path,
    read_issued,
    write_audit,
)
from .auth import Credential, MsalTokenProvider, load_credential
from .checks import (
    existing_passes,
    find_people,
    on_conflict,
    read_policy,
    screen_accounts,
    within_policy,
)
from .config import CLOUDS, Config
from .decide import (
    CheckFirst,
    History,
    Keep,
    Options,
    Send,
    Skip,
    already_issued,
    decide,
    finished,
    settle_wait,
)
from .errors import (
    AuditWriteError,
    AuthError,
    ConfigError,
    GraphError,
    InputFileError,
    JournalWriteError,
    OnboardError,
    PolicyDisabled,
    RunStopped,
    first_line,
)
from .files import private_dir
from .graph import GraphClient
from .history import SIMULATED_KEY, recover_unfinished
from .journal import (
    RECORD_SQL,
    SENDING_SQL,
    Journal,
    Person,
    RowState,
    RunInfo,
    input_key,
    record_params,
    sending_params,
)
from .outcomes import Failed, Issued, Origin, Outcome, PassRequest, Skipped, not_sent
from .pool import (
    Confirmation,
    OnOutcome,
    PoolResult,
    confirm,
    current_passes,
    issue_all,
    retries_for,
    stopped_within,
)
from .rate import RateController
from .reader import InputFile, check_date_orders, plan, read_input, user_key
from .redact import printable
from .simulator import DEFAULT_CLIENT_SECRET, Faults, RunningSimulator, SimulatorState, serve
from .tenant import SIMULATOR_ROOT, Tenant, TenantLock, tenant_of
from .tls import IDENTITY_ENDPOINT, SIGN_IN_SERVICE, make_ssl_context, requests_session
from .tls import warm as warm_tls

log = logging.getLogger(__name__)
T = TypeVar("T")
# Stopped (a signal) while signing in: how long the sign-in may still take to answer, so that
# the rows get their "not sent" outcomes and an audit, before the run gives it up.
SIGN_IN_GRACE_SECONDS = 2.0

SIMULATOR_TENANT = "contoso.onmicrosoft.com"
POLICY_OFF = "Pass policy turned off"  # validate --online's problem when the policy is off
SIMULATOR_CLIENT_ID = "00000000-0000-0000-0000-0000000000aa"


@dataclass(slots=True)
class RunReport:
    run_id: str
    started: datetime
    finished: datetime | None = None
    files: list[InputFile] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    audit_path: Path | None = None
    stopped: str | None = None  # why the run stopped early, if it did
    resumed: bool = False  # this run continues one that was killed before it finished
    not_yet_due: int = 0
    retries: int = 0
    rate: RateController | None = None  # how fast requests went, 429s, time paused
    notes: list[tuple[str, str]] = field(default_factory=list)
    tenant: Tenant | None = None  # the tenant the run signed in to
    # What the operator must hear though no row failed (a check that could not be made, a
    # certificate about to expire): the run exits 1, so cron's mail goes out.
    attention: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.issued) + len(self.failed) + len(self.skipped)

    @property
    def simulated(self) -> bool:
        """No pass was issued in a real tenant: the run talked to the simulator."""
        return self.tenant is not None and self.tenant.simulated

    @property
    def not_sent(self) -> list[Failed]:
        """Rows the run stopped before sending (listed on the Failed sheet, counted apart)."""
        return [f for f in self.failed if f.not_sent]

    @property
    def failures(self) -> list[Failed]:
        """Rows that failed (not counting those never sent because the run stopped)."""
        return [f for f in self.failed if not f.not_sent]

    @property
    def held_elsewhere(self) -> list[Skipped]:
        """Users who hold a pass no record of this journal explains (never a success)."""
        return [s for s in self.skipped if s.held_elsewhere]


@dataclass(frozen=True, slots=True)
class Endpoint:
    graph_url: str
    authority: str
    ca_bundle: Path | None
    secret_env: Mapping[str, str]


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def read_all(config: Config, inputs: Sequence[str | Path], now: datetime) -> list[InputFile]:
    """Read every input file; raises InputFileError on the first unusable one.

    Rows are traced by file name, or by the file's real path when two inputs share a name: a
    resumed run knows its rows however the paths are typed.
    """
    paths = [Path(p) for p in inputs]
    names = [p.name for p in paths]
    files: list[InputFile] = []
    for path in paths:
        source = printable(path.name if names.count(path.name) == 1 else str(path.resolve()))
        read = read_input(path, config.input, config.pass_, now=now, source=source)
        for earlier in files:
            if earlier.sha256 == read.sha256:
                same = earlier.path.resolve() == path.resolve()
                raise InputFileError(
                    "is given twice; give each file once"
                    if same
                    else f"has the same content as {earlier.path}; give each file once",
                    path=str(path),
                )
        files.append(read)
    check_date_orders(files)
    return files


def check_rows(files: Sequence[InputFile]) -> tuple[list[PassRequest], list[Failed | Skipped]]:
    """The rows to consider sending (one per user), and every row already decided by reading."""
    requests, conflicts, repeats = plan(files)
    checked: list[Failed | Skipped] = [*conflicts, *repeats]
    for f in files:
        checked.extend(f.failed)
        checked.extend(f.skipped)
    return requests, checked


def check_free_space(folders: Sequence[Path], rows: int) -> None:
    """Stop before the first request when the audit or the journal may not fit on the disk."""
    need = MIN_FREE_BYTES + rows * BYTES_PER_ROW
    for folder in folders:
        free = shutil.disk_usage(folder).free
        if free < need:
            raise ConfigError(
                f"not enough free disk space in {folder}: {free // 2**20} MB free, at least "
                f"{need // 2**20 + 1} MB needed for the journal and the audit workbook"
            )


MIN_FREE_BYTES = 20 * 2**20
BYTES_PER_ROW = 4096


def check_output_dir(directory: Path) -> None:
    """Create the output directory (owner-only) and prove it is writable, before any request."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"cannot write the audit workbook into {directory}: it is a file, not a folder; "
            "set output.dir or --out to a folder"
        )
    try:
        private_dir(directory)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the audit workbook into {directory}: {exc.strerror}; "
            "set output.dir or --out to a writable folder"
        ) from None


async def run(
    config: Config,
    inputs: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    out_dir: Path | None = None,
    on_outcome: OnOutcome | None = None,
    on_start: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    reissue: bool = False,
    reissue_users: Collection[str] = (),
    due_within_days: int | None = None,
    allow_users: Collection[str] = (),
    on_phase: Callable[[str], None] | None = None,
) -> RunReport:
    """Run the whole job, journalled: safe to kill, to re-run, and to schedule.

    Raises ConfigError, InputFileError, JournalLocked or AuthError before any pass is created.
    Every run signs in first (one token request: an expired secret is found on a day with
    nothing to send too) and belongs to the tenant its token names. Running the same inputs
    again after a crash resumes that run; re-running a finished sheet skips users who already
    got a pass for the same start and end in that tenant (unless `reissue`). Once `stop` is set,
    no new row is started and the audit is written for what was done.
    """
    started = datetime.now(UTC)
    phase = on_phase or (lambda doing: None)
    if out_dir is not None:
        config = config.model_copy(
            update={"output": config.output.model_copy(update={"dir": out_dir})}
        )
    directory = config.output.dir
    options = audit_options(config.output, env)  # a missing password stops the run here
    if not config.graph.is_simulator:
        warm_tls(config.graph.ca_bundle)  # while the spreadsheet is read
    files = read_all(config, inputs, started)
    requests, checked = check_rows(files)
    wanted_users = {user_key(u) for u in reissue_users}
    sendable = {r.key for r in requests}
    anywhere = sendable | {user_key(o.user) for o in checked if o.user}
    # Under match_by mail / employeeId a UPN is known only after the lookup: checked then.
    by_upn = config.input.match_by == "upn"
    _check_reissue_users({u for u in wanted_users if by_upn or "@" not in u}, anywhere)
    allowed_users = {user_key(u) for u in allow_users}
    _check_named("--allow-user", {u for u in allowed_users if by_upn or "@" not in u}, anywhere)
    for name in sorted(wanted_users - sendable):
        log.warning(
            "--reissue-user %s: that user's rows failed their checks; nothing to send", name
        )
    due = due_within_days if due_within_days is not None else config.run.due_within_days
    config = config.model_copy(
        update={"run": config.run.model_copy(update={"due_within_days": due})}
    )
    check_output_dir(directory)
    journal = Journal(config.state.path, options.password).open()
    key = _key(files)
    try:
        check_free_space([directory, config.state.path.parent], len(requests) + len(checked))
        async with contextlib.AsyncExitStack() as stack:
            try:
                # Nothing is sent yet; a signal during a slow sign-in stops it at once.
                client, tenant, attention = await _unless_stopped(_open(config, env, stack), stop)
            except (AuthError, ConfigError) as exc:
                exc.kept = _kept_by_unfinished(journal, key)
                raise
            if not config.graph.is_simulator:  # the built-in one is this run's own tenant
                lock = TenantLock(tenant)
                lock.acquire(f"journal {journal.path}")
                stack.callback(lock.release)
            _warn_untied(journal)
            resumable = _resumable(journal, key, tenant)
            for other in recover_unfinished(
                journal, config, options, exclude=resumable.run_id if resumable else None
            ):
                log.warning(
                    "run %s had stopped before writing its audit; its passes are now in %s",
                    other.run_id,
                    other.audit_path,
                )
            report = _start(journal, config, files, started, tenant, resumable)
            report.rate = client.rate
            report.attention.extend(attention)
            ledger = _Ledger(report, journal, on_outcome)
            if on_start is not None:
                on_start(len(requests) + len(checked))
            try:
                # Rows this run already finished before a stop keep their outcome (and pass);
                # only the others are looked up and checked again.
                known = journal.rows(report.run_id)
                if report.resumed:
                    requests = await _adopt_from_audit(config, client, ledger, requests, known,
                                                       options)  # fmt: skip
                done = [r for r in requests if finished(known.get(r.origin))]
                open_rows = [r for r in requests if not finished(known.get(r.origin))]
                if config.input.match_by != "upn" and open_rows:
                    phase("finding people")
                    open_rows, found = await find_people(config, client, open_rows, stop)
                    requests = done + open_rows
                    checked = [*checked, *found]
                    # --reissue-user names people as the sheet does; found by mail or employee
                    # id, they are now known by their UPN.
                    wanted_users |= {
                        r.key for r in open_rows if r.sheet_value and r.sheet_value.casefold()
                        in wanted_users
                    }  # fmt: skip
                    _check_reissue_users(
                        wanted_users,
                        anywhere | {r.key for r in open_rows} | {user_key(o.user) for o in found},
                    )
                choices = Options(due, reissue, frozenset(wanted_users), config.pass_.existing)
                to_send, to_check = _sort(ledger, requests, checked, started, choices, known)
                if stop is not None and stop.is_set():
                    report.stopped = "stopped"
                if to_send or to_check:
                    phase("reading the pass policy")
                    policy, line = await read_policy(
                        client, config, stop, holding=report.resumed or bool(report.issued)
                    )
                    report.notes.append(("Pass policy", line))
                    to_send, refused = within_policy(policy, to_send)
                    for failed in refused:
                        _log_checked(failed)
                        ledger.add(failed, later=True)
                    ledger.flush()
                else:
                    report.notes.append(("Pass policy", "not read: nothing to send"))
                if to_send or to_check or any(i.unconfirmed for i in report.issued):
                    allowed = frozenset(allowed_users)
                    await _send(
                        config, client, ledger, to_send, to_check, stop, options, phase, allowed
                    )
            except (AuthError, ConfigError, JournalWriteError) as exc:
                if report.resumed or report.issued:
                    exc.kept = (report.run_id, len(report.issued))
                elif not isinstance(exc, JournalWriteError):  # no pass is held: close it
                    journal.finish(report.run_id, "aborted", None)
                raise
            _finish(journal, config, report, directory, options)
            return report
    finally:
        journal.close()


async def _adopt_from_audit(
    config: Config,
    client: GraphClient,
    ledger: _Ledger,
    requests: list[PassRequest],
    known: Mapping[Origin, RowState],
    options: AuditOptions,
) -> list[PassRequest]:
    """A resumed run whose journal failed mid-run: its first audit workbook (written then) may
    list passes the journal never recorded, rows it still has in flight. Those the admin may
    already hand out: where Graph still holds that very pass, it is kept (value and all), not
    replaced. Returns the rows still to decide."""
    report = ledger.report
    path = audit_path(config.output.dir, report.run_id, simulated=report.simulated)
    waiting = {
        r.origin: r
        for r in requests
        if (state := known.get(r.origin)) is not None
        and state.state in ("in_flight", "interrupted")
    }
    if not waiting or not path.exists():
        return requests
    try:
        audited = {
            Origin(p.source, p.row): p
            for p in read_issued(path, options.password)
            if Origin(p.source, p.row) in waiting
        }
    except Exception as exc:  # an unreadable workbook: the rows are decided as before
        log.warning("cannot read the earlier audit workbook %s: %s", path, first_line(exc))
        return requests
    if not audited:
        return requests
    answers = await current_passes(
        [waiting[o].user for o in audited],
        client.current_pass_id,
        concurrency=config.run.concurrency,
        retries=retries_for(config.run),
    )
    kept: set[Origin] = set()
    for origin, found in audited.items():
        request = waiting[origin]
        held = answers.get(request.user)
        unsure = isinstance(held, GraphError)
        if not unsure and held != found.method_id:
            continue  # Graph holds another pass: decided as before
        # Graph holds that very pass, or would not say (then it is kept, flagged, and checked
        # with Graph again before the run ends or by the next run: sending again would replace
        # a pass the admin may have handed out).
        starts = found.starts or request.start or datetime.now(UTC)
        how = "not yet confirmed with Graph" if unsure else "confirmed with Graph"
        issued = Issued(
            request, found.value, found.method_id, starts,
            found.expires or starts + timedelta(minutes=request.lifetime_minutes),
            request.lifetime_minutes, request.usable_once, None, known[origin].attempts, None,
            f"kept from the audit workbook {path.name}, written when the journal could not be: "
            f"{how}",
            unconfirmed=unsure,
        )  # fmt: skip
        _log_checked(issued)
        ledger.add(issued)
        kept.add(origin)
    if kept:
        log.warning(
            "%d pass(es) listed in the audit workbook %s, written when the journal failed, "
            "kept rather than replaced: see their Notes",
            len(kept),
            path,
        )
    return [r for r in requests if r.origin not in kept]


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event | None) -> T:
    """`work`'s result, unless `stop` is set first: then RunStopped (work is cancelled; a
    sign-in thread still waiting on the network is a daemon and cannot keep the process)."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():  # a moment more: a sign-in about to answer lets the rows be recorded
        await asyncio.wait({task}, timeout=SIGN_IN_GRACE_SECONDS)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise RunStopped("stopped while signing in: nothing was sent")


def _kept_by_unfinished(journal: Journal, key: str) -> tuple[str, int] | None:
    """The passes an unfinished run of these inputs holds in the journal (run id, how many):
    what a run that stops before it starts must not deny."""
    for run in journal.unfinished_runs():
        held = run.counts.get("issued", 0) + run.counts.get("unclear", 0)
        if run.input_key == key and held:
            return run.run_id, held
    return None


def _warn_untied(journal: Journal) -> None:
    untied = journal.untied_runs()
    if untied:
        log.warning(
            "the journal %s holds %d run(s) recorded before runs were bound to a tenant: their "
            "passes are never taken as already issued (Graph is asked instead)",
            journal.path,
            untied,
        )


def _check_reissue_users(wanted: set[str], named: set[str]) -> None:
    """Stop (before anything is sent) when --reissue-user names nobody in the input."""
    _check_named("--reissue-user", wanted, named)


def _check_named(option: str, wanted: set[str], named: set[str]) -> None:
    """Stop (before anything is sent) when an option names a user who is in no row: a typo."""
    unknown = wanted - named
    if unknown:
        raise ConfigError(
            f"{option} names no row of the input: {', '.join(sorted(unknown))} (name each user "
            "as the sheet does, or by the UPN a mail or employee id lookup finds)"
        )


@dataclass(slots=True)
class Validation:
    """What `onboard validate` found: the rows ready to send, and every other row's outcome."""

    files: list[InputFile]
    ready: list[PassRequest]
    problems: list[Failed]
    skipped: list[Skipped]
    policy: str | None = None  # the pass policy as read (online), for the summary line
    tenant: Tenant | None = None  # signed in to (online)
    journal: str | None = None  # what the journal said of earlier runs, for the summary line
    attention: list[str] = field(default_factory=list)  # as RunReport.attention
    checks: list[tuple[str, str]] = field(default_factory=list)  # what was (not) checked online


async def validate(
    config: Config,
    inputs: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    online: bool,
    allow_users: Collection[str] = (),
) -> Validation:
    """Every check a run makes before its first create, without creating anything: the files,
    their columns and cells, repeats; the journal (the rows `run` would skip as already issued
    or not yet due); and `online`, the pass policy and each person in the directory (by UPN,
    object id, mail or employee id). Raises as `run` does for an unusable file, configuration
    or sign-in."""
    now = datetime.now(UTC)
    files = read_all(config, inputs, now)
    requests, checked = check_rows(files)
    # The same typo check `run` makes (so validate is a true dry run of it).
    named = {r.key for r in requests} | {user_key(o.user) for o in checked if o.user}
    by_upn = config.input.match_by == "upn"
    allowed = {user_key(u) for u in allow_users}
    _check_named("--allow-user", {u for u in allowed if by_upn or "@" not in u}, named)
    found = Validation(files, [], [], [])
    async with contextlib.AsyncExitStack() as stack:
        if online and requests:
            client, found.tenant, found.attention = await _open(config, env, stack)
            policy = None
            try:
                policy, found.policy = await read_policy(client, config, None)
            except PolicyDisabled as exc:
                found.policy = "disabled"
                checked.append(Failed(Origin("(tenant)", 0), "", POLICY_OFF, str(exc)))
            requests, looked_up = await find_people(config, client, requests)
            requests, refused = within_policy(policy, requests)
            screened = await screen_accounts(
                config, client, requests, None, allowed=frozenset(allowed)
            )
            requests, found.checks = screened.keep, screened.notes
            found.attention.extend(screened.unchecked)
            checked.extend([*looked_up, *refused, *screened.refused])
        requests, decided, found.journal = _dry_run(config, requests, now, found.tenant)
        checked.extend(decided)
    order = sorted(checked, key=lambda o: (o.origin.source, o.origin.row))
    found.ready = requests
    found.problems = [o for o in order if isinstance(o, Failed)]
    found.skipped = [o for o in order if isinstance(o, Skipped)]
    return found


def _dry_run(
    config: Config, requests: list[PassRequest], now: datetime, tenant: Tenant | None
) -> tuple[list[PassRequest], list[Skipped], str]:
    """The rows `run` would send, the ones it would skip (already issued by an earlier run of
    the tenant, not yet due), and a line saying which journal and tenant that came from.

    Signed in, the tenant is the token's; otherwise the one earlier runs found behind the
    same auth.tenant_id and Graph root (the journal records both)."""
    path = config.state.path
    if not path.exists():
        return requests, [], f"no journal yet at {path}: no row was issued before"
    simulator = config.graph.is_simulator
    root = SIMULATOR_ROOT if simulator else config.graph.endpoint
    name = config.auth.tenant_id or (SIMULATOR_TENANT if simulator else None)
    journal = Journal(path).open(lock=False)
    try:
        if tenant is not None:
            key = tenant.key
        else:
            known = journal.tenants_named(name, root)
            if len(known) != 1:
                why = "none of its runs" if not known else "several tenants"
                return requests, [], (
                    f"journal {path} not consulted: {why} match auth.tenant_id {name} at {root} "
                    "(add --online to sign in and find out)"
                )  # fmt: skip
            key = known.pop()
        history = history_for(journal, "", key, requests, {})
    finally:
        journal.close()
    choices = Options(config.run.due_within_days, existing=config.pass_.existing)
    ready: list[PassRequest] = []
    skipped: list[Skipped] = []
    for request in requests:
        decision = decide(request, history, now, choices)
        if isinstance(decision, Skip):
            skipped.append(decision.outcome)
        else:
            ready.append(request)
    return ready, skipped, f"checked against the journal {path} (tenant {key.split()[0]})"


class _Ledger:
    """Every outcome goes three places at once: the report, the journal, and the progress.

    While passes are being issued, journal writes are grouped: the pool queues them (`queue`,
    `queue_send`) and each worker then awaits `durable()`, which commits everything queued in
    the same moment in one transaction. A worker still sends nothing before its row is marked
    in flight on disk, and takes no new row before its outcome is on disk; but twenty workers
    share one fsync instead of paying for twenty.
    """

    def __init__(self, report: RunReport, journal: Journal, on_outcome: OnOutcome | None):
        self.report = report
        self.journal = journal
        self.on_outcome = on_outcome
        self._queued: list[PassRequest | Outcome] = []
        self._commit: asyncio.Future[None] | None = None
        self._committed = 0  # items written so far
        self._in_commit = 0  # items being written now
        self._unwritten: list[tuple[int, Any]] = []  # prepared, not yet on disk
        self.sent: set[Origin] = set()  # rows this run sent a create for
        self._writing = threading.Lock()

    def add(self, outcome: Outcome, *, progress: bool = True, later: bool = False) -> None:
        if later:
            self._queued.append(outcome)
        else:
            self.journal.record(self.report.run_id, outcome)
        if isinstance(outcome, Issued):
            self.report.issued.append(outcome)
        elif isinstance(outcome, Failed):
            self.report.failed.append(outcome)
        else:
            self.report.skipped.append(outcome)
        if progress and self.on_outcome is not None:
            self.on_outcome(outcome)

    def replace(self, outcome: Outcome, *, later: bool = False) -> None:
        """Put a new outcome in place of the row's earlier one (confirmation, re-issue)."""
        r = self.report
        r.issued = [i for i in r.issued if i.origin != outcome.origin]
        r.failed = [f for f in r.failed if f.origin != outcome.origin]
        self.add(outcome, progress=False, later=later)

    def queue_send(self, request: PassRequest) -> None:
        self.sent.add(request.origin)
        self._queued.append(request)

    async def durable(self) -> None:
        """Wait until everything queued so far is committed.

        The commit runs in a thread, so the event loop goes on while the disk syncs; whatever
        is queued meanwhile goes into the next commit, together. A failed write stops the run
        (JournalWriteError): going on would hand out passes the journal cannot keep.
        """
        target = self._committed + self._in_commit + len(self._queued)
        while self._committed < target:
            if self._commit is None:
                self._commit = asyncio.ensure_future(self._commit_queued())
            await asyncio.shield(self._commit)

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
            batches = [b for b in self._unwritten if only is None or b is only]
            for batch in batches:
                try:
                    self.journal.write(batch[1])
                except JournalWriteError:
                    raise
                except (sqlite3.Error, OSError) as exc:  # whatever the store itself raised
                    raise JournalWriteError(
                        f"cannot write the run journal {self.journal.path}: {exc}"
                    ) from None
                self._unwritten.remove(batch)

    def flush(self) -> None:
        """Commit whatever is queued or being committed, now (also when the run is torn down)."""
        items, self._queued = self._queued, []
        if items:
            self._unwritten.append((len(items), self._prepare(items)))
            self._committed += len(items)
        self._write_unwritten()

    def _prepare(self, items: list[PassRequest | Outcome]) -> list[tuple[str, list[Any]]]:
        """The statements for these items, in their order (runs of one kind go together)."""
        run_id, tenant = self.report.run_id, self.journal.tenant
        steps: list[tuple[str, list[Any]]] = []
        for item in items:
            if isinstance(item, PassRequest):
                sql, params = SENDING_SQL, sending_params(run_id, item, tenant)
            else:
                sql, params = RECORD_SQL, record_params(run_id, item, self.journal.seal, tenant)
            if steps and steps[-1][0] == sql:
                steps[-1][1].append(params)
            else:
                steps.append((sql, [params]))
        return steps


def _key(files: Sequence[InputFile]) -> str:
    return input_key([(f.path, f.sha256) for f in files])


def _resumable(journal: Journal, key: str, tenant: Tenant) -> RunInfo | None:
    """The unfinished run of these same inputs in this same tenant, to be resumed (or None).
    One of another tenant, or of no recorded tenant, is recovered instead, never resumed."""
    return next(
        (r for r in journal.unfinished_runs() if r.input_key == key and r.tenant == tenant.key),
        None,
    )


def _start(
    journal: Journal,
    config: Config,
    files: list[InputFile],
    started: datetime,
    tenant: Tenant,
    resumed: RunInfo | None,
) -> RunReport:
    """Resume the unfinished run of these same inputs in this tenant, or begin a new one."""
    run_id = resumed.run_id if resumed else new_run_id(started)
    report = RunReport(run_id, resumed.started if resumed else started, files=files)
    report.tenant = tenant
    if resumed is not None:
        report.resumed = True
        report.notes.append(("Resumed", f"at {started:%Y-%m-%d %H:%M:%S} UTC after a stop"))
        log.warning("resuming run %s, which stopped before it finished", run_id)
    meta = {
        "files": [[str(f.path), f.sha256, f.row_count, f.sheet] for f in files],
        "settings": config.public_settings(),
        SIMULATED_KEY: tenant.simulated,
        "tenant": tenant.describe(),
    }
    journal.begin(
        run_id,
        report.started,
        _key(files),
        meta,
        tenant=tenant.key,
        tenant_name=tenant.name,
        simulated=tenant.simulated,
    )
    return report


def history_for(
    journal: Journal,
    run_id: str,
    tenant: str | None,
    requests: Sequence[PassRequest],
    this_run: Mapping[Origin, RowState],
) -> History:
    """What the journal knows of these rows' people in this tenant (see decide.History)."""
    previous = {}
    unsettled = set()
    for request in requests:
        if finished(this_run.get(request.origin)):
            continue
        person = Person.of(request)
        previous[person] = journal.previous_pass(tenant, person, excluding=run_id)
        if previous[person] is None and journal.unsettled(tenant, person, excluding=run_id):
            unsettled.add(person)
    return History(this_run, previous, frozenset(unsettled), journal.issued_in(tenant))


def _sort(
    ledger: _Ledger,
    requests: list[PassRequest],
    checked: Sequence[Failed | Skipped],
    now: datetime,
    options: Options,
    this_run: Mapping[Origin, RowState],
) -> tuple[list[PassRequest], list[CheckFirst]]:
    """Decide every row (decide.decide); record the outcome of each that is not sent now.

    Returns the rows to send, and the rows to decide once Graph has said which pass it holds.
    """
    journal, report = ledger.journal, ledger.report
    for outcome in sorted(checked, key=lambda o: (o.origin.source, o.origin.row)):
        _log_checked(outcome)
        ledger.add(outcome)
    tenant = report.tenant.key if report.tenant else None
    history = history_for(journal, report.run_id, tenant, requests, this_run)
    to_send: list[PassRequest] = []
    to_check: list[CheckFirst] = []
    for request in requests:
        decision = decide(request, history, now, options)
        if isinstance(decision, Keep):
            _log_checked(decision.outcome)
            ledger.add(decision.outcome)
        elif isinstance(decision, Skip):
            report.not_yet_due += decision.not_yet_due
            _log_checked(decision.outcome)
            ledger.add(decision.outcome)
        elif isinstance(decision, CheckFirst):
            to_check.append(decision)
        else:
            assert isinstance(decision, Send)
            to_send.append(decision.request)
    journal.queued(report.run_id, to_send + [c.request for c in to_check])
    return to_send, to_check


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


async def _open(
    config: Config, env: Mapping[str, str], stack: contextlib.AsyncExitStack
) -> tuple[GraphClient, Tenant, list[str]]:
    """The endpoint (the simulator, started here, or the tenant's), a connected client, the
    tenant its token names, and what the operator must hear (a certificate about to expire)."""
    endpoint = await stack.enter_async_context(_endpoint(config, env))
    client, token, credential = await _connect(config, endpoint, stack)
    simulator = config.graph.is_simulator
    tenant = tenant_of(
        token,
        graph_root=SIMULATOR_ROOT if simulator else config.graph.endpoint,
        configured=config.auth.tenant_id or (SIMULATOR_TENANT if simulator else None),
        simulator=simulator,
    )
    log.info("signed in to the tenant %s", tenant.describe())
    expiring = credential.expiring(datetime.now(UTC))
    return client, tenant, [expiring] if expiring else []


async def _send(
    config: Config,
    client: GraphClient,
    ledger: _Ledger,
    requests: list[PassRequest],
    to_check: list[CheckFirst],
    stop: asyncio.Event | None,
    options: AuditOptions,
    phase: Callable[[str], None],
    allowed: frozenset[str] = frozenset(),
) -> None:
    """Check, then issue; whatever happens once passes may exist, the audit gets written.

    Every row about to be sent, however it got here (a new row, a resumed one, one whose
    earlier pass Graph no longer holds), is screened first: no pass for an admin or an
    account already in use (checks.screen_accounts)."""
    report = ledger.report
    tenant = report.tenant.key if report.tenant else None
    pending = {r.origin: r for r in requests}
    pending.update((c.request.origin, c.request) for c in to_check)
    try:
        if any(r.ask_existing for r in requests):
            phase("checking existing passes")
        requests, decided = await existing_passes(
            config,
            client,
            requests,
            stop,
            issued_by=lambda method_id: ledger.journal.issued_by(tenant, method_id),
        )
        for outcome in decided:
            _log_checked(outcome)
            pending.pop(outcome.origin, None)
            ledger.add(outcome, later=True)
        await ledger.durable()
        requests = requests + await _check_first(config, client, ledger, to_check, pending, stop)
        if requests:
            phase("checking the accounts")
            screened = await screen_accounts(config, client, requests, stop, allowed=allowed)
            requests = screened.keep
            report.notes.extend(screened.notes)
            report.attention.extend(screened.unchecked)
            for failed in screened.refused:
                _log_checked(failed)
                pending.pop(failed.origin, None)
                ledger.add(failed, later=True)
            await ledger.durable()
        phase("issuing passes")
        await _issue(config, client, requests, ledger, pending, stop)
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Stopped at once: the journal holds every outcome and pass so far, and the rows in
        # flight; running the same command again resumes this run and writes its audit.
        raise
    except BaseException as exc:
        cause = _cause(exc)
        report.stopped = f"aborted: {exc}" if isinstance(exc, AuthError) else f"crashed ({cause})"
        # A journal that cannot be written gets no more writes: the audit gets them all.
        broken = isinstance(exc, JournalWriteError)
        for r in pending.values():
            sent = r.origin in ledger.sent or r.prior_attempts > 0 or r.doubtful
            ledger.replace(_unfinished(r, cause) if sent else not_sent(r, cause), later=broken)
        _finish(ledger.journal, config, report, config.output.dir, options, journal_ok=not broken)
        if isinstance(exc, OnboardError):
            exc.audit_path = report.audit_path
        raise


async def _check_first(
    config: Config,
    client: GraphClient,
    ledger: _Ledger,
    to_check: list[CheckFirst],
    pending: dict[Origin, PassRequest],
    stop: asyncio.Event | None,
) -> list[PassRequest]:
    """Skip the rows whose earlier pass Graph still holds; return the others, to be sent.

    Graph is asked only once run.settle_seconds have passed since the last request of unknown
    fate for each row was sent (the journal knows when): a request that lands late would
    otherwise replace the pass the check found.
    """
    if not to_check:
        return []
    run = config.run
    now = datetime.now(UTC)
    wait = max(
        settle_wait(c.previous.last_sent, now, run.settle_seconds, c.previous.sent_ago)
        for c in to_check
    )
    if wait > 0:
        log.info("waiting %.1f s for earlier requests to settle before asking Graph", wait)
        if await stopped_within(stop, wait):
            for check in to_check:  # not asked, so not sent
                pending.pop(check.request.origin, None)
                _log_checked(not_sent(check.request))
                ledger.add(not_sent(check.request), later=True)
            return []
    answers = await current_passes(
        [c.request.user for c in to_check],
        client.current_pass_id,
        concurrency=run.concurrency,
        retries=retries_for(run),
    )
    send = []
    for check in to_check:
        held = answers[check.request.user]
        if held is not None and held == check.previous.method_id:
            pending.pop(check.request.origin, None)
            skipped = already_issued(check.request, check.previous, confirmed=True)
            _log_checked(skipped)
            ledger.add(skipped)
            continue
        why = (
            f"could not ask Graph (HTTP {held.status})"
            if isinstance(held, GraphError)
            else "Graph no longer holds it (a later request of unknown fate replaced it)"
        )
        note = f"the pass run {check.previous.run_id} issued may not stand: {why}; issued again"
        send.append(replace(check.request, note=_join(check.request.note, note), doubtful=True))
    return send


def _unfinished(request: PassRequest, cause: str) -> Failed:
    """A row whose create was sent when the run stopped on `cause`: it may hold a pass."""
    return Failed(
        request.origin,
        request.user,
        "Not finished",
        f"The run stopped ({cause}) after this row's request was sent; it may or may not have a "
        "pass. Run again for this row (a new pass replaces any earlier one).",
        may_have_pass=True,
    )


def _cause(exc: BaseException) -> str:
    """What stopped a run, for its unfinished rows: a sign-in or journal failure says itself;
    anything else is an internal error (never its message: it may hold data)."""
    if isinstance(exc, AuthError):
        return f"sign-in failed: {exc}"
    if isinstance(exc, JournalWriteError):
        return "the run journal could not be written"
    return f"an internal error, {type(exc).__name__}"


def _log_checked(outcome: Outcome) -> None:
    """A row's line in the log (--log-file gets at least one per row)."""
    where = f"{outcome.origin.source} row {outcome.origin.row}"
    if isinstance(outcome, Issued):  # kept from before the run was stopped and resumed
        log.info("%s %s: pass issued before the run stopped (kept)", where, outcome.request.user)
    elif isinstance(outcome, Failed):
        log.warning("%s %s: %s: %s", where, outcome.user or "-", outcome.reason, outcome.detail)
    elif isinstance(outcome, Skipped):
        log.info("%s %s: skipped: %s", where, outcome.user or "-", outcome.reason)


async def _connect(
    config: Config, endpoint: Endpoint, stack: contextlib.AsyncExitStack
) -> tuple[GraphClient, str, Credential]:
    """Credential, TLS, a first token and the HTTP session: everything before the first
    create. Returns the client and that first token (it names the tenant)."""
    credential = load_credential(config.auth, endpoint.secret_env)
    context = make_ssl_context(endpoint.ca_bundle)
    service = IDENTITY_ENDPOINT if config.auth.method == "managed_identity" else SIGN_IN_SERVICE
    http = stack.enter_context(contextlib.closing(requests_session(context, service=service)))
    tokens = MsalTokenProvider(
        method=config.auth.method,
        credential=credential,
        authority=endpoint.authority,
        scope=f"{CLOUDS[config.graph.cloud].graph_root}/.default",
        http_client=http,
    )
    token = await tokens.token()  # fail fast, before any pass is created
    connector = aiohttp.TCPConnector(ssl=context, limit=config.run.concurrency * 2)
    # HTTPS_PROXY / NO_PROXY are read once here, not by aiohttp on every request (its
    # trust_env looks them up, and ~/.netrc, in a thread per request).
    proxy, proxy_auth = None, None
    with contextlib.suppress(LookupError):
        proxy, proxy_auth = get_env_proxy_for_url(URL(endpoint.graph_url))
    session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
    client = GraphClient(
        session,
        endpoint.graph_url,
        tokens,
        api_version=config.graph.api_version,
        timeout_seconds=config.run.timeout_seconds,
        rate=RateController(config.run.max_rate),
        proxy=proxy,
        proxy_auth=proxy_auth,
    )
    return client, token, credential


async def _issue(
    config: Config,
    client: GraphClient,
    requests: list[PassRequest],
    ledger: _Ledger,
    pending: dict[Origin, PassRequest],
    stop: asyncio.Event | None,
) -> None:
    report = ledger.report
    run = config.run

    def track(outcome: Outcome) -> None:
        request = pending.pop(outcome.origin, None)
        ledger.add(on_conflict(outcome, request), later=True)

    def track_again(outcome: Outcome) -> None:
        request = pending.pop(outcome.origin, None)
        ledger.replace(on_conflict(outcome, request), later=True)

    async def issue(batch: list[PassRequest], on_outcome: OnOutcome) -> PoolResult:
        try:
            return await issue_all(
                batch,
                client.create_pass,
                concurrency=run.concurrency,
                retries=retries_for(run),
                on_outcome=on_outcome,
                on_send=ledger.queue_send,
                durable=ledger.durable,
                stop=stop,
                grace_seconds=run.stop_grace_seconds,
                create_batch=client.create_passes,
                batch_size=run.batch_size,
            )
        finally:
            ledger.flush()  # the rows the pool ended itself (interrupted, not sent), or on a crash

    async def check(suspects: list[Issued]) -> Confirmation:
        return await confirm(
            suspects,
            client.current_pass_id,
            concurrency=run.concurrency,
            retries=retries_for(run),
        )

    result = await issue(requests, track)
    _add_stats(report, result)
    if stop is not None and stop.is_set() and not report.stopped:
        report.stopped = "stopped"
    # When each unconfirmed pass's doubtful request was last sent (resumed ones: now, which is
    # later than any request of the run that stopped).
    sent_at = dict(result.unclear)
    given_up: set[Origin] = set()
    for _ in range(CONFIRM_ROUNDS):
        suspects = [i for i in report.issued if i.unconfirmed and i.origin not in given_up]
        if not suspects:
            return
        settled_at = max(sent_at.get(i.origin, time.monotonic()) for i in suspects)
        if report.stopped or await stopped_within(
            stop, settled_at + run.settle_seconds - time.monotonic()
        ):
            # Stopping: leave them flagged in the journal; the next run checks them with Graph.
            report.stopped = report.stopped or "stopped"
            for item in suspects:
                ledger.replace(replace(item, note=_join(item.note, _UNCONFIRMED_NOTE)))
            return
        found = await check(suspects)
        for item in found.confirmed + found.unknown:
            ledger.replace(item)
        given_up.update(item.origin for item in found.unknown)
        if not found.replaced:
            return
        for item in found.replaced:
            log.warning(
                "%s row %d %s: Graph holds a different pass than the one it returned (a slower "
                "earlier request finished late); issuing again",
                item.origin.source,
                item.origin.row,
                item.request.user,
            )
            pending[item.origin] = item.request
        again = [
            replace(i.request, note=_REISSUE_NOTE, prior_attempts=i.attempts)
            for i in found.replaced
        ]
        result = await issue(again, track_again)
        _add_stats(report, result)
        sent_at.update(result.unclear)
    for item in [i for i in report.issued if i.unconfirmed and i.origin not in given_up]:
        ledger.replace(
            Failed(
                item.origin,
                item.request.user,
                "Pass not confirmed",
                "Graph kept holding a different pass than the one it returned. Run this row again.",
                attempts=item.attempts,
                request_id=item.request_id,
                may_have_pass=True,
            )
        )


CONFIRM_ROUNDS = 3
_REISSUE_NOTE = "issued again: a slower earlier request had replaced the first pass"
_UNCONFIRMED_NOTE = (
    "not yet confirmed with Graph after an unclear attempt (the run was stopped): the next run "
    "checks it"
)


def _add_stats(report: RunReport, result: PoolResult) -> None:
    report.retries += result.retries
    if result.aborted is not None:
        report.stopped = f"aborted: {result.aborted}"


@contextlib.asynccontextmanager
async def _endpoint(config: Config, env: Mapping[str, str]) -> AsyncIterator[Endpoint]:
    if not config.graph.is_simulator:
        yield Endpoint(config.graph.endpoint, authority_url(config), config.graph.ca_bundle, env)
        return
    yield_env = dict(env)
    secret = config.auth.client_secret
    if secret.env and secret.inline is None and secret.file is None:
        yield_env.setdefault(secret.env, DEFAULT_CLIENT_SECRET)  # the simulator's demo secret
    async with simulator_for(config) as sim:
        tenant = config.auth.tenant_id or SIMULATOR_TENANT
        log.info("running against the built-in Graph simulator at %s", sim.url)
        yield Endpoint(sim.url, f"{sim.url}/{tenant}", sim.ca_file, yield_env)


def authority_url(config: Config) -> str:
    """The tenant-specific sign-in authority: `auth.authority` (host, or a full URL) + tenant."""
    host = config.auth.authority or CLOUDS[config.graph.cloud].authority_host
    if urlsplit(host).path.strip("/"):
        return host  # already names the tenant
    return f"{host}/{config.auth.tenant_id}"


def simulator_state(config: Config) -> SimulatorState:
    """The simulated tenant described by the `simulator:` section."""
    s = config.simulator
    faults = Faults(
        latency_ms=s.latency_ms,
        fault_rate=s.fault_rate,
        throttle_rate=s.throttle_rate,
        throttle_burst=s.throttle_burst,
        retry_after_seconds=s.retry_after_seconds,
        lost_response_rate=s.lost_response_rate,
    )
    if s.tenant is not None:
        return SimulatorState.from_file(s.tenant, faults=faults, seed=s.seed)
    return SimulatorState(faults=faults, auto_users=True, seed=s.seed)


@contextlib.asynccontextmanager
async def simulator_for(config: Config) -> AsyncIterator[RunningSimulator]:
    """The in-process simulator on a free loopback port."""
    async with serve(simulator_state(config)) as running:
        yield running


def _rate_notes(rate: RateController | None) -> list[Note]:
    """How close to Graph's limit the run went, for the Summary sheet (numbers as numbers)."""
    if rate is None:
        return [("429 answers", 0)]
    effective = rate.effective_rate
    return [
        ("Requests to Graph", rate.requests),
        ("Effective rate", "-" if effective is None else round(effective, 1), "requests/s"),
        ("Rate ceiling (run.max_rate)", rate.max_rate, "requests/s"),
        ("429 answers", rate.throttles),
        ("Throttle warnings (x-ms-throttle-limit-percentage)", rate.warnings),
        ("Time paused by Retry-After", round(rate.paused_seconds, 1), "s"),
    ]


def _finish(
    journal: Journal,
    config: Config,
    report: RunReport,
    directory: Path,
    options: AuditOptions,
    *,
    journal_ok: bool = True,
) -> None:
    """Write the audit workbook, then (only then) mark the run finished and wipe its passes.

    `journal_ok` False: the journal could not be written, so only the workbook is written."""
    report.finished = datetime.now(UTC)
    notes: list[Note] = [
        ("Tenant", report.tenant.describe() if report.tenant else "-"),
        *(("Needs attention", line) for line in report.attention),
        *report.notes,
        ("Not yet due", report.not_yet_due),
        ("Retries", report.retries),
        *_rate_notes(report.rate),
    ]
    summary = RunSummary(
        run_id=report.run_id,
        started=report.started,
        finished=report.finished,
        version=__version__,
        files=[FileSummary(str(f.path), f.sha256, f.row_count, f.sheet) for f in report.files],
        settings=config.public_settings(),
        status=report.stopped or "completed",
        notes=notes,
        timezone=config.pass_.timezone,
        simulated=report.simulated,
    )
    path = free_path(audit_path(directory, report.run_id, simulated=report.simulated))
    try:
        report.audit_path = write_audit(
            path, summary, report.issued, report.failed, report.skipped, options
        )
    except Exception as exc:  # a full disk, or the encryption failing: the passes are not lost
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        sealed = "sealed (encrypted)" if options.password else "kept"
        kept = (
            f"The passes are {sealed} in the journal {journal.path}"
            if journal_ok
            else f"The journal {journal.path} could not be written either: it keeps the passes "
            "recorded before that failure"
        )
        error = AuditWriteError(
            f"could not write the audit workbook {path}: {what}. {kept}: fix that, then run "
            f"'onboard report {report.run_id}' to write them out (or run the same command again)"
        )
        error.kept = (report.run_id, len(report.issued))
        raise error from None
    if not journal_ok:
        return
    status = "completed" if not report.stopped else report.stopped.split(":")[0].split(" ")[0]
    try:
        journal.finish(report.run_id, status, report.audit_path)
    except JournalWriteError as exc:
        exc.audit_path = report.audit_path
        raise
