"""What a run did: every row's outcome, and how the run ended (RunStatus, with a typed cause).

`onboard.run` returns a RunReport; the CLI prints it and maps it to an exit code, the audit
workbook is written from it. Deciding code reads its values (RunStatus, the outcomes' Reason),
never its text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import __version__
from .audit import FileSummary, Note, RunSummary
from .deliver import DeliveryReport
from .journal import RunStatus
from .outcomes import Failed, Issued, Skipped
from .rate import Budget, Pacing
from .reader import InputFile
from .tenant import Tenant


@dataclass(frozen=True, slots=True)
class StopCause:
    """Why a run ended early: its status (STOPPED, ABORTED or CRASHED) and, for people, why."""

    status: RunStatus
    detail: str = ""

    def __str__(self) -> str:
        if self.status is RunStatus.ABORTED:
            return f"aborted: {self.detail}"
        if self.status is RunStatus.CRASHED:
            return f"crashed ({self.detail})"
        return self.status.value


STOPPED = StopCause(RunStatus.STOPPED)
# The phase job.run reports (on_phase) last, once every row's outcome is in the journal.
WRITING_AUDIT = "writing the audit workbook"

__all__ = ["STOPPED", "WRITING_AUDIT", "RunReport", "RunStatus", "StopCause"]


@dataclass(slots=True)
class RunReport:
    """One run: its rows' outcomes, what it read and wrote, and how it ended."""

    run_id: str
    started: datetime
    finished: datetime | None = None
    files: list[InputFile] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    audit_path: Path | None = None
    stopped: StopCause | None = None  # why the run stopped early, if it did
    resumed: bool = False  # this run continues one that was killed before it finished
    not_yet_due: int = 0
    retries: int = 0
    pacing: Pacing | None = None  # how fast requests went, per budget: 429s, time paused
    notes: list[tuple[str, str]] = field(default_factory=list)
    tenant: Tenant | None = None  # the tenant the run signed in to
    # What the operator must hear though no row failed (a check that could not be made, a
    # certificate about to expire): the run exits 1, so cron's mail goes out.
    attention: list[str] = field(default_factory=list)
    delivery: DeliveryReport | None = None  # delivery by mail (or its preview), when asked for

    @property
    def status(self) -> RunStatus:
        return RunStatus.COMPLETED if self.stopped is None else self.stopped.status

    def stop(self, cause: StopCause) -> None:
        """Record why the run ended early; the first cause stands."""
        if self.stopped is None:
            self.stopped = cause

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

    def summary(
        self, settings: Sequence[tuple[str, str | int | float | bool]], timezone: str
    ) -> RunSummary:
        """The audit workbook's Summary sheet: the run, its files and settings, its notes."""
        notes: list[Note] = [
            ("Tenant", self.tenant.describe() if self.tenant else "-"),
            *(("Needs attention", line) for line in self.attention),
            *self.notes,
            ("Not yet due", self.not_yet_due),
            ("Retries", self.retries),
            *_rate_notes(self.pacing),
            *self._delivery_notes(),
        ]
        assert self.finished is not None
        return RunSummary(
            run_id=self.run_id,
            started=self.started,
            finished=self.finished,
            version=__version__,
            files=[FileSummary(str(f.path), f.sha256, f.row_count, f.sheet) for f in self.files],
            settings=settings,
            status=str(self.stopped or RunStatus.COMPLETED),
            notes=notes,
            timezone=timezone,
            simulated=self.simulated,
        )

    def _delivery_notes(self) -> list[Note]:
        """Delivery's lines on the Summary (none when it was not asked for)."""
        if self.delivery is None:
            return []
        return self.delivery.notes(self.pacing.mail if self.pacing else None)


def _rate_notes(pacing: Pacing | None) -> list[Note]:
    """How close to Graph's limits the run went, for the Summary sheet (numbers as numbers):
    creates against the write budget, reads against the resource units."""
    if pacing is None:
        return [("429 answers", 0)]
    writes, reads = pacing[Budget.WRITES], pacing[Budget.READS]
    effective = writes.effective_rate
    return [
        ("Requests to Graph", pacing.requests),
        ("Writes to Graph", writes.requests),
        ("Effective write rate", "-" if effective is None else round(effective, 1), "requests/s"),
        ("Write rate ceiling (run.max_rate)", writes.max_rate, "requests/s"),
        ("Read rate ceiling (run.max_read_rate)", reads.max_rate, "resource units/s"),
        ("429 answers", pacing.throttles),
        ("429 answers on the write budget", writes.throttles),
        ("429 answers on the resource-unit budget", reads.throttles),
        ("Throttle warnings (x-ms-throttle-limit-percentage)", writes.warnings + reads.warnings),
        ("Time paused by Retry-After (writes)", round(writes.paused_seconds, 1), "s"),
        ("Time paused by Retry-After (reads)", round(reads.paused_seconds, 1), "s"),
    ]
