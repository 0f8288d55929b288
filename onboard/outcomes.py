"""Records: one row to send, and the three ways a row can end (issued, failed, skipped), with
the Reason for each row that got no pass.

Code decides by a row's Reason (a category); people read its `detail` (free text: what
happened, and what to do). No code ever decides by reading a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum


class Reason(StrEnum):
    """Why a row got no pass: failed (a person must act) or skipped (on purpose). The value is
    the label the audit workbook and the console show; REASON_HELP says what each means and
    what to do (the failure-reason reference is generated from it)."""

    # The sheet
    INVALID = "Invalid row"  # shown "Invalid <column>" when one column is at fault
    CONFLICTING_ROWS = "Conflicting rows"
    MIXED_IDENTIFIERS = "Mixed user identifiers"
    EXTERNAL_GUEST = "External guest user"
    # The directory and the account
    USER_NOT_FOUND = "User not found"
    NO_MATCH = "No user with this value"  # shown "No user with this mail" (input.match_by)
    SEVERAL_MATCHES = "Several users with this value"  # likewise
    LOOKUP_FAILED = "Lookup failed"
    ADMIN_ROLE = "Holds an admin role"
    HAS_METHODS = "Already has sign-in methods"
    ACCOUNT_UNKNOWN = "Could not check the account"
    # The pass policy and passes already held
    POLICY_OFF = "Pass policy turned off"
    LIFETIME_OUTSIDE_POLICY = "Lifetime outside the pass policy"
    MULTI_USE_REFUSED = "Multi-use pass refused by the pass policy"
    OUTSIDE_POLICY = "Outside the pass policy"
    NOT_USABLE = "Pass not usable"
    # ("pass" in these names is the Temporary Access Pass, not a password)
    PASS_ENDS_EARLY = "Holds a pass that ends before the start"  # noqa: S105
    PASS_STARTS_LATER = "Holds a pass that starts after the start"  # noqa: S105
    EXISTING_UNKNOWN = "Could not check for an existing pass"
    PASS_EXISTS = "A pass already exists"  # noqa: S105
    # Graph's answers
    START_IN_PAST = "Start in the past"
    PERMISSION_DENIED = "Permission denied"
    GAVE_UP = "Gave up after retries"
    UNREADABLE_ANSWER = "Unreadable answer from Graph"
    REFUSED = "Refused by Graph"
    NOT_CONFIRMED = "Pass not confirmed"
    # The run
    NOT_SENT = "Not sent: run stopped"
    INTERRUPTED = "Interrupted"
    NOT_FINISHED = "Not finished"
    INTERNAL_ERROR = "Internal error"
    # Skipped (nothing to do)
    BLANK_ROW = "blank row"
    BELOW_THE_DATA = "below the data"
    REPEATED = "repeated row"
    ALREADY_ISSUED = "already issued"
    NOT_YET_DUE = "not yet due"
    HELD_ELSEWHERE = "holds a pass this journal did not issue"

    @property
    def skip(self) -> bool:
        """A reason to skip a row (nothing to do), not a failure."""
        return self in SKIPS


SKIPS = frozenset(
    {
        Reason.BLANK_ROW,
        Reason.BELOW_THE_DATA,
        Reason.REPEATED,
        Reason.ALREADY_ISSUED,
        Reason.NOT_YET_DUE,
        Reason.HELD_ELSEWHERE,
    }
)


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
    # When the sheet says the pass starts (UTC), even once that is past (then `start` is None:
    # usable at once); None when the sheet has no start column.
    intended_start: datetime | None = None
    # The person's object id in the directory, where known (a lookup found it, or the sheet
    # names the person by it): the journal ties passes to the person by it, not by a name.
    object_id: str | None = None
    # The sheet's columns onboard does not use (Manager, Department...), (header, cell as the
    # sheet shows it) in sheet order: carried to the audit so the passes can be handed out
    # without the input file.
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def start_key(self) -> str:
        """What "the same pass" means for re-runs: the instants it starts and ends (UTC), so a
        row moved to another time of day, zone or lifetime is not "the same start"."""
        return window(self.intended_start, self.lifetime_minutes)

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
    reason: Reason
    detail: str
    http_status: int | None = None
    graph_code: str | None = None
    attempts: int = 0
    request_id: str | None = None
    column: str | None = None
    may_have_pass: bool = False  # a request of unknown fate was sent: Graph may hold a pass
    # A pass Graph made that cannot be used (outside the policy's groups): revocable by its id.
    method_id: str | None = None
    # The label when the reason's own is too general: "Invalid Start Date", "No user with this
    # mail". Shown only; code reads `reason`.
    label: str | None = None

    @property
    def shown(self) -> str:
        """The reason as the audit and the console show it."""
        return self.label or self.reason.value

    @property
    def not_sent(self) -> bool:
        """The run stopped before this row's pass was asked for (counted apart from failures)."""
        return self.reason is Reason.NOT_SENT


@dataclass(frozen=True, slots=True)
class Skipped:
    origin: Origin
    user: str
    reason: Reason
    detail: str  # for people: "already issued for this start (...) by run X; ..."
    previous_run: str | None = None  # the run that already issued this user's pass
    issued_at: datetime | None = None

    @property
    def held_elsewhere(self) -> bool:
        """The user holds a pass that no record of this journal (in this tenant) explains:
        nobody here can vouch that its value was handed out. Counted apart, never a success."""
        return self.reason is Reason.HELD_ELSEWHERE


Outcome = Issued | Failed | Skipped


def window(start: datetime | None, lifetime_minutes: int) -> str:
    """A pass's start and end as the journal compares them: "2026-12-10T08:00Z/...T16:00Z"
    (UTC), or "at once/480m" for a row with no start."""
    if start is None:
        return f"at once/{lifetime_minutes}m"
    end = start + timedelta(minutes=lifetime_minutes)
    return f"{_utc(start)}/{_utc(end)}"


def shown_window(key: str) -> str:
    """A recorded window for people: "2026-12-10 08:00–16:00 UTC"."""
    first, _, second = key.partition("/")
    if first == "at once":
        return f"usable at once, {second.removesuffix('m')} minutes"
    if not second:
        return first or "(none)"  # a journal written before windows: the start date only
    start, end = (part.replace("T", " ").removesuffix("Z") for part in (first, second))
    same_day = start[:10] == end[:10]
    return f"{start}–{end[11:]} UTC" if same_day else f"{start} – {end} UTC"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def not_sent(request: PassRequest, cause: str | None = None) -> Failed:
    """A row the run never sent because it stopped (`cause`: why it aborted, if it did)."""
    if cause is not None:
        detail = f"The run stopped before this row got a pass: {cause}. Fix that and run again."
        return Failed(request.origin, request.user, Reason.NOT_SENT, detail)
    earlier = (
        " An earlier, stopped run had sent it, so it may have a pass: the same command "
        "issues a new one, which replaces it."
        if request.prior_attempts
        else ""
    )
    return Failed(
        request.origin,
        request.user,
        Reason.NOT_SENT,
        "The run was stopped before this row was sent. Run the same command again to issue "
        f"it (rows already issued are not sent again).{earlier}",
        attempts=request.prior_attempts,
        may_have_pass=request.prior_attempts > 0,
    )


def refused_before_stop(request: PassRequest, attempts: int) -> Failed:
    """A row waiting to be tried again when the run stopped, whose every request Graph had
    answered without creating a pass (429, 503): it holds no pass from this run."""
    return Failed(
        request.origin,
        request.user,
        Reason.NOT_SENT,
        f"The run stopped while this row waited to be tried again. Graph had answered its "
        f"{attempts} request(s) without creating a pass (throttled or unavailable), so it has "
        "none from this run: run the same command again to issue it.",
        attempts=attempts,
    )


def interrupted(origin: Origin, user: str, attempts: int) -> Failed:
    """A row whose request was in flight when the run stopped: it may or may not have a pass."""
    return Failed(
        origin,
        user,
        Reason.INTERRUPTED,
        "The run stopped while this row's request was in flight; it may or may not have a "
        "pass. Run the same command again: it issues a new pass, which replaces any earlier one.",
        attempts=attempts,
        may_have_pass=True,
    )
