"""What happens to each row before anything is sent: a pure decision, from the row, what the
journal knows (this run before a stop, earlier runs of the same tenant) and the clock.

    Keep        the row was finished by this run before a stop: its outcome (and pass) stands
    Skip        already issued for the same start and end, or not yet due
    CheckFirst  an earlier pass for the same start may have been replaced at Graph: ask first
    Send        send it (with a note, and the flags the later stages read)

Nothing here reads the network or writes the journal: `onboard validate` uses the same
decisions as `onboard run`, without recording them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from .errors import ConfigError
from .journal import REDECIDE, Person, PreviousPass, RowRecord, RowState
from .outcomes import Failed, Origin, Outcome, PassRequest, Reason, Skipped, shown_window
from .reader import user_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Keep:
    """Finished by this run before it stopped: kept as it was, pass value included."""

    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Skip:
    outcome: Skipped
    not_yet_due: bool = False


@dataclass(frozen=True, slots=True)
class CheckFirst:
    """The earlier pass for the same start may no longer stand: ask Graph which it holds."""

    request: PassRequest
    previous: PreviousPass


@dataclass(frozen=True, slots=True)
class Send:
    request: PassRequest


Decision = Keep | Skip | CheckFirst | Send


@dataclass(frozen=True, slots=True)
class Options:
    due_within_days: int | None = None
    reissue: bool = False  # --reissue: every row again
    reissue_users: frozenset[str] = frozenset()  # --reissue-user, casefolded
    existing: str = "skip"  # pass.existing: skip | replace


@dataclass(frozen=True, slots=True)
class History:
    """What the journal knows that bears on the rows: this run's rows (when it is resumed),
    and per person the last pass earlier runs of the same tenant issued, and whether one of
    them sent a request of unknown fate."""

    this_run: Mapping[Origin, RowRecord]
    previous: Mapping[Person, PreviousPass | None]
    unsettled: frozenset[Person] = frozenset()
    # An earlier run of this tenant issued passes: a row the journal cannot tie to a person by
    # name may still be one of them (a renamed user, a sheet of object ids after UPNs).
    issued_before: bool = False


def finished(state: RowRecord | None) -> bool:
    """A row this run already finished (before a stop): its outcome stands."""
    return state is not None and state.outcome is not None and state.state not in REDECIDE


def decide(request: PassRequest, history: History, now: datetime, options: Options) -> Decision:
    """What happens to one row (see the module's docstring)."""
    earlier = history.this_run.get(request.origin)
    if earlier is not None and finished(earlier):
        assert earlier.outcome is not None
        # An 'unclear' pass stays flagged and is checked with Graph before this run finishes.
        return Keep(earlier.outcome)
    sent_before = earlier is not None and (
        earlier.state in (RowState.IN_FLIGHT, RowState.INTERRUPTED)
        or (earlier.state is RowState.NOT_SENT and earlier.may_have_pass)
    )
    if earlier is not None and sent_before:
        # Its request may still be at Graph: send again, then check which pass Graph holds.
        note = (
            "issued again: the previous run stopped while this request was in flight (the new "
            "pass replaces any it created)"
        )
        return Send(
            replace(request, note=_join(request.note, note), prior_attempts=earlier.attempts)
        )
    person = Person.of(request)
    previous = history.previous.get(person)
    wanted = options.reissue or request.key in options.reissue_users
    same = previous is not None and previous.start_key == request.start_key
    if previous is not None and same and not wanted:
        if previous.stands:
            return Skip(already_issued(request, previous, confirmed=False))
        return CheckFirst(request, previous)
    due = options.due_within_days
    if due is not None and request.start is not None and request.start > now + timedelta(days=due):
        assert request.start_date is not None
        reason = (
            f"not yet due: starts {request.start_date.isoformat()}, more than {due} days "
            "ahead; a later run issues it"
        )
        if previous is not None and not same:
            reason += (
                f". The start moved from {shown_window(previous.start_key)}: the pass run "
                f"{previous.run_id} issued for it "
                + ("stays valid until then" if previous.stands else "may still be valid")
            )
        return Skip(
            Skipped(request.origin, request.user, Reason.NOT_YET_DUE, reason), not_yet_due=True
        )
    if previous is not None:
        if wanted:
            why = "issued again on request (--reissue" + ("" if options.reissue else "-user") + ")"
        else:
            why = (
                f"start moved from {shown_window(previous.start_key)} to "
                f"{shown_window(request.start_key)}"
            )
        note = f"{why}: this pass replaces the one run {previous.run_id} issued"
        request = replace(request, note=_join(request.note, note))
    # Graph may still be handling an earlier run's request for this person: either after its
    # audited pass (then that pass does not stand) or with no audited pass at all.
    doubtful = not previous.stands if previous is not None else person in history.unsettled
    if doubtful:
        note = (
            "an earlier run's request for this user may still land at Graph: checked with Graph "
            "after this one"
        )
        return Send(replace(request, note=_join(request.note, note), doubtful=True))
    if previous is None and not wanted and (options.existing == "skip" or history.issued_before):
        # A pass may be in force: from elsewhere (kept under skip), or this journal's own under
        # another name (found by its method id: never a second pass for one person).
        return Send(replace(request, ask_existing=True))
    return Send(request)


@dataclass(slots=True)
class Sorted:
    """Every row decided: those to send now, those to decide once Graph has said which pass it
    holds, and the outcome of each of the others (kept, skipped)."""

    send: list[PassRequest] = field(default_factory=list)
    check: list[CheckFirst] = field(default_factory=list)
    decided: list[Outcome] = field(default_factory=list)
    not_yet_due: int = 0


def decide_all(
    requests: Sequence[PassRequest], history: History, now: datetime, options: Options
) -> Sorted:
    """`decide` for each row, sorted by what comes next."""
    found = Sorted()
    for request in requests:
        decision = decide(request, history, now, options)
        if isinstance(decision, Keep):
            found.decided.append(decision.outcome)
        elif isinstance(decision, Skip):
            found.not_yet_due += decision.not_yet_due
            found.decided.append(decision.outcome)
        elif isinstance(decision, CheckFirst):
            found.check.append(decision)
        else:
            found.send.append(decision.request)
    return found


def already_issued(request: PassRequest, previous: PreviousPass, *, confirmed: bool) -> Skipped:
    how = " (confirmed with Graph)" if confirmed else ""
    return Skipped(
        request.origin,
        request.user,
        Reason.ALREADY_ISSUED,
        f"already issued for this start ({shown_window(request.start_key)}) by run "
        f"{previous.run_id}{how}; use --reissue-user to replace it",
        previous.run_id,
        previous.issued_at,
    )


def settle_wait(
    last_sent: datetime | None,
    now: datetime,
    settle_seconds: float,
    sent_ago: float | None = None,
) -> float:
    """Seconds still to wait before a check with Graph can be trusted: until settle_seconds
    after the last request of unknown fate was sent. Sent in this boot, that is measured by the
    monotonic clock (`sent_ago`), which no step of the wall clock moves; otherwise by the wall
    clock, and one that reads earlier than the send (stepped back) waits the whole time."""
    if sent_ago is not None:
        return settle_seconds if sent_ago < 0 else max(0.0, settle_seconds - sent_ago)
    if last_sent is None:
        return 0.0
    elapsed = (now - last_sent).total_seconds()
    if elapsed < 0:
        return settle_seconds
    return max(0.0, settle_seconds - elapsed)


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


@dataclass(slots=True)
class Named:
    """The users --reissue-user and --allow-user name, as the sheet does. A name that is in no
    row is a typo: the run stops before anything is sent."""

    reissue: set[str]
    allow: frozenset[str]
    anywhere: set[str] = field(default_factory=set)

    @classmethod
    def check(
        cls,
        match_by: str,
        requests: Sequence[PassRequest],
        checked: Sequence[Failed | Skipped],
        reissue_users: Collection[str],
        allow_users: Collection[str],
    ) -> Named:
        named = cls(
            {user_key(u) for u in reissue_users}, frozenset(user_key(u) for u in allow_users)
        )
        sendable = {r.key for r in requests}
        named.anywhere = sendable | {user_key(o.user) for o in checked if o.user}
        # Under match_by mail / employeeId a UPN is known only after the lookup: checked then.
        sure = {u for u in named.reissue if match_by == "upn" or "@" not in u}
        _check_named("--reissue-user", sure, named.anywhere)
        sure = {u for u in named.allow if match_by == "upn" or "@" not in u}
        _check_named("--allow-user", sure, named.anywhere)
        for name in sorted(named.reissue - sendable):
            log.warning(
                "--reissue-user %s: that user's rows failed their checks; nothing to send", name
            )
        return named

    def found(
        self, rows: Sequence[PassRequest], failed: Sequence[Failed | Skipped]
    ) -> frozenset[str]:
        """--reissue-user names people as the sheet does; found by mail or employee id, they
        are now known by their UPN (and a name that matched nobody is a typo after all)."""
        self.reissue |= {
            r.key for r in rows if r.sheet_value and r.sheet_value.casefold() in self.reissue
        }
        known = self.anywhere | {r.key for r in rows} | {user_key(o.user) for o in failed}
        _check_named("--reissue-user", self.reissue, known)
        return frozenset(self.reissue)


def _check_named(option: str, wanted: set[str], named: set[str]) -> None:
    """Stop (before anything is sent) when an option names a user who is in no row: a typo."""
    unknown = wanted - named
    if unknown:
        raise ConfigError(
            f"{option} names no row of the input: {', '.join(sorted(unknown))} (name each user "
            "as the sheet does, or by the UPN a mail or employee id lookup finds)"
        )
