"""Records: one row to send, and the three ways a row can end (issued, failed, skipped), with
the Reason for each row that got no pass.

Code decides by a row's Reason (a category); people read its `detail` (free text: what
happened, and what to do). No code ever decides by reading a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum


class Reason(StrEnum):
    """Why a row got no pass: failed (a person must act) or skipped (on purpose). The value is
    the label the audit workbook and the console show; REASON_HELP says what each means and
    what to do (the failure-reason reference is generated from it)."""

    # The sheet
    INVALID = "Invalid row"  # these three are shown narrowed: REASON_HELP[...].label
    CONFLICTING_ROWS = "Conflicting rows"
    MIXED_IDENTIFIERS = "Mixed user identifiers"
    EXTERNAL_GUEST = "External guest user"
    # The directory and the account
    USER_NOT_FOUND = "User not found"
    NO_MATCH = "No user with this value"
    SEVERAL_MATCHES = "Several users with this value"
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

    @property
    def help(self) -> ReasonHelp:
        """What this reason means and what to do about it."""
        return REASON_HELP[self]

    def labelled(self, what: str) -> str:
        """The label for this reason narrowed to a column or a field ("Invalid Start Date",
        "No user with this mail"), from its help's label; the reason's own if it has none."""
        label = REASON_HELP[self].label
        return _PLACEHOLDER.sub(lambda _: what, label, count=1) if label else self.value


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


@dataclass(frozen=True, slots=True)
class ReasonHelp:
    """What a reason means and what to do about it, one line each, for people (the audit shows
    the reason; its Detail says what happened to the row). `label`: the label shown when the
    reason is narrowed to one column or field, its placeholder in angle brackets ("Invalid
    <column>"); the reference lists it in place of the reason's own."""

    meaning: str
    action: str
    label: str = ""


_PLACEHOLDER = re.compile(r"<[^>]+>")

# Said once, here: docs/generate.py writes the failure-reason reference from it, and
# tests/test_docs.py fails while a reason has no help or the committed page differs.
REASON_HELP: dict[Reason, ReasonHelp] = {
    # The sheet
    Reason.INVALID: ReasonHelp(
        "a cell could not be read (not an address, a date that reads two ways or none, a"
        " lifetime that is not whole minutes...), or holds an Excel error (`#N/A`, `#VALUE!`,"
        " `#REF!`...); shown `Invalid row` when several columns are at fault; Detail names the"
        " column, the value and, for an error, what it means",
        "fix the cell (or set `input.date_order`); for an error, the formula or what it looks up"
        " (a `#N/A` lookup: the hire is not in the list it reads yet), then run that row again",
        label="Invalid <column>",
    ),
    Reason.CONFLICTING_ROWS: ReasonHelp(
        "the same user appears in several rows (of one file or of several) with different"
        " start, lifetime or one-time values; a user can hold only one pass, so each of those"
        " rows fails",
        "keep one row, then run again",
    ),
    Reason.MIXED_IDENTIFIERS: ReasonHelp(
        "the run names some users by object id and others by UPN, so onboard cannot tell"
        " whether two rows are the same person (two passes for one user would leave only the"
        " later one valid); the rows that give an object id fail",
        "use UPNs (or object ids) throughout",
    ),
    Reason.EXTERNAL_GUEST: ReasonHelp(
        "an external guest, that is an invited account (`#EXT#` in the UPN, or `creationType`"
        " Invitation / an `externalUserState` in the directory), cannot get a pass: Graph"
        ' answers *"Temporary Access Pass cannot be added to an external guest user."* An'
        " internal guest (`userType` Guest, never invited) can, and gets one. Checked before any"
        " create when the UPN has `#EXT#` or the person is looked up; otherwise it is Graph's"
        " answer",
        "none in onboard: external guests sign in with their home organisation's credentials",
    ),
    # The directory and the account
    Reason.USER_NOT_FOUND: ReasonHelp(
        "no such user: Graph answered 404 (or `validate --online` did not find them)",
        "check the spelling; or the account is not created yet: run again later",
    ),
    Reason.NO_MATCH: ReasonHelp(
        "`input.match_by` is mail or employeeId, and nobody in the directory has that value;"
        " shown `No user with this mail` or `No user with this employee id`",
        "fix the sheet, or set the account's mail / employee id, then run again",
        label="No user with this <field>",
    ),
    Reason.SEVERAL_MATCHES: ReasonHelp(
        "`input.match_by` is mail or employeeId, and more than one account has that value"
        " (Detail lists their UPNs); shown `Several users with this mail` or `...employee id`",
        "give that person's UPN instead (a sheet with `input.match_by: upn`), or make the value"
        " unique in the directory",
        label="Several users with this <field>",
    ),
    Reason.LOOKUP_FAILED: ReasonHelp(
        "the directory search itself failed (Detail has Graph's answer; usually `User.Read.All`"
        " is missing), or it returned the user without a UPN",
        "grant `User.Read.All` with admin consent, or run again later",
    ),
    Reason.ADMIN_ROLE: ReasonHelp(
        "the user holds a directory role: a pass for an administrator is not issued from a sheet"
        " (anyone who can edit it could take over the account)",
        "check the sheet; if it is deliberate, run again with `--allow-user UPN` (recorded in the"
        " audit)",
    ),
    Reason.HAS_METHODS: ReasonHelp(
        "the user already has Authenticator, a FIDO2 key, Windows Hello, a phone or an"
        " authenticator app code: not a new hire, and a pass would let whoever holds it register"
        " their own methods on the account",
        "check the sheet; if it is deliberate (a lost phone), run again with `--allow-user UPN`"
        " (recorded in the audit)",
    ),
    Reason.ACCOUNT_UNKNOWN: ReasonHelp(
        "Graph would not list the user's roles or sign-in methods (after retries), so no pass"
        " was created (an app that lacks the permission for every user is not this: the check"
        " is skipped and the run says so)",
        "run again later",
    ),
    # The pass policy and passes already held
    Reason.POLICY_OFF: ReasonHelp(
        "(`validate --online` only; `run` stops with exit 3) the tenant's pass policy is disabled",
        "Entra admin center > Entra ID > Authentication methods > Policies > Temporary Access"
        " Pass: enable it",
    ),
    Reason.LIFETIME_OUTSIDE_POLICY: ReasonHelp(
        "the lifetime is outside the tenant policy's min..max: checked before sending (Detail"
        " names the range, and the column or `pass.lifetime_minutes`), or, when onboard could not"
        " read the policy, Graph's *\"Invalid LifetimeInMinutes specified. The valid range"
        ' between 60 and 480."*',
        "use a lifetime inside the range, or widen the policy",
    ),
    Reason.MULTI_USE_REFUSED: ReasonHelp(
        "the policy allows only one-time passes (checked before sending when the policy can be"
        " read; Graph's own refusal has no documented text and shows as `Refused by Graph`)",
        "set One-time to yes (or `pass.usable_once: true`)",
    ),
    Reason.OUTSIDE_POLICY: ReasonHelp(
        "the user is not in a group the pass policy targets (or is in one it excludes): Graph"
        " still creates a pass, but says nobody can sign in with it (`isUsable: false`,"
        ' `DisabledByPolicy`), so the row fails, not issued. Detail begins "Outside the pass'
        " policy's groups: the pass cannot be used\" and gives that pass's method id (its value"
        ' is never kept). Or Graph refused the create with *"Converged UserCredentialPolicy does'
        ' not allow..."*: the policy is turned off',
        "add a group the user is in to the policy's targets (Entra ID > Authentication methods >"
        " Policies > Temporary Access Pass), then run again with `--reissue-user UPN` (the new"
        " pass replaces the unusable one); or turn the policy on",
    ),
    Reason.NOT_USABLE: ReasonHelp(
        "Graph created a pass but says it cannot be used for another reason (`Expired`,"
        " `OneTimeUsed`, or `isUsable: false`); Detail gives the reason and the pass's method id",
        "run again with `--reissue-user UPN`",
    ),
    Reason.PASS_ENDS_EARLY: ReasonHelp(
        "`pass.existing: skip`: the user holds a pass this journal did not issue, valid now or"
        " soon (someone may be using it), but it ends before this row's start, so it is no use on"
        " day one; it was not replaced",
        "once it is no longer needed, run again with `--reissue-user` for this user",
    ),
    Reason.PASS_STARTS_LATER: ReasonHelp(
        "`pass.existing: skip`: the user holds a pass this journal did not issue that starts"
        " after this row's start, so the hire has no usable pass on day one; it was not replaced,"
        " as someone may have handed it out",
        "if the sheet's start is right, run again with `--reissue-user` for this user (the new"
        " pass replaces it)",
    ),
    Reason.EXISTING_UNKNOWN: ReasonHelp(
        "`pass.existing: skip`, and Graph would not list the user's current pass, so none was"
        " created",
        "run again later; or `pass.existing: replace`",
    ),
    Reason.PASS_EXISTS: ReasonHelp(
        "409 (older Graph behaviour): the user holds a valid pass, and this row was meant to"
        " replace it (`pass.existing: replace`, `--reissue-user`); or an earlier request for"
        " this row may have created it and its answer was lost (Detail says so: nobody has that"
        " pass's value). Under `skip`, a 409 to the row's only request is a skipped row instead",
        "delete it in the portal (or wait for it to expire), then run again with `--reissue-user`",
    ),
    # Graph's answers
    Reason.START_IN_PAST: ReasonHelp(
        'Graph\'s *"Invalid StartDateTime specified. It can not be a time in the past."* (a'
        ' start already past is sent as "usable at once", so this machine\'s clock may be'
        " wrong)",
        "check the date, `pass.timezone` and the clock",
    ),
    Reason.PERMISSION_DENIED: ReasonHelp(
        "403 (or 401): the app lacks the permission or its admin consent",
        "grant `UserAuthMethod-TAP.ReadWrite.All` (or `UserAuthenticationMethod.ReadWrite.All`)"
        " with admin consent",
    ),
    Reason.GAVE_UP: ReasonHelp(
        "429, 5xx or no answer in time, for `run.max_attempts` attempts",
        "nothing wrong with the row: run it again later (a new pass replaces any that an attempt"
        " whose answer was lost created)",
    ),
    Reason.UNREADABLE_ANSWER: ReasonHelp(
        "Graph's answer (or a proxy's) was larger than any Graph sends (1 MB, 4 MB for a page or"
        " a `$batch`), so it was not read",
        "nothing wrong with the row; if the answer was to a create, the user may hold a pass"
        " nobody has: run again with `--reissue-user`",
    ),
    Reason.REFUSED: ReasonHelp(
        "any other definite answer. Reasons are chosen by Graph's status and error code; Graph's"
        " message picks one only for the refusals above that Graph answers with a generic 400,"
        " by their documented text. Detail reads \"Refused by Graph: *Graph's message* (HTTP"
        ' status, code)"',
        "act on the message",
    ),
    Reason.NOT_CONFIRMED: ReasonHelp(
        "after several tries Graph still held a different pass than the one it returned",
        "run the row again",
    ),
    # The run
    Reason.NOT_SENT: ReasonHelp(
        "the run was stopped (a signal) or aborted (sign-in) before this row was sent, or while"
        " it waited to be tried again after Graph answered without creating a pass (429, 503);"
        " counted apart from failures on the Summary",
        "fix the cause if any; run the same command again (rows already issued are not sent again)",
    ),
    Reason.INTERRUPTED: ReasonHelp(
        "the run was stopped while this row's request was in flight past the grace time, or"
        " killed: it may or may not have a pass",
        "run the same command again (a new pass replaces any earlier one)",
    ),
    Reason.NOT_FINISHED: ReasonHelp(
        "the run stopped after this row's request was sent (a bug in onboard, sign-in failing,"
        " or a run journal that cannot be written; Detail says which): it may or may not have a"
        " pass",
        "fix the cause (for a bug: report it), then run it again (a new pass replaces any"
        " earlier one)",
    ),
    Reason.INTERNAL_ERROR: ReasonHelp(
        "a bug in onboard stopped this row (Detail names the error's type, never its message)",
        "run it again; report the bug",
    ),
    # Skipped: the Skipped sheet's Reason column holds the row's detail, which begins as shown
    Reason.BLANK_ROW: ReasonHelp("every cell of the row is empty: `blank row`", "nothing"),
    Reason.BELOW_THE_DATA: ReasonHelp(
        "a line under the hires that reads as a total or a note: `below the data (a total or a"
        " note): '...'`",
        "nothing",
    ),
    Reason.REPEATED: ReasonHelp(
        "the same user, start, lifetime and one-time value as an earlier row: `same as row N`"
        " (or `same as <file> row N`); one pass serves both",
        "nothing",
    ),
    Reason.ALREADY_ISSUED: ReasonHelp(
        "an earlier run issued this user's pass for the same start: `already issued for this"
        " start (...) by run ...`, with Previous run and Issued at",
        "nothing; to replace that pass, run again with `--reissue-user UPN`",
    ),
    Reason.NOT_YET_DUE: ReasonHelp(
        "with `--due-within DAYS` (`run.due_within_days`), a row that starts further ahead:"
        " `not yet due: starts ...`; counted on the Summary",
        "nothing: a later run issues it",
    ),
    Reason.HELD_ELSEWHERE: ReasonHelp(
        "`pass.existing: skip`: the user holds a pass in force that no record of this journal"
        " explains: `holds a pass created ... that this journal did not issue (usable now | not"
        " yet valid, ends ...)` (the 409 variant says so). It was kept, and is counted apart,"
        " never as a success (exit 1); the sheet's last column says yes",
        "if nobody handed it out (a run whose journal was lost, say), run again with"
        " `--reissue-user UPN` or `pass.existing: replace` to replace it",
    ),
}


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
