"""After the run: how each pass a run issued stands at Graph (`onboard status`), and taking a
run's passes back (`onboard revoke`).

Both work from what the journal keeps of a run for ever (each pass's method id, start and
expiry, never its value), and only for the tenant the config signs in to: a run of another
tenant is refused. Reads spend the resource-unit budget and deletes the write budget, through
the client's own pacing, as a run's reads and creates do.

A DELETE names the very method id the run issued, so a pass issued since (another id) is never
touched, whatever happens between looking and deleting. Each deletion is journaled before it
is sent and again when it is answered: a revoke killed part-way and run again sends nothing
for a pass already deleted, and asks Graph about the one that was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from .audit import SIMULATED, free_path, write_table
from .config import Config
from .connect import connect, unless_stopped
from .errors import ConfigError, GraphError
from .files import check_output_dir
from .graph import (
    DISABLED_BY_POLICY,
    ENABLED_BY_POLICY,
    EXPIRED,
    NOT_YET_VALID,
    ONE_TIME_USED,
    GraphClient,
    HeldPass,
    RegisteredMethod,
    strong_methods,
)
from .journal import (
    REVOKED_FOR_GOOD,
    Journal,
    RecordedPass,
    RevokeState,
    RowState,
    RunInfo,
)
from .rate import Pacing
from .retrying import Retries, is_unclear, retries_for, with_retries
from .runner import ask_all, run_each
from .tenant import Tenant

log = logging.getLogger(__name__)


class PassState(StrEnum):
    """How a pass a run issued stands at Graph now (`onboard status`, its JSON and workbook)."""

    NOT_YET_VALID = "not yet valid"
    USABLE = "usable"
    USED = "used"  # a one-time pass someone signed in with
    EXPIRED = "expired"
    REPLACED = "replaced"  # Graph holds another pass than the one the run issued
    REMOVED = "removed"  # Graph holds no pass any more, and this one had not expired


# methodUsabilityReason -> the state it says (DisabledByPolicy says none: see held_state).
_BY_REASON = {
    NOT_YET_VALID: PassState.NOT_YET_VALID,
    ENABLED_BY_POLICY: PassState.USABLE,
    ONE_TIME_USED: PassState.USED,
    EXPIRED: PassState.EXPIRED,
}
BUILT_IN_SIMULATOR = (
    "graph.endpoint is the built-in simulator, which starts empty for every command and keeps "
    "no pass between them: there is nothing to read or revoke. To try status and revoke, serve "
    "it with 'onboard simulate' and point a config at its URL (docs/simulator.md)"
)


def held_state(held: HeldPass, now: datetime) -> PassState:
    """The state of a pass Graph lists: its methodUsabilityReason; DisabledByPolicy (the pass
    policy turned off, or the user moved out of its groups) or a reason Graph may add says
    nothing of the pass's own life, so its window says it then."""
    state = _BY_REASON.get(held.usability or "")
    if state is not None:
        return state
    if held.starts is not None and held.starts > now:
        return PassState.NOT_YET_VALID
    ends = held.expires
    if ends is not None and ends <= now:
        return PassState.EXPIRED
    return PassState.USABLE


def pass_state(
    method_id: str, expires: datetime | None, held: HeldPass | None, now: datetime
) -> PassState:
    """The state of the pass `method_id` (expiring at `expires`) given what Graph holds for
    its user now (`held`, None: no pass). A pass gone after its expiry is expired (Graph may
    clear expired passes); before it, someone removed it."""
    if held is None:
        return PassState.EXPIRED if expires is not None and expires <= now else PassState.REMOVED
    if held.method_id != method_id:
        return PassState.REPLACED
    return held_state(held, now)


def blocked(held: HeldPass | None, now: datetime) -> bool:
    """Graph says nobody can sign in with this pass though its window says it is usable: the
    pass policy (DisabledByPolicy), or isUsable false with a reason Graph may add, or none."""
    if held is None:
        return False
    if held.usability == DISABLED_BY_POLICY:
        return True
    unexplained = held.usability not in _BY_REASON and held.usable is False
    return unexplained and held_state(held, now) is PassState.USABLE


def registered_since(methods: Sequence[RegisteredMethod], since: datetime | None) -> list[str]:
    """The strong methods (Authenticator, FIDO2, Windows Hello, phone...) among `methods`
    registered at or after `since`, named for people. One Graph lists without a date counts:
    the run refused users who had strong methods, unless told to allow them."""
    kinds = [m.kind for m in methods if since is None or m.created is None or m.created >= since]
    return strong_methods(kinds)


# --- status -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PassStatus:
    """One pass a run issued, as Graph shows it now (never its value)."""

    recorded: RecordedPass
    state: PassState | None  # None: Graph could not be asked (see `error`)
    registered: tuple[str, ...] | None = ()  # strong methods since the pass; None: not known
    hire_started: bool = False  # the hire's start (the sheet's, else the pass's) has passed
    holds_usable_pass: bool = False  # this pass, or one issued since, is usable now
    disabled_by_policy: bool = False
    replaced_by: str | None = None  # the run of this journal that issued the pass Graph holds
    revoked: bool = False  # `onboard revoke` deleted it
    user_gone: bool = False  # the user is no longer in the directory (Graph answered 404)
    error: str | None = None

    @property
    def user(self) -> str:
        return self.recorded.user

    @property
    def needs_attention(self) -> bool:
        """A hire whose start has passed with neither a usable pass nor a registered method
        (or whose state Graph would not tell): someone must look. A user deleted from the
        directory is no hire any more: nobody can sign in as them."""
        if self.error is not None:
            return True
        if self.user_gone:
            return False
        return self.hire_started and not self.holds_usable_pass and not self.registered

    @property
    def note(self) -> str:
        """What a person should know beyond the state, in a few words."""
        notes = []
        if self.disabled_by_policy:
            notes.append("disabled by the pass policy: nobody can sign in with it")
        if self.revoked:
            notes.append("revoked by onboard revoke")
        if self.user_gone:
            notes.append(USER_GONE)
        if self.state is PassState.REPLACED:
            by = f"by run {self.replaced_by}" if self.replaced_by else "by a pass issued since"
            usable = "usable" if self.holds_usable_pass else "not usable now"
            notes.append(f"replaced {by} ({usable})")
        if self.error is not None:
            notes.append(self.error)
        return "; ".join(notes)


@dataclass(slots=True)
class StatusReport:
    """`onboard status`: every pass a run issued, how it stands, who needs attention."""

    run: RunInfo
    tenant: Tenant
    checked: datetime
    passes: list[PassStatus] = field(default_factory=list)
    workbook: Path | None = None
    pacing: Pacing | None = None

    @property
    def simulated(self) -> bool:
        return self.tenant.simulated

    @property
    def attention(self) -> list[PassStatus]:
        return [p for p in self.passes if p.needs_attention]

    def counts(self) -> dict[str, int]:
        """How many passes are in each state (and "unknown" where Graph would not say)."""
        counted = Counter(str(p.state) if p.state is not None else "unknown" for p in self.passes)
        return dict(sorted(counted.items()))


STATUS_COLUMNS = (
    "Source file",
    "Row",
    "User",
    "State",
    "Registered since the pass",
    "Needs attention",
    "Hire starts (UTC)",
    "Pass starts (UTC)",
    "Expires (UTC)",
    "Method ID",
    "Note",
)


async def status(
    config: Config,
    run_id: str | None = None,
    *,
    env: Mapping[str, str],
    out_dir: Path | None = None,
    now: datetime | None = None,
    stop: asyncio.Event | None = None,
) -> StatusReport:
    """How every pass of `run_id` (default: this tenant's latest run that issued one) stands
    at Graph, and the strong methods its hire registered since; written to
    onboard-status-<run>.xlsx (no pass values) in `out_dir` (output.dir). Reads only.

    Raises ConfigError (no journal, no such run, a run of another tenant, the built-in
    simulator) before anything is read from Graph, and AuthError as a run does."""
    out = out_dir or config.output.dir
    journal = _journal_to_read(config)
    try:
        if run_id is not None:
            _find_run(journal, run_id)
        async with contextlib.AsyncExitStack() as stack:
            connection = await unless_stopped(connect(config, env, stack), stop)
            tenant = connection.tenant
            run = _run_of(journal, run_id, tenant)
            recorded = [p for p in journal.passes(run.run_id) if p.state is not RowState.FAILED]
            revoked = journal.revocations(tenant.key)
            check_output_dir(out)
            client = connection.client
            retries = retries_for(config.run)
            users = [_address(p) for p in recorded]
            passes, methods = await asyncio.gather(
                ask_all(users, client.current_pass, concurrency=config.run.concurrency,
                        retries=retries, stop=stop),
                ask_all(users, client.registered_methods, concurrency=config.run.concurrency,
                        retries=retries, stop=stop),
            )  # fmt: skip
            checked = now or datetime.now(UTC)
            report = StatusReport(run, tenant, checked, pacing=client.pacing)
            for p in recorded:
                answers = passes.get(_address(p), _NOT_ASKED), methods.get(_address(p), _NOT_ASKED)
                done = _status_of(p, *answers, checked, revoked.get(p.method_id))
                if done.state is PassState.REPLACED and isinstance(answers[0], HeldPass):
                    # Which run of this journal, if any, issued the pass Graph holds now.
                    by = journal.issued_by(tenant.key, answers[0].method_id)
                    done = replace(done, replaced_by=by.run_id if by is not None else None)
                report.passes.append(done)
    finally:
        journal.close()
    report.workbook = write_table(
        out / f"onboard-status-{report.run.run_id}.xlsx",
        "Status",
        STATUS_COLUMNS,
        (_status_row(p) for p in report.passes),
        banner=_banner("onboard status", report.run, report.tenant, report.checked),
    )
    return report


_NOT_ASKED: Any = object()  # an answer ask_all does not have: stopped before it was asked
USER_NOT_FOUND = 404
USER_GONE = "the user is no longer in the directory"


def _status_of(
    recorded: RecordedPass,
    held: HeldPass | GraphError | None,
    methods: list[RegisteredMethod] | GraphError,
    now: datetime,
    revoked: RevokeState | None,
) -> PassStatus:
    """One pass's status from Graph's two answers for its user (_NOT_ASKED: stopped first)."""
    hire_starts = recorded.hire_starts or recorded.starts
    started = hire_starts is not None and hire_starts <= now
    registered: tuple[str, ...] | None = None
    errors = []
    gone = _user_gone(held)
    if gone:  # the user's pass and methods went with them
        held, methods = None, []
    if isinstance(methods, list):
        registered = tuple(registered_since(methods, recorded.created or recorded.starts))
    else:
        errors.append(f"methods not read: {_why(methods)}")
    if held is _NOT_ASKED or isinstance(held, GraphError):
        errors.insert(0, f"pass not read: {_why(held)}")
        return PassStatus(recorded, None, registered, started, error="; ".join(errors))
    state = pass_state(recorded.method_id, recorded.expires, held, now)
    usable = held is not None and held_state(held, now) is PassState.USABLE
    usable = usable and not blocked(held, now)
    return PassStatus(
        recorded,
        state,
        registered,
        hire_started=started,
        holds_usable_pass=usable,
        disabled_by_policy=state is not PassState.REPLACED and blocked(held, now),
        revoked=revoked is RevokeState.DELETED,
        user_gone=gone,
        error="; ".join(errors) or None,
    )


def _user_gone(answer: object) -> bool:
    """Graph answered that the user does not exist (404: its code is not documented)."""
    return isinstance(answer, GraphError) and answer.status == USER_NOT_FOUND


def _why(answer: object) -> str:
    """Why Graph gave no answer, for people: its status and code, or that it was not asked."""
    if isinstance(answer, GraphError):
        code = f" {answer.code}" if answer.code else ""
        return f"{answer.message} (HTTP {answer.status or '-'}{code})"
    return "stopped before it was asked"


def _status_row(p: PassStatus) -> list[Any]:
    r = p.recorded
    registered = "(not read)" if p.registered is None else ", ".join(p.registered)
    return [
        r.origin.source,
        r.origin.row,
        r.user,
        str(p.state) if p.state is not None else "unknown",
        registered,
        "yes" if p.needs_attention else "",
        r.hire_starts,
        r.starts,
        r.expires,
        r.method_id,
        p.note,
    ]


# --- revoke -----------------------------------------------------------------------------------
class RevokeAction(StrEnum):
    """What `onboard revoke` did with one pass of the run (its table, JSON and workbook)."""

    DELETED = "deleted"
    WOULD_DELETE = "would delete"  # --dry-run
    ALREADY = "already revoked"  # an earlier revoke saw to it: nothing sent
    GONE = "gone"  # Graph held no pass of that id: nothing to delete
    REPLACED = "kept: replaced"  # Graph holds a pass issued since: never touched
    KEPT_USED = "kept: used"  # --unused
    KEPT_EXPIRED = "kept: expired"  # --unused
    NOT_DONE = "not done"  # not confirmed, or the revoke stopped before it
    FAILED = "failed"


# What --unused keeps: a pass nobody can sign in with any more is no risk.
SPENT = {PassState.USED: RevokeAction.KEPT_USED, PassState.EXPIRED: RevokeAction.KEPT_EXPIRED}


@dataclass(frozen=True, slots=True)
class Revocation:
    """One pass of the run and what revoke did with it (never its value)."""

    recorded: RecordedPass
    action: RevokeAction
    state: PassState | None = None  # how the pass stood at Graph when revoke looked
    detail: str = ""

    @property
    def user(self) -> str:
        return self.recorded.user


# Shown the passes about to be deleted, says whether to go on (a terminal's question).
Confirm = Callable[[Sequence[Revocation]], bool]


@dataclass(slots=True)
class RevokeReport:
    """`onboard revoke`: every pass of the run it considered, and what became of it."""

    run: RunInfo
    tenant: Tenant
    revoke_id: str
    started: datetime
    dry_run: bool = False
    unused: bool = False
    revocations: list[Revocation] = field(default_factory=list)
    workbook: Path | None = None
    stopped: bool = False  # a signal stopped it: the passes not done yet are NOT_DONE
    declined: bool = False  # asked, the operator said no: nothing was deleted
    pacing: Pacing | None = None

    @property
    def simulated(self) -> bool:
        return self.tenant.simulated

    @property
    def failed(self) -> list[Revocation]:
        return [r for r in self.revocations if r.action is RevokeAction.FAILED]

    def counts(self) -> dict[str, int]:
        """How many passes each action befell."""
        return dict(sorted(Counter(str(r.action) for r in self.revocations).items()))


REVOKE_COLUMNS = (
    "Source file",
    "Row",
    "User",
    "Action",
    "State at Graph",
    "Pass starts (UTC)",
    "Expires (UTC)",
    "Method ID",
    "Detail",
)


async def revoke(
    config: Config,
    run_id: str,
    *,
    env: Mapping[str, str],
    users: Collection[str] = (),
    unused: bool = False,
    dry_run: bool = False,
    confirm: Confirm | None = None,
    out_dir: Path | None = None,
    stop: asyncio.Event | None = None,
) -> RevokeReport:
    """Delete the passes `run_id` issued (those of `users` only, if given) where Graph still
    holds that very pass; `unused`: leave used and expired ones. `confirm`: called with the
    passes about to be deleted (looked up first), deletes nothing unless it says yes. Once
    `stop` is set no further pass is started. Written to onboard-revoke-<run>-<time>.xlsx.

    Raises ConfigError (no journal, no such run or user, a run of another tenant, the built-in
    simulator) before anything is sent, JournalLocked while a run uses the journal, AuthError
    as a run does."""
    out = out_dir or config.output.dir
    if config.graph.is_simulator:
        raise ConfigError(BUILT_IN_SIMULATOR)
    if not config.state.path.exists():
        raise ConfigError(f"no journal at {config.state.path}: no run to revoke")
    check_output_dir(out)
    started = datetime.now(UTC)
    # A dry run writes nothing to the journal: no lock, so a run going on is not in its way.
    journal = Journal(config.state.path).open(lock=not dry_run)
    try:
        run = _find_run(journal, run_id)
        chosen = _chosen(journal.passes(run_id), users, run_id)
        async with contextlib.AsyncExitStack() as stack:
            connection = await unless_stopped(connect(config, env, stack), stop)
            tenant = connection.tenant
            _same_tenant(run, tenant)
            report = RevokeReport(
                run, tenant, f"{started:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}", started,
                dry_run=dry_run, unused=unused, pacing=connection.client.pacing,
            )  # fmt: skip
            revoker = _Revoker(config, journal, connection.client, report)
            await revoker.revoke(chosen, confirm, stop)
    finally:
        journal.close()
    report.workbook = write_table(
        free_path(out / f"onboard-revoke-{run_id}-{started:%Y%m%d-%H%M%S}.xlsx"),
        "Revoke",
        REVOKE_COLUMNS,
        (_revoke_row(r) for r in report.revocations),
        banner=_banner(
            "onboard revoke" + (" --dry-run" if dry_run else ""), run, report.tenant, started
        ),
    )
    return report


class _Revoker:
    """One revoke: what to do with each pass, the deletes, and the journal's record of them."""

    def __init__(
        self, config: Config, journal: Journal, client: GraphClient, report: RevokeReport
    ) -> None:
        self.config = config
        self.journal = journal
        self.client = client
        self.report = report
        self.retries: Retries = retries_for(config.run)
        self.done: dict[str, Revocation] = {}  # method id -> what became of it
        self.seen: dict[str, PassState] = {}  # method id -> its state when revoke looked first
        tenant = report.tenant.key
        self.before = journal.revocations(tenant)  # what earlier revokes recorded

    async def revoke(
        self, chosen: list[RecordedPass], confirm: Confirm | None, stop: asyncio.Event | None
    ) -> None:
        report = self.report
        todo = []
        for p in chosen:
            if self.before.get(p.method_id) in REVOKED_FOR_GOOD:
                self._settle(p, RevokeAction.ALREADY, None, "an earlier onboard revoke saw to it")
            else:
                todo.append(p)
        if todo and (report.dry_run or confirm is not None):
            todo = await self._look_first(todo, stop)
            if not report.dry_run and stop is not None and stop.is_set():
                self._listed(todo)  # not "would delete": left to be settled as not done
            if report.dry_run or (stop is not None and stop.is_set()):
                todo = []
            elif todo and confirm is not None and not confirm(self._listed(todo)):
                report.declined = True
                for p in todo:
                    self._settle(p, RevokeAction.NOT_DONE, None, "not confirmed")
                todo = []
        run = self.config.run
        left = await run_each(
            todo, self._one, concurrency=run.concurrency, stop=stop,
            grace_seconds=run.stop_grace_seconds,
        )  # fmt: skip
        report.stopped = bool(left) or (stop is not None and stop.is_set())
        for p in chosen:  # stopped before these were started
            if p.method_id not in self.done:
                self._settle(
                    p, RevokeAction.NOT_DONE, None, "the revoke stopped first: run it again"
                )
        report.revocations = [self.done[p.method_id] for p in chosen]

    def _listed(self, todo: list[RecordedPass]) -> list[Revocation]:
        return [self.done.pop(p.method_id) for p in todo]

    async def _look_first(
        self, todo: list[RecordedPass], stop: asyncio.Event | None
    ) -> list[RecordedPass]:
        """Ask Graph about every pass before deleting any (a dry run, or to show the list to
        confirm): those that are to be deleted, each set WOULD_DELETE for now."""
        held = await ask_all([_address(p) for p in todo], self.client.current_pass,
                             concurrency=self.config.run.concurrency, retries=self.retries,
                             stop=stop)  # fmt: skip
        now = datetime.now(UTC)
        to_delete = []
        for p in todo:
            answer = held.get(_address(p), _NOT_ASKED)
            if answer is _NOT_ASKED:
                continue  # stopped: left NOT_DONE
            if _user_gone(answer):
                await self._kept(p, None, now, user_gone=True)
                continue
            if isinstance(answer, GraphError):
                self._settle(p, RevokeAction.FAILED, None, f"pass not read: {_why(answer)}")
                continue
            if await self._kept(p, answer, now):
                continue
            state = pass_state(p.method_id, p.expires, answer, now)
            self.seen[p.method_id] = state
            self._settle(p, RevokeAction.WOULD_DELETE, state)
            to_delete.append(p)
        return to_delete

    async def _kept(
        self, p: RecordedPass, held: HeldPass | None, now: datetime, *, user_gone: bool = False
    ) -> bool:
        """Settle a pass that is not to be deleted (Graph no longer holds it, or --unused and
        it is spent); journal what is for good. True if it was settled."""
        state = pass_state(p.method_id, p.expires, held, now)
        if held is None or held.method_id != p.method_id:
            if held is None:
                action, journaled = RevokeAction.GONE, RevokeState.GONE
                detail = "Graph holds no pass for the user: nothing to delete"
                if user_gone:
                    detail = f"{USER_GONE}: nothing to delete"
                if self.before.get(p.method_id) is RevokeState.DELETING:
                    action, journaled = RevokeAction.DELETED, RevokeState.DELETED
                    detail = "deleted by the earlier revoke, stopped before it heard the answer"
            else:
                action, journaled = RevokeAction.REPLACED, RevokeState.REPLACED
                detail = "Graph holds a pass issued since (another method id): never touched"
            self._settle(p, action, state, detail)
            if not self.report.dry_run:
                await self._journal(p, journaled)
            return True
        if self.report.unused and state in SPENT:
            self._settle(p, SPENT[state], state, "--unused: a spent pass is left alone")
            return True
        return False

    async def _one(self, p: RecordedPass) -> None:
        """Delete this pass if Graph still holds it. A DELETE names its method id, so it is
        sent without looking first, except where the state decides (--unused) or an earlier
        DELETE's fate is unknown (journaled DELETING: Graph is asked, not sent it again)."""
        address = _address(p)
        now = datetime.now(UTC)
        state = self.seen.get(p.method_id)
        if self.report.unused or self.before.get(p.method_id) is RevokeState.DELETING:
            settled, state = await self._look(p, now)
            if settled:
                return
        await self._journal(p, RevokeState.DELETING)
        unclear: list[bool] = []

        async def attempt(_: int) -> bool:
            try:
                return await self.client.delete_pass(address, p.method_id)
            except GraphError as exc:
                unclear.append(is_unclear(exc))
                raise

        try:
            deleted = await with_retries(attempt, self.retries)
        except GraphError as exc:
            # Left DELETING: the next revoke asks Graph about it again.
            self._settle(p, RevokeAction.FAILED, state, f"not deleted: {_why(exc)}")
            return
        if deleted or any(unclear):  # a 404 after a DELETE of unknown fate: that one did it
            await self._journal(p, RevokeState.DELETED)
            self._settle(p, RevokeAction.DELETED, state)
            return
        # 404: Graph holds no pass of that id. Gone, or replaced by one issued since: look.
        settled, _ = await self._look(p, now)
        if not settled:  # Graph lists the very pass it just said it lacks: ask again later
            self._settle(p, RevokeAction.FAILED, state, "Graph answered 404 yet lists the pass")

    async def _look(self, p: RecordedPass, now: datetime) -> tuple[bool, PassState | None]:
        """Ask Graph for the user's pass: (True, None) when that settled it (gone, replaced,
        spent under --unused, or not readable); else (False, its state)."""
        address = _address(p)
        try:
            held = await with_retries(lambda _: self.client.current_pass(address), self.retries)
        except GraphError as exc:
            if _user_gone(exc):
                await self._kept(p, None, now, user_gone=True)
            else:
                self._settle(p, RevokeAction.FAILED, None, f"pass not read: {_why(exc)}")
            return True, None
        if await self._kept(p, held, now):
            return True, None
        return False, pass_state(p.method_id, p.expires, held, now)

    async def _journal(self, p: RecordedPass, state: RevokeState) -> None:
        """Commit where this pass's revoking stands (in a thread: the loop goes on)."""
        report = self.report
        await asyncio.to_thread(
            self.journal.revoking,
            report.tenant.key,
            report.run.run_id,
            p,
            state,
            report.revoke_id,
        )

    def _settle(
        self, p: RecordedPass, action: RevokeAction, state: PassState | None, detail: str = ""
    ) -> None:
        self.done[p.method_id] = Revocation(p, action, state, detail)
        if action is RevokeAction.FAILED:
            log.warning("revoke: %s (method id %s): %s", p.user, p.method_id, detail)
        else:
            log.info("revoke: %s (method id %s): %s", p.user, p.method_id, action)


def _revoke_row(r: Revocation) -> list[Any]:
    p = r.recorded
    return [
        p.origin.source,
        p.origin.row,
        p.user,
        str(r.action),
        str(r.state) if r.state is not None else "",
        p.starts,
        p.expires,
        p.method_id,
        r.detail,
    ]


def _chosen(passes: list[RecordedPass], users: Collection[str], run_id: str) -> list[RecordedPass]:
    """The run's passes of these users (all of them without any); ConfigError naming users
    the run issued no pass for."""
    if not users:
        return passes
    wanted = {u.strip().casefold() for u in users}
    chosen = [p for p in passes if {p.user.casefold(), p.user_key} & wanted]
    found = {p.user.casefold() for p in chosen} | {p.user_key for p in chosen}
    unknown = sorted(u for u in wanted if u not in found)
    if unknown:
        raise ConfigError(
            f"run {run_id} issued no pass for {', '.join(unknown)}: nothing was revoked "
            f"('onboard status {run_id}' lists its passes)"
        )
    return chosen


# --- the journal's side ------------------------------------------------------------------------
def _journal_to_read(config: Config) -> Journal:
    """The journal, opened to read without its lock (a run going on is not in the way)."""
    if config.graph.is_simulator:
        raise ConfigError(BUILT_IN_SIMULATOR)
    if not config.state.path.exists():
        raise ConfigError(f"no journal at {config.state.path}: no run to look at")
    return Journal(config.state.path).open(lock=False)


def _find_run(journal: Journal, run_id: str) -> RunInfo:
    run = journal.run(run_id)
    if run is None:
        raise ConfigError(
            f"no run {run_id} in the journal {journal.path}; 'onboard runs' lists them"
        )
    return run


def _same_tenant(run: RunInfo, tenant: Tenant) -> None:
    """A run's passes are looked up only in the tenant (and at the Graph root) it issued them."""
    if run.tenant != tenant.key:
        raise ConfigError(
            f"run {run.run_id} issued its passes in the tenant {run.tenant_shown}, and this "
            f"config signs in to {tenant.describe()}: nothing was read or changed (use the "
            "config that run used)"
        )


def _run_of(journal: Journal, run_id: str | None, tenant: Tenant) -> RunInfo:
    """The run named, which must be of this tenant; or this tenant's latest run that issued
    a pass."""
    if run_id is not None:
        run = _find_run(journal, run_id)
        _same_tenant(run, tenant)
        return run
    issued = [
        r
        for r in journal.runs()
        if r.tenant == tenant.key and r.counts.get("issued", 0) + r.counts.get("unclear", 0)
    ]
    if not issued:
        raise ConfigError(
            f"no run in the journal {journal.path} issued a pass in the tenant "
            f"{tenant.describe()}: nothing to look at"
        )
    return issued[-1]


def _address(p: RecordedPass) -> str:
    """How Graph is asked about the pass's user: the object id where known (it survives a
    renamed UPN), else the name the run used."""
    return p.object_id or p.user


def _banner(what: str, run: RunInfo, tenant: Tenant, at: datetime) -> str:
    said = (
        f"{what} of run {run.run_id}, tenant {tenant.describe()}, "
        f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; no pass values"
    )
    return f"{SIMULATED}. {said}" if tenant.simulated else said
