"""Past runs, from the journal: list them, rebuild an audit workbook, recover an unfinished run.

A run killed before writing its audit (kill -9, power loss, a full disk) left its outcomes and
pass values in the journal. Running the same command again resumes it; running anything else
first recovers it here, so its passes reach a workbook before any new pass is created.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .audit import (
    UTC_ZONE,
    AuditOptions,
    FileSummary,
    RunSummary,
    audit_path,
    free_path,
    write_audit,
)
from .config import Config
from .errors import ConfigError
from .journal import Journal, RunInfo, RunStatus
from .outcomes import Failed, Issued, Outcome, Skipped, interrupted

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
