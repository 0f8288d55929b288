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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .journal import REDECIDE, Person, PreviousPass, RowRecord, RowState
from .outcomes import Origin, Outcome, PassRequest, Reason, Skipped, shown_window

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
