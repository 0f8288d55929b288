"""Where each row's outcome goes: the run's report, its journal, and the progress shown.

RunRows is also the pool's Sink (pool.py): while passes are being issued the journal writes are
grouped (Journal.writer), and a 409 is read as checks.on_conflict says. A row sent and not yet
answered stays `pending`: if the run crashes, it still gets its outcome (`crashed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .checks import on_conflict
from .errors import AuthError, JournalWriteError
from .graph import GraphClient
from .journal import Journal, RunStatus
from .outcomes import Failed, Issued, Origin, Outcome, PassRequest, Reason, Skipped, not_sent
from .report import RunReport, StopCause

log = logging.getLogger("onboard.job")  # the rows' lines, as a run has always logged them
OnOutcome = Callable[[Outcome], None]


class RunRows:
    """Every row's outcome goes three places at once: the report, the journal, the progress.

    It is the pool's Sink too: while passes are being issued, journal writes are grouped (the
    journal's RowWriter) and a 409 is read as checks.on_conflict says. `pending` holds the rows
    to send that have no outcome yet: a crash gives each an outcome all the same.
    """

    def __init__(
        self,
        report: RunReport,
        journal: Journal,
        client: GraphClient,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self.report = report
        self.journal = journal
        self.client = client
        self.on_outcome = on_outcome
        self.writer = journal.writer(report.run_id)
        self.pending: dict[Origin, PassRequest] = {}
        self.sent: set[Origin] = set()  # rows this run sent a create for

    def add(self, outcome: Outcome, *, progress: bool = True, later: bool = False) -> None:
        """One row's outcome: logged, journalled (now, or with the next group), reported."""
        _log(outcome)
        self.pending.pop(outcome.origin, None)
        self.writer.add(outcome)
        if not later:
            self.writer.flush()
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

    # pool.Sink: the pool logs its own outcomes
    def sending(self, request: PassRequest) -> None:
        self.sent.add(request.origin)
        self.pending[request.origin] = request
        self.writer.add(request)

    def outcome(self, outcome: Outcome, *, again: bool = False) -> None:
        outcome = on_conflict(outcome, self.pending.get(outcome.origin))
        self.pending.pop(outcome.origin, None)
        self.writer.add(outcome)
        r = self.report
        if again:
            r.issued = [i for i in r.issued if i.origin != outcome.origin]
            r.failed = [f for f in r.failed if f.origin != outcome.origin]
        if isinstance(outcome, Issued):
            r.issued.append(outcome)
        elif isinstance(outcome, Failed):
            r.failed.append(outcome)
        else:
            r.skipped.append(outcome)
        if not again and self.on_outcome is not None:
            self.on_outcome(outcome)

    async def durable(self) -> None:
        await self.writer.durable()

    def flush(self) -> None:
        self.writer.flush()

    def unconfirmed(self) -> list[Issued]:
        return [i for i in self.report.issued if i.unconfirmed]


def crashed(rows: RunRows, exc: BaseException) -> None:
    """The run stops on `exc` once passes may exist: every row still pending gets its outcome
    (it may hold a pass if its request went), and the report says why."""
    cause = _cause(exc)
    aborted = isinstance(exc, AuthError)
    rows.report.stop(StopCause(RunStatus.ABORTED if aborted else RunStatus.CRASHED,
                               str(exc) if aborted else cause))  # fmt: skip
    # A journal that cannot be written gets no more writes: the audit gets them all.
    broken = isinstance(exc, JournalWriteError)
    for r in list(rows.pending.values()):
        sent = r.origin in rows.sent or r.prior_attempts > 0 or r.doubtful
        rows.replace(_unfinished(r, cause) if sent else not_sent(r, cause), later=broken)


def _unfinished(request: PassRequest, cause: str) -> Failed:
    """A row whose create was sent when the run stopped on `cause`: it may hold a pass."""
    return Failed(
        request.origin,
        request.user,
        Reason.NOT_FINISHED,
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


def _log(outcome: Outcome) -> None:
    """A row's line in the log (--log-file gets at least one per row)."""
    where = f"{outcome.origin.source} row {outcome.origin.row}"
    if isinstance(outcome, Issued):  # kept from before the run was stopped and resumed
        log.info("%s %s: pass issued before the run stopped (kept)", where, outcome.request.user)
    elif isinstance(outcome, Failed):
        log.warning("%s %s: %s: %s", where, outcome.user or "-", outcome.shown, outcome.detail)
    elif isinstance(outcome, Skipped):
        log.info("%s %s: skipped: %s", where, outcome.user or "-", outcome.detail)
