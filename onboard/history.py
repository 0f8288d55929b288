"""Past runs, from the journal: list them, rebuild an audit workbook, recover an unfinished run,
resume one, and what earlier runs of the tenant did for the rows at hand (decide.History).

A run killed before writing its audit (kill -9, power loss, a full disk) left its outcomes and
pass values in the journal. Running the same command again resumes it; running anything else
first recovers it here, so its passes reach a workbook before any new pass is created.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import __version__
from .audit import (
    UTC_ZONE,
    AuditOptions,
    FileSummary,
    RunSummary,
    audit_path,
    free_path,
    read_issued,
    write_audit,
)
from .config import Config
from .decide import History, Options, Skip, decide, finished
from .errors import ConfigError, first_line
from .journal import Journal, Person, RowRecord, RowState, RunInfo, RunStatus, input_key
from .outcomes import Failed, Issued, Origin, Outcome, PassRequest, Skipped, interrupted
from .reader import InputFile
from .record import RunRows
from .report import RunReport
from .retrying import retries_for
from .runner import ask_all
from .tenant import SIMULATOR_ROOT, SIMULATOR_TENANT, Tenant

log = logging.getLogger(__name__)

SIMULATED_KEY = "simulated"  # the run's meta: True when its passes came from the simulator
TIMEZONE_SETTING = "pass.timezone"  # the recorded setting the Issued sheet's times are shown in
UNCONFIRMED = (
    "not confirmed with Graph: a request of unknown fate was sent for this user; the next run "
    "of the sheet checks it with Graph"
)


def recover_unfinished(
    journal: Journal, config: Config, options: AuditOptions, *, exclude: str | None
) -> list[RunInfo]:
    """Write the audit of every unfinished run except `exclude` (the run to be resumed)."""
    recovered = []
    for run in journal.unfinished_runs():
        if run.run_id == exclude:
            continue
        path = rebuild(journal, run, _own_path(config.output.dir, run), options)
        journal.finish(run.run_id, RunStatus.RECOVERED, path)
        recovered.append(replace(run, status=RunStatus.RECOVERED, audit_path=str(path)))
    return recovered


def report(
    journal: Journal, run_id: str, directory: Path, options: AuditOptions
) -> tuple[Path, RunInfo, bool]:
    """`onboard report`: the audit workbook of a past run, rebuilt from the journal.

    Returns the workbook, the run, and whether pass values are in it (only for a run killed
    before it wrote its own audit; its values are then wiped from the journal).
    """
    run = journal.run(run_id)
    if run is None:
        raise ConfigError(
            f"no run {run_id} in the journal {journal.path}; 'onboard runs' lists them"
        )
    if run.status == "running":  # killed before its audit: this is its audit, values included
        path = rebuild(journal, run, _own_path(directory, run), options)
        journal.finish(run.run_id, RunStatus.RECOVERED, path)
        return path, replace(run, status=RunStatus.RECOVERED, audit_path=str(path)), True
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = audit_path(directory, f"{run.run_id}-rebuilt-{stamp}", simulated=simulated(run))
    path = rebuild(journal, run, path, options)
    return path, run, False


def rebuild(journal: Journal, run: RunInfo, path: Path, options: AuditOptions) -> Path:
    """Write a workbook from what the journal holds (pass values only where still held)."""
    issued: list[Issued] = []
    failed: list[Failed] = []
    skipped: list[Skipped] = []
    for origin, state in sorted(journal.rows(run.run_id).items()):
        outcome: Outcome = state.outcome or interrupted(origin, state.user_key, state.attempts)
        if isinstance(outcome, Issued) and outcome.unconfirmed:
            outcome = replace(outcome, note=f"{outcome.note}; {UNCONFIRMED}".lstrip("; "))
        if isinstance(outcome, Issued):
            issued.append(outcome)
        elif isinstance(outcome, Failed):
            failed.append(outcome)
        else:
            skipped.append(outcome)
    meta = run.meta
    summary_settings = [(str(name), value) for name, value in meta["settings"]]
    summary = RunSummary(
        run_id=run.run_id,
        started=run.started,
        finished=run.finished or datetime.now(UTC),
        version=__version__,
        files=[FileSummary(str(p), sha, rows, sheet) for p, sha, rows, sheet in meta["files"]],
        settings=summary_settings,
        status="recovered from the journal" if run.status == "running" else run.status,
        notes=[
            ("Tenant", str(meta.get("tenant") or run.tenant_shown)),
            ("Rebuilt from the journal (UTC)", datetime.now(UTC)),
        ],
        timezone=str(dict(summary_settings).get(TIMEZONE_SETTING, UTC_ZONE)),
        simulated=simulated(run),
        # A finished run's values went to its own audit and were wiped from the journal.
        pass_values=run.status == "running",
    )
    return write_audit(path, summary, issued, failed, skipped, options)


def simulated(run: RunInfo) -> bool:
    """Whether the run issued its passes in the simulator (meta["simulated"]; runs recorded
    before it was kept: no)."""
    return run.simulated or bool(run.meta.get(SIMULATED_KEY, False))


def _own_path(directory: Path, run: RunInfo) -> Path:
    """The audit a run killed before writing it gets: the name its own would have had."""
    return free_path(audit_path(directory, run.run_id, simulated=simulated(run)))


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def files_key(files: Sequence[InputFile]) -> str:
    """What ties a run to its inputs: a resumed run is the one with the same files."""
    return input_key([(f.path, f.sha256) for f in files])


def resumable(journal: Journal, key: str, tenant: Tenant) -> RunInfo | None:
    """The unfinished run of these same inputs in this same tenant, to be resumed (or None).
    One of another tenant, or of no recorded tenant, is recovered instead, never resumed."""
    return next(
        (r for r in journal.unfinished_runs() if r.input_key == key and r.tenant == tenant.key),
        None,
    )


def kept_by_unfinished(journal: Journal, key: str) -> tuple[str, int] | None:
    """The passes an unfinished run of these inputs holds in the journal (run id, how many):
    what a run that stops before it starts must not deny."""
    for run in journal.unfinished_runs():
        held = run.counts.get("issued", 0) + run.counts.get("unclear", 0)
        if run.input_key == key and held:
            return run.run_id, held
    return None


def warn_untied(journal: Journal) -> None:
    untied = journal.untied_runs()
    if untied:
        log.warning(
            "the journal %s holds %d run(s) recorded before runs were bound to a tenant: their "
            "passes are never taken as already issued (Graph is asked instead)",
            journal.path,
            untied,
        )


def begin(
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
        files_key(files),
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
    this_run: Mapping[Origin, RowRecord],
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


def audited_in_flight(
    path: Path,
    password: str | None,
    requests: Sequence[PassRequest],
    known: Mapping[Origin, RowRecord],
) -> dict[Origin, tuple[PassRequest, Issued]]:
    """A resumed run whose journal failed mid-run: its first audit workbook (`path`, written
    then) may list passes the journal never recorded, for rows it still has in flight. Returns
    those rows with the pass the workbook lists (its value and method id): where Graph still
    holds that very pass, the admin may already have handed it out (see `adopted`)."""
    waiting = {
        r.origin: r
        for r in requests
        if (state := known.get(r.origin)) is not None
        and state.state in (RowState.IN_FLIGHT, RowState.INTERRUPTED)
    }
    if not waiting or not path.exists():
        return {}
    try:
        listed = read_issued(path, password)
    except Exception as exc:  # an unreadable workbook: the rows are decided as before
        log.warning("cannot read the earlier audit workbook %s: %s", path, first_line(exc))
        return {}
    found = {}
    for p in listed:
        origin = Origin(p.source, p.row)
        if origin not in waiting:
            continue
        request = waiting[origin]
        starts = p.starts or request.start or datetime.now(UTC)
        issued = Issued(
            request, p.value, p.method_id, starts,
            p.expires or starts + timedelta(minutes=request.lifetime_minutes),
            request.lifetime_minutes, request.usable_once, None, known[origin].attempts, None,
            f"kept from the audit workbook {path.name}, written when the journal could not be",
        )  # fmt: skip
        found[origin] = (request, issued)
    return found


def adopted(issued: Issued, held: str | None, *, asked: bool) -> Issued | None:
    """The audited pass kept, if Graph holds that very pass (`held`), or would not say (not
    `asked`: then it is kept, flagged, and checked with Graph again before the run ends or by
    the next run: sending again would replace a pass the admin may have handed out)."""
    if asked and held != issued.method_id:
        return None  # Graph holds another pass: decided as before
    how = "confirmed with Graph" if asked else "not yet confirmed with Graph"
    return replace(issued, note=f"{issued.note}: {how}", unconfirmed=not asked)


def dry_run(
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


async def adopt_audited(
    config: Config,
    rows: RunRows,
    requests: list[PassRequest],
    known: Mapping[Origin, RowRecord],
    options: AuditOptions,
) -> list[PassRequest]:
    """A resumed run whose journal failed mid-run keeps the passes its first audit workbook
    lists where Graph still holds them (history.adopted). Returns the rows still to decide."""
    report = rows.report
    path = audit_path(config.output.dir, report.run_id, simulated=report.simulated)
    audited = audited_in_flight(path, options.password, requests, known)
    if not audited:
        return requests
    answers = await ask_all(
        [request.user for request, _ in audited.values()],
        rows.client.current_pass_id,
        concurrency=config.run.concurrency,
        retries=retries_for(config.run),
    )
    kept: set[Origin] = set()
    for origin, (request, issued) in audited.items():
        held = answers.get(request.user)
        asked = not isinstance(held, Exception)
        keep = adopted(issued, held if isinstance(held, str) else None, asked=asked)
        if keep is not None:
            rows.add(keep)
            kept.add(origin)
    if kept:
        log.warning(
            "%d pass(es) listed in the audit workbook %s, written when the journal failed, "
            "kept rather than replaced: see their Notes",
            len(kept),
            path,
        )
    return [r for r in requests if r.origin not in kept]
