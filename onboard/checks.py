"""The checks before the first create: the tenant's pass policy, the people in the
directory (by UPN, object id, mail or employee id), and passes users already hold.

Every one only reads from Graph. A row they decide becomes a Failed or Skipped outcome; the
job records it like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Config, RunSettings
from .decide import CheckFirst, already_issued, settle_wait
from .errors import GraphError, PolicyDisabled, ThrottledError, TransientError
from .graph import (
    FILTER_VALUES,
    GUEST_MARKER,
    GUEST_REFUSAL,
    GUESTS_ADVICE,
    INVITATION,
    NOT_YET_VALID,
    POLICY_IN_PORTAL,
    GraphClient,
    HeldPass,
    Policy,
    explain,
    strong_methods,
)
from .journal import PreviousPass
from .outcomes import Failed, Outcome, PassRequest, Reason, Skipped, not_sent, shown_window
from .reader import GUID, one_per_user
from .retrying import retries_for, with_retries
from .runner import ask_all, run_each, stopped_within

log = logging.getLogger(__name__)

POLICY_ATTEMPTS = 3
POLICY_MAX_WAIT_SECONDS = 5.0


async def read_policy(
    client: GraphClient,
    config: Config,
    stop: asyncio.Event | None,
    *,
    holding: bool = False,
) -> tuple[Policy | None, str]:
    """The pass policy (None if it cannot be read) and a line for the Summary: a few quick
    tries, never holding up a stop. Raises PolicyDisabled when the policy is off (`holding`:
    the run already issued passes, before a stop, that its message must not deny)."""
    for attempt in range(1, POLICY_ATTEMPTS + 1):
        try:
            data = await client.get_policy()
            break
        except (ThrottledError, TransientError) as exc:
            if attempt == POLICY_ATTEMPTS:
                log.warning("cannot read the pass policy: HTTP %s %s", exc.status, exc.code)
                return None, f"not readable (HTTP {exc.status})"
            wait = min(exc.retry_after or config.run.backoff_seconds, POLICY_MAX_WAIT_SECONDS)
            if await stopped_within(stop, wait):
                return None, "not read (the run was stopped)"
        except GraphError as exc:
            if exc.status == 403:
                log.warning(
                    "cannot read the pass policy (the app lacks Policy.Read.AuthenticationMethod):"
                    " rows are not checked against it; relying on Graph's answers"
                )
                return None, "not readable (needs Policy.Read.AuthenticationMethod)"
            log.warning("cannot read the pass policy: HTTP %s %s", exc.status, exc.code)
            return None, f"not readable (HTTP {exc.status})"
    else:
        return None, "not read"
    policy = Policy.from_graph(data)
    if not policy.enabled:
        raise PolicyDisabled(
            "the tenant's Temporary Access Pass policy is turned off, so Graph would refuse "
            "every pass: "
            + (
                "no further pass was sent (the passes this run issued before it stopped are "
                "kept in the journal, for its audit)"
                if holding
                else "nothing was sent"
            )
            + f". Turn it on in the {POLICY_IN_PORTAL} (Enable, and include the new hires' "
            "group), then run the same command again"
        )
    return policy, policy.describe()


async def find_people(
    config: Config,
    client: GraphClient,
    requests: list[PassRequest],
    stop: asyncio.Event | None = None,
) -> tuple[list[PassRequest], list[Failed | Skipped]]:
    """Look every row's person up in the directory (see _look_up), then keep one request per
    person found: two addresses of one person are one pass."""
    found, missing = await _look_up(config, client, requests, stop)
    found, conflicts, repeats = one_per_user(found)
    return found, [*missing, *conflicts, *repeats]


def within_policy(
    policy: Policy | None, requests: list[PassRequest]
) -> tuple[list[PassRequest], list[Failed]]:
    """The rows the pass policy would accept, and a Failed for each it would refuse (its
    lifetime range, one-time only). Without a policy (not readable): every row."""
    if policy is None:
        return requests, []
    keep: list[PassRequest] = []
    refused: list[Failed] = []
    for request in requests:
        why = policy.refuses(request)
        if why is None:
            keep.append(request)
        else:
            reason, detail, field_name = why
            earlier = request.prior_attempts > 0 or request.doubtful
            if earlier:
                detail += (
                    " An earlier request for this row (a run that stopped) may have created a "
                    "pass: it was not replaced."
                )
            column = request.header(field_name)
            refused.append(
                Failed(
                    request.origin,
                    request.user,
                    reason,
                    detail,
                    column=column,
                    may_have_pass=earlier,
                )
            )
    return keep, refused


async def _look_up(
    config: Config,
    client: GraphClient,
    requests: list[PassRequest],
    stop: asyncio.Event | None = None,
) -> tuple[list[PassRequest], list[Failed]]:
    """Find each row's person in the directory (15 values to a request, as Graph allows): by
    input.match_by mail or employee id, the row then names the UPN found; by UPN, or object id,
    it is only checked. No match, several, or an external guest: the row fails (an internal
    guest, userType Guest with no invitation, may have a pass)."""
    match_by = config.input.match_by

    def field_for(value: str) -> str:
        if match_by != "upn":
            return match_by
        return "id" if GUID.match(value) else "userPrincipalName"

    # One lookup per distinct value (compared without regard to case), sent as the sheet
    # wrote it: Graph compares case-insensitively itself (casefold() would turn ß into ss).
    wanted: dict[str, dict[str, str]] = {}
    for request in requests:
        wanted.setdefault(field_for(request.user), {}).setdefault(
            request.user.casefold(), request.user
        )
    chunks = [
        (name, tuple(values[i : i + FILTER_VALUES]))
        for name, listed in wanted.items()
        for values in [list(listed.values())]
        for i in range(0, len(values), FILTER_VALUES)
    ]
    answers = await ask_all(
        chunks,
        lambda chunk: client.find_users(chunk[0], list(chunk[1])),
        concurrency=config.run.concurrency,
        retries=retries_for(config.run),
        stop=stop,
    )
    matches: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], GraphError] = {}
    for (name, values), answer in answers.items():
        for value in values:
            matches[(name, value.casefold())] = []
            if isinstance(answer, GraphError):
                errors[(name, value.casefold())] = answer
        if isinstance(answer, GraphError):
            continue
        for user in answer:
            key = (name, str(user.get(name) or "").casefold())
            if key in matches:
                matches[key].append(user)
    found: list[PassRequest] = []
    failed: list[Failed] = []
    for request in requests:
        key = (field_for(request.user), request.user.casefold())
        if key not in matches:  # not looked up: the run was asked to stop
            failed.append(not_sent(request))
            continue
        people = matches[key]
        error = errors.get(key)
        refused = _refused(request.user, match_by, people, error)
        if refused is not None:
            reason, shown, detail = refused
            guest = error is None and len(people) == 1 and _is_external(people[0])
            failed.append(Failed(
                request.origin, _upn(people[0]) if guest else request.user, reason, detail,
                http_status=error.status if error else None,
                graph_code=error.code if error else None,
                column=request.header(config.input.key_column), label=shown,
            ))  # fmt: skip
        elif match_by == "upn":
            found.append(replace(request, object_id=_object_id(people[0])))
        else:
            found.append(replace(request, user=_upn(people[0]), sheet_value=request.user,
                                 object_id=_object_id(people[0])))  # fmt: skip
    return found, failed


# How a message names each input.match_by field.
_MATCH_LABELS = {"mail": "mail", "employeeId": "employee id", "upn": "UPN"}


def _refused(
    value: str, match_by: str, people: list[dict[str, Any]], error: GraphError | None
) -> tuple[Reason, str | None, str] | None:
    """Why a row cannot go on after its lookup (reason, the label to show when the reason's own
    is too general, what to do); None if it can."""
    label = _MATCH_LABELS[match_by]
    if error is not None:
        needs = (
            " Finding people needs User.Read.All for the app: grant it with admin consent."
            if error.status in (401, 403)
            else " Run again later."
        )
        return (
            Reason.LOOKUP_FAILED,
            None,
            (
                f"Could not search the directory for {label} '{value}' (HTTP {error.status} "
                f"{error.code or '-'}: {error.message}).{needs}"
            ),
        )
    if not people and match_by == "upn":
        return (
            Reason.USER_NOT_FOUND,
            None,
            (
                f"No user '{value}' in the tenant: check the spelling in the sheet, or wait until "
                "the account has been created, then run again for this row."
            ),
        )
    if not people:
        return (
            Reason.NO_MATCH,
            Reason.NO_MATCH.labelled(label),
            (
                f"No user in the tenant has {label} '{value}'. Check the sheet, or wait until the "
                f"account exists with its {label} set, then run again for this row."
            ),
        )
    upns = sorted(_upn(u) for u in people)
    if len(people) > 1:
        return (
            Reason.SEVERAL_MATCHES,
            Reason.SEVERAL_MATCHES.labelled(label),
            (
                f"{len(people)} users have {label} '{value}': {', '.join(upns)}. Give this "
                "person's UPN instead (a sheet with input.match_by: upn), or fix the directory "
                "so the value is unique."
            ),
        )
    if _is_external(people[0]):
        return (
            Reason.EXTERNAL_GUEST,
            None,
            (
                f"{GUEST_REFUSAL} ({label} '{value}' is the external guest {upns[0]}.) "
                f"{GUESTS_ADVICE}"
            ),
        )
    if not upns[0]:
        return (
            Reason.LOOKUP_FAILED,
            None,
            f"The directory returned a user for {label} '{value}' without a UPN.",
        )
    return None


def _object_id(user: Mapping[str, Any]) -> str | None:
    found = user.get("id")
    return str(found) if isinstance(found, str) and GUID.match(found) else None


def _upn(user: Mapping[str, Any]) -> str:
    return str(user.get("userPrincipalName") or "")


def _is_external(user: Mapping[str, Any]) -> bool:
    """An external guest, whom Graph refuses a pass: an invited account (the #EXT# of its UPN,
    creationType Invitation, or an externalUserState such as PendingAcceptance or Accepted).
    userType alone does not say: an internal guest (userType Guest, created in this tenant,
    never invited) may have a pass."""
    invited = str(user.get("creationType") or "").casefold() == INVITATION.casefold()
    return invited or bool(user.get("externalUserState")) or GUEST_MARKER in _upn(user).upper()


def _not_listed(request: PassRequest, error: GraphError, max_attempts: int) -> Failed:
    """A row whose user's current pass Graph would not list: under pass.existing skip nothing
    is sent without knowing; a 404 (no such user) fails the row as any lookup of one does."""
    reason, detail = explain(error, request.user, max_attempts)
    if error.status != 404:
        reason = Reason.EXISTING_UNKNOWN
        detail = (
            f"pass.existing is skip, and Graph would not list this user's current pass "
            f"(HTTP {error.status}: {error.message}), so none was created. Run again "
            "later; or set pass.existing: replace to issue without checking."
        )
    return Failed(request.origin, request.user, reason, detail,
                  http_status=error.status, graph_code=error.code,
                  request_id=error.request_id)  # fmt: skip


def _pass_in_force(
    request: PassRequest,
    held: HeldPass,
    ours: PreviousPass | None,
    now: datetime,
    *,
    replacing: bool,
) -> PassRequest | Outcome:
    """A row whose user holds a pass in force: the row, to send (with a note on the pass it
    replaces), or its outcome. `ours` is the journal's record of that pass, if it issued it."""
    if ours is not None and not ours.value_kept:
        return _with_note(
            request,
            f"replaces the pass run {ours.run_id} created while it could not be used "
            "(outside the pass policy's groups: its value was not kept)",
        )
    if ours is not None and ours.start_key == request.start_key:
        return already_issued(request, ours, confirmed=True)
    if ours is not None:
        return _with_note(
            request,
            f"start moved from {shown_window(ours.start_key)} to "
            f"{shown_window(request.start_key)}: this pass replaces the one run "
            f"{ours.run_id} issued",
        )
    if replacing:
        return _with_note(
            request,
            f"replaces a pass created {_when(held.created)} that this journal did not "
            "issue (pass.existing: replace)",
        )
    return _held_elsewhere(request, held, now)


def _with_note(request: PassRequest, note: str) -> PassRequest:
    """The request with `note` added to its audit note (after any it already has)."""
    return replace(request, note=f"{request.note}; {note}".lstrip("; "))


# How much earlier than the row's start a pass may start, or later it may end, and still be
# the row's: Graph rounds what it stores.
_SLACK = timedelta(minutes=1)


def _held_elsewhere(request: PassRequest, held: HeldPass, now: datetime) -> Outcome:
    """A pass in force that no record of this journal explains: kept, but never counted as a
    success; failed when it cannot serve the row's first day (it starts after the row's start,
    or ends before it), with what to do."""
    start = request.start or now
    ends = held.expires
    if held.starts is not None and held.starts > start + _SLACK:
        return Failed(
            request.origin, request.user, Reason.PASS_STARTS_LATER,
            f"{request.user} {_holds(held)}, after this row's start "
            f"{start:%Y-%m-%d %H:%M} UTC, so the hire has no usable pass on the first day. It "
            "was not replaced, as someone may have handed it out: if the sheet's start is "
            "right, run again with --reissue-user for this user (the new pass replaces it).",
        )  # fmt: skip
    if request.start is not None and ends is not None and ends <= request.start:
        return Failed(
            request.origin, request.user, Reason.PASS_ENDS_EARLY,
            f"{request.user} {_holds(held)}, before this row's start "
            f"{request.start:%Y-%m-%d %H:%M} UTC, so it is no use on the first day; it "
            "was not replaced, as someone may be using it now. Once it is no longer "
            "needed, run again with --reissue-user for this user.",
        )  # fmt: skip
    return Skipped(
        request.origin,
        request.user,
        Reason.HELD_ELSEWHERE,
        f"holds a pass created {_when(held.created)} that this journal did not issue "
        f"({_state(held)}, ends {_when(held.expires)}); kept, as pass.existing is skip. If "
        "nobody handed it out (a run whose journal was lost, say), replace it: run again with "
        "--reissue-user for this user, or with pass.existing: replace",
        issued_at=held.created,
    )


def _holds(held: HeldPass) -> str:
    return (
        f"holds a pass ({_state(held)}): created {_when(held.created)}, starts "
        f"{_when(held.starts)}, ends {_when(held.expires)}"
    )


def _state(held: HeldPass) -> str:
    return "not yet valid" if held.usability == NOT_YET_VALID else "usable now"


def _when(moment: datetime | None) -> str:
    return "unknown" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def on_conflict(outcome: Outcome, request: PassRequest | None) -> Outcome:
    """A 409 (Graph refusing while a pass exists, as older tenants did) means "a pass exists".
    For a row checked under pass.existing skip whose only request was this one, it is skipped
    like any user holding a pass. If an earlier request for the row may have created that pass
    (an answer lost, a run stopped), the pass may be this run's own, with its value lost: the
    row fails, saying so. A row meant to replace the pass fails, saying how."""
    if not (isinstance(outcome, Failed) and outcome.http_status == 409 and request is not None):
        return outcome
    if outcome.may_have_pass or outcome.attempts > 1:
        return replace(
            outcome,
            detail="Graph refused a new pass because one exists (409), and an earlier request "
            "for this row may have created it: its answer was lost, so nobody has its value. "
            "Delete the user's Temporary Access Pass in the Entra admin center, then run again "
            "with --reissue-user for this user.",
            may_have_pass=True,
        )
    if request.ask_existing:
        return Skipped(
            outcome.origin,
            outcome.user,
            Reason.HELD_ELSEWHERE,
            "holds a pass that this journal did not issue (Graph refused a new one: 409 "
            "conflict); kept, as pass.existing is skip. To replace it, run again with "
            "--reissue-user for this user, or with pass.existing: replace",
        )
    return outcome


ROLES_PERMISSION = "RoleManagement.Read.Directory (or Directory.Read.All)"
METHODS_PERMISSION = "UserAuthenticationMethod.Read.All"


class Permission:
    """Whether the app may read one kind of thing (users' roles, or their methods), as Graph's
    answers tell. Once one read succeeds, a 403 is about that user (the row fails: never a
    pass unchecked). When the first `probe` reads were all refused (403), or every row that
    reads has been refused, the app lacks the permission: the check is left out for every row
    and said once (the Summary, the run's attention). Until one of those, a row refused 403
    waits to learn which it is."""

    def __init__(self, probe: int, rows: int) -> None:
        self.probe = max(1, probe)
        self.possible = rows  # rows that may still read it
        self.seen = 0
        self.denials = 0
        self.successes = 0
        self.app_denied = False
        self.known = asyncio.Event()

    @property
    def denied(self) -> bool:
        """The app may not read this at all (so nobody is asked)."""
        return self.app_denied

    def answered(self, answer: object) -> None:
        self.seen += 1
        if _denied(answer):
            self.denials += 1
        elif not isinstance(answer, GraphError):
            self.successes += 1
        self._decide()

    def gone(self) -> None:
        """A row that will not read it (decided before, or not screened)."""
        self.possible -= 1
        self._decide()

    def _decide(self) -> None:
        if self.known.is_set():
            return
        everyone = self.seen >= self.possible
        if self.successes:
            self.known.set()
        elif self.denials >= self.probe or (everyone and self.denials == self.seen > 0):
            self.app_denied = True
            self.known.set()
        elif everyone:
            self.known.set()  # refusals of other kinds: about those users

    async def settled(self, stop: asyncio.Event | None) -> bool:
        """Wait until it is known what a 403 means (False: stopped first)."""
        if self.known.is_set():
            return True
        if stop is None:
            await self.known.wait()
            return True
        waits = {asyncio.ensure_future(self.known.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return self.known.is_set()


class RowChecks:
    """Every check a row takes before its create, one row at a time, so that they run ahead
    of the creates (reads spend their own budget): the pass its user holds now (rows marked
    `ask_existing`, under pass.existing), then the account (no pass for a user who holds a
    directory role or already has strong sign-in methods). Reads only.

    `check(row)` returns the row to send (perhaps with a note) or its outcome. Where the app
    may not read roles or methods (403 for everyone), the run says once what it could not
    check and goes on; any other failure to check fails the row (never issue for an unchecked
    account). `issued_by(method_id)`: the journal's record of a pass, if a run of this tenant
    issued it. `allowed` (--allow-user, casefolded UPNs or sheet values) lets a deliberate
    exception through with a note; pass.allow_existing_accounts turns the account check off.
    """

    def __init__(
        self,
        config: Config,
        client: GraphClient,
        rows: int,
        stop: asyncio.Event | None = None,
        *,
        issued_by: Callable[[str], PreviousPass | None] = lambda method_id: None,
        allowed: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        self.client = client
        self.stop = stop
        self.issued_by = issued_by
        self.allowed = allowed
        self.retries = retries_for(config.run)
        probe = min(rows, config.run.concurrency)
        self.roles = Permission(probe, rows)
        self.methods = Permission(probe, rows)
        self.screening = not config.pass_.allow_existing_accounts
        self.asked_existing = False

    async def check(self, request: PassRequest) -> PassRequest | Outcome:
        if request.ask_existing:
            self.asked_existing = True
            fate = await self._existing(request)
            if not isinstance(fate, PassRequest):
                self.roles.gone()
                self.methods.gone()
                return fate
            request = fate
        if not self.screening:
            return request
        return await self._screen(request)

    async def _ask(self, ask: Callable[[str], Any], user: str) -> Any:
        """One read, retried as a create would be: the answer, or the GraphError that ended
        its tries."""
        try:
            return await with_retries(lambda _: ask(user), self.retries)
        except GraphError as exc:
            return exc

    async def _existing(self, request: PassRequest) -> PassRequest | Outcome:
        """Decide the row whose user holds a pass usable or not yet valid (pass.existing
        skip: someone may have handed it out; replace: only this journal's own is kept).

        A pass this journal issued (found by its method id: the row names the person
        differently now) is skipped as already issued for the same start, replaced for a
        moved one. Any other pass in force is not this journal's to vouch for: skipped,
        counted apart (`held_elsewhere`), or failed when it cannot serve the first day."""
        held = await self._ask(self.client.current_pass, request.user)
        replacing = self.config.pass_.existing == "replace"
        if isinstance(held, GraphError) and held.status != 404 and replacing:
            return request  # replace issues anyway: the listing only looked for our own pass
        if isinstance(held, GraphError):
            return _not_listed(request, held, self.config.run.max_attempts)
        now = datetime.now(UTC)
        if held is not None and held.in_force(now):
            ours = self.issued_by(held.method_id)
            return _pass_in_force(request, held, ours, now, replacing=replacing)
        return request

    async def _screen(self, request: PassRequest) -> PassRequest | Outcome:
        roles, methods = await asyncio.gather(
            self._read(self.roles, self.client.directory_roles, request.user),
            self._read(self.methods, self.client.methods, request.user),
        )
        if roles is None or methods is None:
            return not_sent(request)  # stopped before it was known what a 403 meant
        problem = _account_problem(request, roles, methods)
        if problem is None:
            return request
        if request.key in self.allowed or (request.sheet_value or "").casefold() in self.allowed:
            return _with_note(
                request, f"issued on purpose (--allow-user): {problem[1].split('. ')[0]}"
            )
        return _refused_account(request, problem, self.config.input.key_column)

    async def _read(
        self, permission: Permission, ask: Callable[[str], Any], user: str
    ) -> list[str] | GraphError | None:
        """A user's roles or methods: [] where the app may not read them at all, the
        GraphError where Graph would not say for this user, None if stopped meanwhile."""
        if permission.denied:
            return []  # not asked: the app may not (saves the budget too)
        answer = await self._ask(ask, user)
        permission.answered(answer)
        if not _denied(answer):
            return answer  # type: ignore[no-any-return]
        if not await permission.settled(self.stop):
            return None
        return [] if permission.denied else answer  # type: ignore[no-any-return]

    def summary(self) -> tuple[list[tuple[str, str]], list[str]]:
        """The Summary's lines on the account checks, and the checks that could not be made."""
        if not self.screening:
            return [("Existing accounts", "not checked (pass.allow_existing_accounts: true)")], []
        return _what_was_checked(unread_roles=self.roles.denied, unread_methods=self.methods.denied)


async def check_all(
    checks: RowChecks, requests: list[PassRequest]
) -> tuple[list[PassRequest], list[Outcome]]:
    """`checks.check` for every row (`onboard validate`, which sends nothing): the rows that
    would be sent, and every other row's outcome."""
    fates: dict[int, PassRequest | Outcome] = {}

    async def one(index: int) -> None:
        fates[index] = await checks.check(requests[index])

    await run_each(range(len(requests)), one, concurrency=checks.config.run.concurrency,
                   stop=checks.stop, grace_seconds=0)  # fmt: skip
    keep: list[PassRequest] = []
    decided: list[Outcome] = []
    for index, request in enumerate(requests):
        fate = fates.get(index, request)  # not asked: the run was asked to stop
        if isinstance(fate, PassRequest):
            keep.append(fate)
        else:
            decided.append(fate)
    return keep, decided


def _what_was_checked(
    *, unread_roles: bool, unread_methods: bool
) -> tuple[list[tuple[str, str]], list[str]]:
    """The Summary's lines on the account checks, and the checks that could not be made (for
    the run's attention list); a check the app may not make is also logged, once, with the
    permission that would allow it."""
    notes = [
        ("Admin roles", f"not checked: the app lacks {ROLES_PERMISSION}")
        if unread_roles
        else ("Admin roles", "checked: users holding a directory role are refused"),
        ("Sign-in methods", f"not checked: the app lacks {METHODS_PERMISSION}")
        if unread_methods
        else ("Sign-in methods", "checked: users who already have strong methods are refused"),
    ]
    unchecked: list[str] = []
    if unread_roles:
        log.warning(
            "cannot read users' directory roles (the app lacks %s): a user holding an admin role "
            "is not refused; grant it so that a sheet cannot name an administrator",
            ROLES_PERMISSION,
        )
        unchecked.append(
            f"users' admin roles were not checked: grant the app {ROLES_PERMISSION}, or set "
            "pass.allow_existing_accounts: true to accept that a sheet may name an admin"
        )
    if unread_methods:
        log.warning(
            "cannot list users' authentication methods (the app lacks %s): a user who already "
            "signs in with Authenticator, a security key or Windows Hello is not refused",
            METHODS_PERMISSION,
        )
        unchecked.append(
            f"users' sign-in methods were not checked: grant the app {METHODS_PERMISSION}, or "
            "set pass.allow_existing_accounts: true"
        )
    return notes, unchecked


def _refused_account(
    request: PassRequest, problem: tuple[Reason, str, GraphError | None], key_column: str
) -> Failed:
    """The row of a user who may not get a pass from a sheet. An earlier send for the row (a
    stopped run, a doubtful request) may have made a pass all the same: the row says so."""
    reason, detail, error = problem
    earlier = request.prior_attempts > 0 or request.doubtful
    return Failed(
        request.origin, request.user, reason, detail,
        http_status=error.status if error else None,
        graph_code=error.code if error else None,
        request_id=error.request_id if error else None,
        column=request.header(key_column), may_have_pass=earlier,
    )  # fmt: skip


def _denied(answer: object) -> bool:
    return isinstance(answer, GraphError) and answer.status == 403


def _account_problem(
    request: PassRequest,
    roles: list[str] | GraphError,
    methods: list[str] | GraphError,
) -> tuple[Reason, str, GraphError | None] | None:
    """Why this user may not get a pass from a sheet (reason, detail, Graph's error), or None."""
    for answer in (roles, methods):
        if isinstance(answer, GraphError) and answer.status == 404:
            reason, detail = explain(answer, request.user, 1)
            return reason, detail, answer
        if isinstance(answer, GraphError):
            return (
                Reason.ACCOUNT_UNKNOWN,
                f"Graph would not say whether {request.user} holds an admin role or already has "
                f"sign-in methods (HTTP {answer.status}: {answer.message}), so no pass was "
                "created. Run again later.",
                answer,
            )
    allow = f"--allow-user {request.sheet_value or request.user}"
    if isinstance(roles, list) and roles:
        return (
            Reason.ADMIN_ROLE,
            f"{request.user} holds the directory role(s) {', '.join(sorted(roles))}. A pass for "
            "an administrator is not issued from a spreadsheet: whoever can edit the sheet could "
            "otherwise take over an admin account. If it is deliberate, run again with "
            f"{allow} (recorded in the audit).",
            None,
        )
    strong = strong_methods(methods) if isinstance(methods, list) else []

    if strong:
        return (
            Reason.HAS_METHODS,
            f"{request.user} already signs in with {', '.join(strong)}: not a new hire, and a "
            "pass would let whoever holds it register their own methods on this account. If it "
            f"is deliberate (a lost phone, say), run again with {allow} (recorded in the audit).",
            None,
        )
    return None


async def check_first(
    run: RunSettings,
    client: GraphClient,
    to_check: list[CheckFirst],
    stop: asyncio.Event | None,
) -> tuple[list[PassRequest], list[Outcome]]:
    """The rows whose earlier pass Graph no longer holds (to be sent again), and the outcome
    of the others: skipped where Graph holds that very pass, not sent if stopped first.

    Graph is asked only once run.settle_seconds have passed since the last request of unknown
    fate for each row was sent (the journal knows when): a request that lands late would
    otherwise replace the pass the check found.
    """
    if not to_check:
        return [], []
    now = datetime.now(UTC)
    wait = max(
        settle_wait(c.previous.last_sent, now, run.settle_seconds, c.previous.sent_ago)
        for c in to_check
    )
    if wait > 0:
        log.info("waiting %.1f s for earlier requests to settle before asking Graph", wait)
        if await stopped_within(stop, wait):
            return [], [not_sent(c.request) for c in to_check]  # not asked, so not sent
    answers = await ask_all(
        [c.request.user for c in to_check],
        client.current_pass_id,
        concurrency=run.concurrency,
        retries=retries_for(run),
    )
    send: list[PassRequest] = []
    decided: list[Outcome] = []
    for check in to_check:
        held = answers[check.request.user]
        if held is not None and held == check.previous.method_id:
            decided.append(already_issued(check.request, check.previous, confirmed=True))
            continue
        why = (
            f"could not ask Graph (HTTP {held.status})"
            if isinstance(held, GraphError)
            else "Graph no longer holds it (a later request of unknown fate replaced it)"
        )
        note = f"the pass run {check.previous.run_id} issued may not stand: {why}; issued again"
        send.append(replace(check.request, note=_join(check.request.note, note), doubtful=True))
    return send, decided


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second
