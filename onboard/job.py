"""One run, start to finish: read → decide → check → send → record → write.

This is orchestration only: each stage is a module of its own (reader, decide, checks, pool,
journal, audit, connect), and this one calls them in order and sees that every row ends as
exactly one outcome whatever happens. It prints nothing and exits nothing (the CLI does). With
``graph.endpoint: simulator`` connect.py starts the built-in simulator on a loopback port first,
and the run then takes exactly the production path against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from .audit import AuditOptions, audit_options, audit_path, free_path, write_audit
from .checks import (
    RowChecks,
    check_first,
    find_people,
    read_policy,
    within_policy,
)
from .config import Config
from .connect import Connection, connect, unless_stopped
from .decide import CheckFirst, Named, Options, decide_all, finished
from .deliver import (
    DeliveryReport,
    Sending,
    check_sender,
    deliver,
    hires_of,
    sending_for,
    templates_for,
)
from .errors import (
    AuditWriteError,
    AuthError,
    ConfigError,
    JournalWriteError,
    OnboardError,
    first_line,
)
from .files import check_free_space, check_output_dir
from .given import Clock, check_arguments, clock_of, read_inputs
from .graph import GraphClient, explain, unusable_pass
from .history import (
    adopt_audited,
    begin,
    files_key,
    history_for,
    kept_by_unfinished,
    recover_unfinished,
    resumable,
    warn_untied,
)
from .journal import Journal, RunStatus
from .outcomes import Failed, PassRequest, Skipped
from .pool import Check, Sender, send
from .reader import InputFile, check_rows
from .record import OnOutcome, RunRows, crashed
from .report import STOPPED, WRITING_AUDIT, RunReport, StopCause
from .retrying import retries_for
from .tenant import TenantLock
from .tls import warm as warm_tls

log = logging.getLogger(__name__)


async def run(
    config: Config,
    inputs: Sequence[str | Path] = (),
    *,
    requests: Sequence[PassRequest] | None = None,
    env: Mapping[str, str] | None = None,
    client: Connection | None = None,
    now: Clock | None = None,
    out_dir: Path | None = None,
    on_outcome: OnOutcome | None = None,
    on_start: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    reissue: bool = False,
    reissue_users: Collection[str] = (),
    due_within_days: int | None = None,
    allow_users: Collection[str] = (),
    on_phase: Callable[[str], None] | None = None,
    preview: Path | None = None,
) -> RunReport:
    """Run the whole job on the `inputs` files and the `requests` handed in (docs/api.md),
    journalled: safe to kill, to re-run, and to schedule.

    Raises ConfigError, InputFileError, JournalLocked or AuthError (ValueError for requests
    no row could become) before any pass is created. Every run signs in first (one token
    request, so an expired secret is found on a day with nothing to send too), unless given a
    `client`, and belongs to the tenant its token names. Running the same inputs again after
    a crash resumes that run; re-running a finished sheet skips users who already got a pass
    for the same start and end in that tenant (unless `reissue`). Once `stop` is set, no new
    row is started and the audit is written for what was done. With delivery.method mail (or
    a `preview` folder) the passes issued are then delivered (deliver.py).
    """
    check_arguments(config, inputs, requests,
                    [("reissue_users", reissue_users), ("allow_users", allow_users)],
                    due_within_days)  # fmt: skip
    clock = clock_of(now)
    started = clock()
    env = env or {}
    config = config.overridden(out_dir=out_dir, due_within_days=due_within_days)
    due = config.run.due_within_days
    options = audit_options(config.output, env)  # a missing password stops the run here
    if client is None and not config.graph.is_simulator:
        warm_tls(config.graph.ca_bundle)  # while the spreadsheet is read
    files = read_inputs(inputs, requests, config.input, config.pass_, started)
    wanted, checked = check_rows(files)
    templates = templates_for(config, wanted, preview)
    named = Named.check(config.input.match_by, wanted, checked, reissue_users, allow_users)
    check_output_dir(config.output.dir)
    journal = Journal(config.state.path, options.password).open()
    try:
        check_free_space([config.output.dir, config.state.path.parent], len(wanted) + len(checked))
        async with contextlib.AsyncExitStack() as stack:
            connection = client or await _connect(config, env, journal, files, stop, stack)
            rows = await _begin(config, connection, journal, files, started, stack, options,
                                owned=client is None and config.graph.is_simulator)  # fmt: skip
            rows.on_outcome = on_outcome
            report = rows.report
            if on_start is not None:
                on_start(len(wanted) + len(checked))
            choices = Options(due, reissue, frozenset(named.reissue), config.pass_.existing)
            phase = on_phase or (lambda doing: None)
            try:
                sender = await _sender(config, rows, preview)
                await _rows(config, rows, wanted, checked, named, choices, stop, options,
                            phase, clock)  # fmt: skip
                if templates is not None:
                    how = sending_for(config, templates, simulated=report.simulated,
                                      preview=preview, sender=sender)  # fmt: skip
                    report.delivery = await _deliver(rows, how, stop)
            except (AuthError, ConfigError, JournalWriteError) as exc:
                if report.resumed or report.issued:
                    exc.kept = (report.run_id, len(report.issued))
                elif not isinstance(exc, JournalWriteError):  # no pass is held: close it
                    journal.finish(report.run_id, RunStatus.ABORTED, None)
                raise
            phase(WRITING_AUDIT)
            _finish(journal, config, report, options, clock)
            return report
    finally:
        journal.close()


async def _sender(config: Config, rows: RunRows, preview: Path | None) -> str | None:
    """The mailbox that sends the passes, checked before the first pass: a wrong sender
    issues nothing (None: no mail is sent)."""
    if config.delivery.method != "mail" or preview is not None:
        return None
    return await check_sender(rows.client, config.delivery, retries_for(config.run))


async def _connect(
    config: Config,
    env: Mapping[str, str],
    journal: Journal,
    files: list[InputFile],
    stop: asyncio.Event | None,
    stack: contextlib.AsyncExitStack,
) -> Connection:
    """Sign in as the config says; a run stopped here says which passes wait in the journal."""
    try:
        # Nothing is sent yet; a signal during a slow sign-in stops it at once.
        return await unless_stopped(connect(config, env, stack), stop)
    except (AuthError, ConfigError) as exc:
        exc.kept = kept_by_unfinished(journal, files_key(files))
        raise


async def _begin(
    config: Config,
    connection: Connection,
    journal: Journal,
    files: list[InputFile],
    started: datetime,
    stack: contextlib.AsyncExitStack,
    options: AuditOptions,
    *,
    owned: bool,
) -> RunRows:
    """Hold the tenant, recover other unfinished runs, and begin (or resume) this one.

    `owned`: the tenant is the built-in simulator this run started, so no other run meets it."""
    key = files_key(files)
    tenant = connection.tenant
    if not owned:
        lock = TenantLock(tenant)
        lock.acquire(f"journal {journal.path}")
        stack.callback(lock.release)
    warn_untied(journal)
    resumed = resumable(journal, key, tenant)
    exclude = resumed.run_id if resumed else None
    for other in recover_unfinished(journal, config, options, exclude=exclude):
        log.warning(
            "run %s had stopped before writing its audit; its passes are now in %s",
            other.run_id,
            other.audit_path,
        )
    report = begin(journal, config, files, started, tenant, resumed)
    report.pacing = connection.client.pacing
    report.attention.extend(connection.attention)
    return RunRows(report, journal, connection.client)


async def _rows(
    config: Config,
    rows: RunRows,
    requests: list[PassRequest],
    checked: list[Failed | Skipped],
    named: Named,
    choices: Options,
    stop: asyncio.Event | None,
    options: AuditOptions,
    phase: Callable[[str], None],
    clock: Clock,
) -> None:
    """Decide every row, check the ones to send, send them."""
    report, client = rows.report, rows.client
    # Rows this run already finished before a stop keep their outcome (and pass); only the
    # others are looked up and checked again.
    known = rows.journal.rows(report.run_id)
    if report.resumed:
        requests = await adopt_audited(config, rows, requests, known, options)
    open_rows = [r for r in requests if not finished(known.get(r.origin))]
    if config.input.match_by != "upn" and open_rows:
        phase("finding people")
        found_rows, found = await find_people(config, client, open_rows, stop)
        requests = [r for r in requests if finished(known.get(r.origin))] + found_rows
        checked = [*checked, *found]
        choices = replace(choices, reissue_users=named.found(found_rows, found))
    for outcome in sorted(checked, key=lambda o: (o.origin.source, o.origin.row)):
        rows.add(outcome)
    tenant = report.tenant.key if report.tenant else None
    history = history_for(rows.journal, report.run_id, tenant, requests, known)
    decided = decide_all(requests, history, clock(), choices)
    for kept in decided.decided:
        rows.add(kept)
    report.not_yet_due += decided.not_yet_due
    to_send, to_check = decided.send, decided.check
    rows.journal.queued(report.run_id, to_send + [c.request for c in to_check])
    if stop is not None and stop.is_set():
        report.stop(STOPPED)
    if to_send or to_check:
        phase("reading the pass policy")
        policy, line = await read_policy(
            client, config, stop, holding=report.resumed or bool(report.issued)
        )
        report.notes.append(("Pass policy", line))
        to_send, refused = within_policy(policy, to_send)
        for failed in refused:
            rows.add(failed)
    else:
        report.notes.append(("Pass policy", "not read: nothing to send"))
    if to_send or to_check or rows.unconfirmed():
        rows.pending.update((r.origin, r) for r in to_send)
        rows.pending.update((c.request.origin, c.request) for c in to_check)
        await _check_and_send(config, rows, to_send, to_check, stop, options, phase,
                              named.allow, clock)  # fmt: skip


async def _check_and_send(
    config: Config,
    rows: RunRows,
    requests: list[PassRequest],
    to_check: list[CheckFirst],
    stop: asyncio.Event | None,
    options: AuditOptions,
    phase: Callable[[str], None],
    allowed: frozenset[str],
    clock: Clock,
) -> None:
    """Check, then issue; whatever happens once passes may exist, the audit gets written.

    Every row about to be sent, however it got here (a new row, a resumed one, one whose
    earlier pass Graph no longer holds), is checked first, as the creates go (checks.RowChecks:
    the pass its user holds, and no pass for an admin or an account already in use)."""
    report, client, journal = rows.report, rows.client, rows.journal
    tenant = report.tenant.key if report.tenant else None
    try:
        again, confirmed = await check_first(config.run, client, to_check, stop)
        for outcome in confirmed:
            rows.add(outcome, later=True)
        await rows.durable()
        requests = requests + again
        checks = RowChecks(
            config, client, len(requests), stop,
            issued_by=lambda method_id: journal.issued_by(tenant, method_id), allowed=allowed,
        )  # fmt: skip
        phase("checking and issuing passes")
        await _issue(config, client, requests, rows, stop, checks.check)
        if requests:
            notes, unchecked = checks.summary()
            report.notes.extend(notes)
            report.attention.extend(unchecked)
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Stopped at once: the journal holds every outcome and pass so far, and the rows in
        # flight; running the same command again resumes this run and writes its audit.
        raise
    except BaseException as exc:
        crashed(rows, exc)
        broken = isinstance(exc, JournalWriteError)
        _finish(journal, config, report, options, clock, journal_ok=not broken)
        if isinstance(exc, OnboardError):
            exc.audit_path = report.audit_path
        raise


async def _issue(
    config: Config,
    client: GraphClient,
    requests: list[PassRequest],
    rows: RunRows,
    stop: asyncio.Event | None,
    check: Check,
) -> None:
    sender = Sender(
        client.create_pass, client.create_passes, client.current_pass_id, explain, unusable_pass
    )
    result = await send(requests, sender, rows, config.run, stop, check=check)
    report = rows.report
    report.retries += result.retries
    if result.aborted is not None:
        report.stop(StopCause(RunStatus.ABORTED, str(result.aborted)))
    if result.stopped:
        report.stop(STOPPED)


async def _deliver(rows: RunRows, how: Sending, stop: asyncio.Event | None) -> DeliveryReport:
    """Mail the passes issued (and kept, when resumed); once stopped, `onboard deliver` does."""
    report = rows.report
    hires = hires_of(report.issued)
    if report.stopped is not None:
        return DeliveryReport(report.run_id, [h.origin for h in hires],
                              not_started=f"the run {report.stopped} before delivery")  # fmt: skip
    delivered = await deliver(rows.client, rows.journal, report.run_id, hires, how, stop=stop)
    if stop is not None and stop.is_set():
        report.stop(STOPPED)
    return delivered


def _finish(
    journal: Journal,
    config: Config,
    report: RunReport,
    options: AuditOptions,
    clock: Clock,
    *,
    journal_ok: bool = True,
) -> None:
    """Write the audit workbook, then (only then) mark the run finished and wipe its passes.

    `journal_ok` False: the journal could not be written, so only the workbook is written."""
    report.finished = clock()
    summary = report.summary(config.public_settings(), config.pass_.timezone)
    path = free_path(audit_path(config.output.dir, report.run_id, simulated=report.simulated))
    try:
        delivered = report.delivery.audited() if report.delivery else None
        report.audit_path = write_audit(
            path, summary, report.issued, report.failed, report.skipped, options,
            deliveries=delivered,
        )  # fmt: skip
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
    try:
        journal.finish(report.run_id, report.status, report.audit_path)
    except JournalWriteError as exc:
        exc.audit_path = report.audit_path
        raise
