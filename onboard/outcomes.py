"""Records: one row to send, and the three ways a row can end (issued, failed, skipped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(frozen=True, slots=True, order=True)
class Origin:
    """Where a row came from: the input file's name and its spreadsheet row (header = row 1)."""

    source: str
    row: int


@dataclass(frozen=True, slots=True)
class PassRequest:
    """A validated row, ready to send to Graph."""

    origin: Origin
    user: str
    display_name: str | None
    start: datetime | None  # UTC; None means usable at once
    lifetime_minutes: int
    usable_once: bool
    note: str = ""
    start_date: date | None = None  # the start date as the sheet gave it (local)
    prior_attempts: int = 0  # sends made for this row by an earlier, stopped invocation
    doubtful: bool = False  # an earlier run's request for this user may still land at Graph
    # What the sheet named the person by when it is not the UPN (input.match_by mail or
    # employeeId): kept for the audit; `user` is the UPN the directory returned for it.
    sheet_value: str | None = None
    # pass.existing is skip and nothing in the journal speaks for this user: ask Graph for a
    # pass already in force before creating one.
    ask_existing: bool = False
    # The sheet's header for each field it had (field, header): for messages naming a column.
    headers: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    # The sheet's columns onboard does not use (Manager, Department...), (header, cell as the
    # sheet shows it) in sheet order: carried to the audit so the passes can be handed out
    # without the input file.
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def start_key(self) -> str:
        """What "the same start" means for re-runs: the start date from the sheet."""
        return self.start_date.isoformat() if self.start_date else ""

    def header(self, field_name: str) -> str | None:
        """The sheet's header of a field (user, mail, lifetime_minutes...), None if it had none."""
        return next((h for f, h in self.headers if f == field_name), None)

    @property
    def key(self) -> str:
        """The identity used to keep one request per user (UPNs are case-insensitive)."""
        return self.user.casefold()


@dataclass(frozen=True, slots=True)
class Issued:
    request: PassRequest
    temporary_access_pass: str = field(repr=False)
    method_id: str
    starts: datetime
    expires: datetime
    lifetime_minutes: int
    usable_once: bool
    created: datetime | None
    attempts: int
    request_id: str | None
    note: str = ""
    # An attempt's answer was lost, so a slower request may still replace this pass at Graph:
    # it must be checked against what Graph holds before it is trusted.
    unconfirmed: bool = False

    @property
    def origin(self) -> Origin:
        return self.request.origin


@dataclass(frozen=True, slots=True)
class Failed:
    origin: Origin
    user: str
    reason: str
    detail: str
    http_status: int | None = None
    graph_code: str | None = None
    attempts: int = 0
    request_id: str | None = None
    column: str | None = None
    may_have_pass: bool = False  # a request of unknown fate was sent: Graph may hold a pass


@dataclass(frozen=True, slots=True)
class Skipped:
    origin: Origin
    user: str
    reason: str
    previous_run: str | None = None  # the run that already issued this user's pass
    issued_at: datetime | None = None
    # The user holds a pass that no journal record explains: counted apart in the audit.
    held_elsewhere: bool = False


Outcome = Issued | Failed | Skipped

NOT_SENT = "Not sent: run stopped"
INTERRUPTED = "Interrupted"


def not_sent(request: PassRequest, cause: str | None = None) -> Failed:
    """A row the run never sent because it stopped (`cause`: why it aborted, if it did)."""
    if cause is not None:
        detail = f"The run stopped before this row got a pass: {cause}. Fix that and run again."
        return Failed(request.origin, request.user, NOT_SENT, detail)
    earlier = (
        " An earlier, stopped run had sent it, so it may have a pass: the same command "
        "issues a new one, which replaces it."
        if request.prior_attempts
        else ""
    )
    return Failed(
        request.origin,
        request.user,
        NOT_SENT,
        "The run was stopped before this row was sent. Run the same command again to issue "
        f"it (rows already issued are not sent again).{earlier}",
        attempts=request.prior_attempts,
        may_have_pass=request.prior_attempts > 0,
    )


def interrupted(origin: Origin, user: str, attempts: int) -> Failed:
    """A row whose request was in flight when the run stopped: it may or may not have a pass."""
    return Failed(
        origin,
        user,
        INTERRUPTED,
        "The run stopped while this row's request was in flight; it may or may not have a "
        "pass. Run the same command again: it issues a new pass, which replaces any earlier one.",
        attempts=attempts,
        may_have_pass=True,
    )
