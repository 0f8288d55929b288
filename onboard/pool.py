"""The per-row work of sending: issue one pass (or one $batch of them), retry it, and say what
each row ended as; then confirm passes whose request had an unclear answer.

How many at once and how to stop is runner.run_each's business; how fast, the rate
controller's; what an error means to a person, the `explain` and `unusable` functions the
caller passes in (graph.py's). Every row's fate goes to one Sink. Rows are unique per user
before they get here (reader.plan), so no two requests for one user are ever in flight. An
AuthError stops the pool: rows not yet sent end as "Not sent".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from .config import RunSettings
from .errors import AuthError, GraphError, JournalWriteError, TransientError
from .graph import CreatedPass
from .outcomes import (
    Failed,
    Issued,
    Origin,
    Outcome,
    PassRequest,
    Reason,
    Skipped,
    interrupted,
    not_sent,
    refused_before_stop,
)
from .retrying import RETRYABLE, Retries, Sleep, is_unclear, retries_for, with_retries
from .runner import ask_all, run_taking, stopped_within

log = logging.getLogger(__name__)

Create = Callable[[PassRequest], Awaitable[CreatedPass]]
CreateBatch = Callable[[Sequence[PassRequest]], Awaitable[list[CreatedPass | GraphError]]]
Current = Callable[[str], Awaitable[str | None]]
Explain = Callable[[GraphError, str, int], tuple[Reason, str]]
Check = Callable[[PassRequest], Awaitable[PassRequest | Outcome]]
AHEAD = 2  # rows checked ahead of the creates, per worker
# A row's check is two round trips one after the other (its pass, then its roles and methods
# at once) where its create is one: twice the workers keep the creates fed when answers are
# slow; the read budget's own controller still paces them.
CHECKERS_PER_WORKER = 2
Unusable = Callable[[CreatedPass, str], tuple[Reason, str]]
CREATED = 201  # the status of a create Graph accepted, shown on a row whose pass is unusable
CONFIRM_ROUNDS = 3
_REISSUE_NOTE = "issued again: a slower earlier request had replaced the first pass"
_UNCONFIRMED_NOTE = (
    "not yet confirmed with Graph after an unclear attempt (the run was stopped): the next run "
    "checks it"
)


class Sink(Protocol):
    """Where what happens to each row goes (for a run: its report, journal and progress)."""

    def sending(self, request: PassRequest) -> None:
        """A request for this row is about to go (the journal marks it in flight)."""

    def outcome(self, outcome: Outcome, *, again: bool = False) -> None:
        """The row's outcome, as soon as it is known (`again`: in place of its earlier one)."""

    async def durable(self) -> None:
        """Everything given so far is on disk."""

    def flush(self) -> None:
        """Write whatever is waiting, now (also when the run is torn down)."""

    def unconfirmed(self) -> list[Issued]:
        """The passes issued after an unclear attempt, not yet confirmed with Graph."""


@dataclass(frozen=True, slots=True)
class Sender:
    """What sending needs from Graph: a create, a batch of them, and the pass a user holds."""

    create: Create
    create_batch: CreateBatch | None
    current_pass_id: Current
    explain: Explain
    unusable: Unusable


@dataclass(slots=True)
class PoolResult:
    aborted: AuthError | None = None
    retries: int = 0
    stopped: bool = False  # asked to stop: some rows were not sent, or not confirmed
    # Rows issued after an attempt of unknown fate, with when (time.monotonic) that attempt ended.
    unclear: dict[Origin, float] = field(default_factory=dict)


async def send(
    requests: Sequence[PassRequest],
    sender: Sender,
    sink: Sink,
    run: RunSettings,
    stop: asyncio.Event | None = None,
    *,
    sleep: Sleep = asyncio.sleep,
    check: Check | None = None,
) -> PoolResult:
    """Issue a pass for each request (each first passing `check`, run ahead of the creates),
    then make sure each pass issued after an unclear attempt
    is the one Graph holds: once run.settle_seconds have passed since that attempt, ask Graph;
    issue again where a slower request replaced it (CONFIRM_ROUNDS times at most)."""
    result = PoolResult()
    try:
        await _send(requests, sender, sink, run, stop, sleep, check, result)
    finally:
        sink.flush()
    return result


async def _send(
    requests: Sequence[PassRequest],
    sender: Sender,
    sink: Sink,
    run: RunSettings,
    stop: asyncio.Event | None,
    sleep: Sleep,
    check: Check | None,
    result: PoolResult,
) -> None:
    await issue_all(requests, sender, sink, run, stop, sleep=sleep, check=check, result=result)
    if stop is not None and stop.is_set():
        result.stopped = True
    sent_at = dict(result.unclear)  # resumed ones: now, later than any of the stopped run's
    given_up: set[Origin] = set()
    for _ in range(CONFIRM_ROUNDS):
        suspects = [i for i in sink.unconfirmed() if i.origin not in given_up]
        if not suspects:
            return
        settled_at = max(sent_at.get(i.origin, time.monotonic()) for i in suspects)
        if result.stopped or await stopped_within(
            stop, settled_at + run.settle_seconds - time.monotonic()
        ):
            # Stopping: leave them flagged in the journal; the next run checks them with Graph.
            result.stopped = True
            for item in suspects:
                sink.outcome(replace(item, note=_join(item.note, _UNCONFIRMED_NOTE)), again=True)
            return
        found = await confirm(suspects, sender.current_pass_id, run, sleep)
        for item in found.confirmed + found.unknown:
            sink.outcome(item, again=True)
        await sink.durable()
        given_up.update(item.origin for item in found.unknown)
        if not found.replaced:
            return
        for item in found.replaced:
            log.warning(
                "%s row %d %s: Graph holds a different pass than the one it returned (a slower "
                "earlier request finished late); issuing again",
                item.origin.source,
                item.origin.row,
                item.request.user,
            )
        again = [
            replace(i.request, note=_REISSUE_NOTE, prior_attempts=i.attempts)
            for i in found.replaced
        ]
        await issue_all(again, sender, _Again(sink), run, stop, sleep=sleep, result=result)
        sent_at.update(result.unclear)  # the latest unclear attempt of each row
    for item in [i for i in sink.unconfirmed() if i.origin not in given_up]:
        sink.outcome(
            Failed(
                item.origin,
                item.request.user,
                Reason.NOT_CONFIRMED,
                "Graph kept holding a different pass than the one it returned. Run this row again.",
                attempts=item.attempts,
                request_id=item.request_id,
                may_have_pass=True,
            ),
            again=True,
        )


async def issue_all(
    requests: Sequence[PassRequest],
    sender: Sender,
    sink: Sink,
    run: RunSettings,
    stop: asyncio.Event | None = None,
    *,
    sleep: Sleep = asyncio.sleep,
    check: Check | None = None,
    result: PoolResult | None = None,
) -> PoolResult:
    """Issue one pass per request, run.concurrency workers; every row gets an outcome.

    With `check`, each row is checked first (reads: the pass its user holds, the account)
    by CHECKERS_PER_WORKER x run.concurrency workers of their own, running ahead of the
    creates as far as AHEAD rows per worker: the creates never wait for a read, and memory
    stays bounded. A row the check decides goes to the sink with its outcome. With
    run.batch_size > 1 (and a batch create), a worker sends up to that many rows in one JSON
    batch. Before every request the sink hears of it (and the worker waits until that is
    durable); each outcome goes to the sink as soon as it is known. Once `stop` is set no new
    row is started; rows in flight get run.stop_grace_seconds to finish, then are cancelled.
    """
    result = result if result is not None else PoolResult()
    issuer = _Issuer(sender, sink, retries_for(run, sleep), result)
    size = run.batch_size if sender.create_batch is not None and run.batch_size > 1 else 1
    feed = _Feed(requests, check, sink, result, stop, ahead=AHEAD * max(run.concurrency, size))
    checking = asyncio.create_task(feed.run(CHECKERS_PER_WORKER * run.concurrency))
    try:
        await run_taking(
            lambda: feed.take(size),
            issuer.handle,
            concurrency=run.concurrency,
            stop=stop,
            grace_seconds=run.stop_grace_seconds,
            halt=lambda: result.aborted is not None,
        )
        for request in list(issuer.in_hand.values()):
            issuer.ended(issuer.stopped(request))
        await feed.close(checking)
        cause = f"sign-in failed: {result.aborted}" if result.aborted else None
        for request in feed.leftover():
            issuer.ended(not_sent(request, cause))
    finally:
        checking.cancel()
        sink.flush()  # the rows the pool ended itself (interrupted, not sent), or on a crash
    return result


class _Feed:
    """The rows ready to send: checked first when there is a `check` (its own workers, ahead
    of the creates by at most `ahead` rows), else simply in order."""

    def __init__(
        self,
        requests: Sequence[PassRequest],
        check: Check | None,
        sink: Sink,
        result: PoolResult,
        stop: asyncio.Event | None,
        *,
        ahead: int,
    ) -> None:
        self.todo: Iterator[PassRequest] = iter(requests)
        self.check = check
        self.sink = sink
        self.result = result
        self.stop = stop
        self.ready: deque[PassRequest] = deque()
        self.checking: dict[Origin, PassRequest] = {}  # rows whose check is under way
        self.space = asyncio.Semaphore(max(1, ahead))
        self.changed = asyncio.Event()
        self.done = check is None  # unchecked rows are taken straight from `todo`

    def stopping(self) -> bool:
        return self.result.aborted is not None or (self.stop is not None and self.stop.is_set())

    async def run(self, concurrency: int) -> None:
        """Check every row (`concurrency` at once) and queue those to send."""
        if self.check is None:
            return
        try:
            await run_taking(
                self._next,
                self._one,
                concurrency=concurrency,
                stop=self.stop,
                grace_seconds=0,
                halt=lambda: self.result.aborted is not None,
            )
        finally:
            self.done = True
            self.changed.set()

    async def _next(self) -> PassRequest | None:
        return next(self.todo, None)

    async def _one(self, request: PassRequest) -> None:
        assert self.check is not None
        self.checking[request.origin] = request
        try:
            fate = await self.check(request)
        except AuthError as exc:
            if self.result.aborted is None:
                self.result.aborted = exc
            return  # left over: not sent
        except Exception as exc:  # a bug must not lose a row: report it and go on
            log.exception("unexpected error checking row %s", request.origin.row)
            fate = Failed(request.origin, request.user, Reason.INTERNAL_ERROR,
                          f"{type(exc).__name__} while checking; report this to onboard's "
                          "maintainers", may_have_pass=request.prior_attempts > 0)  # fmt: skip
        if not isinstance(fate, PassRequest):
            del self.checking[request.origin]
            if not isinstance(fate, Issued):
                _log_decided(fate)
            self.sink.outcome(fate)
            return
        await self.space.acquire()  # far enough ahead: wait for the creates to take some
        del self.checking[request.origin]
        self.ready.append(fate)
        self.changed.set()

    async def take(self, size: int) -> list[PassRequest] | None:
        """`size` rows ready to send (fewer only once the checks are over: a batch is not sent
        a row at a time while more are coming), or None when there are no more, or the run is
        stopping. The checks may run `ahead` >= 2 x size rows ahead, so a full batch comes."""
        while not self.stopping():
            if self.check is None:
                batch = list(itertools.islice(self.todo, size))
                return batch or None
            if len(self.ready) >= size or (self.ready and self.done):
                batch = [self.ready.popleft() for _ in range(min(size, len(self.ready)))]
                for _ in batch:
                    self.space.release()
                return batch
            if self.done:
                return None
            self.changed.clear()
            await _first(self.changed, self.stop)
        return None

    async def close(self, checking: asyncio.Task[None]) -> None:
        """The checks are over, or stopped: a stop leaves reads in flight unanswered."""
        if self.stopping():
            checking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checking

    def leftover(self) -> list[PassRequest]:
        """The rows never sent: checked and waiting, being checked, or never checked."""
        rows = [*self.ready, *self.checking.values(), *self.todo]
        self.ready.clear()
        self.checking.clear()
        return rows


def _log_decided(outcome: Failed | Skipped) -> None:
    """The log line of a row its check decided (--log-file gets one per row)."""
    where = f"{outcome.origin.source} row {outcome.origin.row} {outcome.user or '-'}"
    if isinstance(outcome, Failed):
        log.warning("%s: %s: %s", where, outcome.shown, outcome.detail)
    else:
        log.info("%s: skipped: %s", where, outcome.detail)


async def _first(event: asyncio.Event, stop: asyncio.Event | None) -> None:
    """Wait until `event` or `stop` is set."""
    if stop is None:
        await event.wait()
        return
    waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


@dataclass(slots=True)
class _Issuer:
    """The work for one row, or one batch of rows: attempts, retries, and each row's outcome."""

    sender: Sender
    sink: Sink
    retries: Retries
    result: PoolResult
    in_hand: dict[Origin, PassRequest] = field(default_factory=dict)
    sent: dict[Origin, int] = field(default_factory=dict)  # attempts made so far, per row
    flying: set[Origin] = field(default_factory=set)  # rows with a request on its way now
    # Rows that may hold a pass from a request of unknown fate (this run's, or an earlier
    # run's); a request Graph answered (429, 503, 400...) made none.
    doubt: set[Origin] = field(default_factory=set)

    async def handle(self, batch: list[PassRequest]) -> None:
        for request in batch:
            self.in_hand[request.origin] = request
        try:
            if len(batch) > 1:
                await self.several(batch)
            else:
                await self.one(batch[0])
            await self.sink.durable()
        except AuthError as exc:
            if self.result.aborted is None:
                self.result.aborted = exc
            for request in batch:
                if request.origin in self.in_hand:
                    # the request refused for the token made no pass; earlier ones may have
                    self.flying.discard(request.origin)
                    self.ended(self.stopped(request, f"sign-in failed: {exc}"))
        except JournalWriteError:
            raise  # stop the run: no pass may be handed out that the journal cannot keep
        except Exception as exc:  # a bug must not lose a row: report it and go on
            log.exception("unexpected error for rows %s", [r.origin.row for r in batch])
            for request in batch:
                if request.origin in self.in_hand:
                    self.record(
                        Failed(
                            request.origin,
                            request.user,
                            Reason.INTERNAL_ERROR,
                            f"{type(exc).__name__} while issuing; report this to onboard's "
                            "maintainers",
                            may_have_pass=request.origin in self.sent,
                        )
                    )

    def stopped(self, request: PassRequest, cause: str | None = None) -> Failed:
        """The outcome of a row the run stopped before it finished."""
        attempts = self.sent.get(request.origin, request.prior_attempts)
        if request.origin in self.flying or request.origin in self.doubt:
            return interrupted(request.origin, request.user, attempts)
        if cause is None and attempts > request.prior_attempts:
            return refused_before_stop(request, attempts)
        return not_sent(request, cause)

    def record(self, outcome: Outcome) -> None:
        self.in_hand.pop(outcome.origin, None)
        self.sink.outcome(outcome)

    def ended(self, outcome: Failed) -> None:
        """A row the run stopped before it finished: logged, as every row's outcome is."""
        log.info("%s row %d %s: %s", outcome.origin.source, outcome.origin.row, outcome.user,
                 outcome.shown)  # fmt: skip
        self.record(outcome)

    def issued(
        self, request: PassRequest, created: CreatedPass, unclear: float | None
    ) -> Issued | Failed:
        if created.unusable:
            return self.not_usable(request, created, unclear)
        if unclear is not None:
            self.result.unclear[request.origin] = unclear
        log.info(
            "%s row %d %s: pass issued (method %s, request-id %s)",
            request.origin.source,
            request.origin.row,
            request.user,
            created.method_id,
            created.request_id,
        )
        return Issued(
            request,
            created.value,
            created.method_id,
            created.starts,
            created.expires,
            created.lifetime_minutes,
            created.usable_once,
            created.created,
            self.sent[request.origin],
            created.request_id,
            created.note,
            unconfirmed=unclear is not None,
        )

    def not_usable(
        self, request: PassRequest, created: CreatedPass, unclear: float | None
    ) -> Failed:
        """A 201 whose pass Graph says nobody can sign in with (DisabledByPolicy...): not a
        success. Its value is dropped; its method id is kept, so it can be revoked."""
        reason, detail = self.sender.unusable(created, request.user)
        log.warning("%s row %d %s: %s (method %s, request-id %s)", request.origin.source,
                    request.origin.row, request.user, reason, created.method_id,
                    created.request_id)  # fmt: skip
        return Failed(
            request.origin, request.user, reason, detail, CREATED, None,
            self.sent[request.origin], created.request_id,
            may_have_pass=unclear is not None, method_id=created.method_id,
        )  # fmt: skip

    def failed(self, request: PassRequest, exc: GraphError, unclear: float | None) -> Failed:
        attempts = self.sent.get(request.origin, request.prior_attempts)
        reason, detail = self.sender.explain(exc, request.user, attempts)
        log.warning("%s row %d %s: %s (HTTP %s, request-id %s)", request.origin.source,
                    request.origin.row, request.user, reason, exc.status,
                    exc.request_id)  # fmt: skip
        return Failed(
            request.origin, request.user, reason, detail, exc.status, exc.code, attempts,
            exc.request_id,
            may_have_pass=unclear is not None or request.prior_attempts > 0 or _made(exc),
        )  # fmt: skip

    def answered(self, request: PassRequest, exc: GraphError) -> None:
        log.debug("row %s %s attempt %d: HTTP %s %s", request.origin.row, request.user,
                  self.sent[request.origin], exc.status, exc.code)  # fmt: skip

    def first_doubt(self, request: PassRequest) -> float | None:
        # A row sent before by a run that stopped: that request's fate is unknown too.
        if request.prior_attempts or request.doubtful:
            self.doubt.add(request.origin)
            return time.monotonic()
        return None

    async def going(self, requests: Sequence[PassRequest], number: int) -> None:
        """Before an attempt: count it, tell the sink, and wait until that is on disk."""
        for request in requests:
            self.sent[request.origin] = request.prior_attempts + number
            self.sink.sending(request)
        if number > 1:
            self.result.retries += len(requests)
        await self.sink.durable()

    def unclear_answer(self, request: PassRequest, exc: GraphError) -> bool:
        if is_unclear(exc):
            self.doubt.add(request.origin)
            return True
        return False

    async def one(self, request: PassRequest) -> None:
        unclear = self.first_doubt(request)

        async def attempt(number: int) -> CreatedPass:
            nonlocal unclear
            await self.going([request], number)
            self.flying.add(request.origin)
            try:
                return await self.sender.create(request)
            except GraphError as exc:
                if self.unclear_answer(request, exc):
                    unclear = time.monotonic()
                self.answered(request, exc)
                raise
            finally:
                self.flying.discard(request.origin)

        try:
            created = await with_retries(attempt, self.retries)
        except GraphError as exc:
            self.record(self.failed(request, exc, unclear))
            return
        self.record(self.issued(request, created, unclear))

    async def several(self, batch: list[PassRequest]) -> None:
        """One JSON batch; rows whose sub-request must be retried go again, after the wait."""
        create_batch = self.sender.create_batch
        assert create_batch is not None
        unclear = {r.origin: self.first_doubt(r) for r in batch}
        remaining = list(batch)
        last: dict[Origin, GraphError] = {}

        async def attempt(number: int) -> None:
            nonlocal remaining
            await self.going(remaining, number)
            self.flying.update(r.origin for r in remaining)
            try:
                answers = await create_batch(remaining)
            except GraphError as exc:  # the whole batch: refused, or its answer lost
                for request in remaining:
                    if self.unclear_answer(request, exc):
                        unclear[request.origin] = time.monotonic()
                    self.answered(request, exc)
                last.clear()
                raise
            finally:
                self.flying.difference_update(r.origin for r in remaining)
            again: list[PassRequest] = []
            waits: list[float] = []
            for request, answer in zip(remaining, answers, strict=True):
                if isinstance(answer, CreatedPass):
                    self.record(self.issued(request, answer, unclear[request.origin]))
                elif isinstance(answer, RETRYABLE):
                    if self.unclear_answer(request, answer):
                        unclear[request.origin] = time.monotonic()
                    self.answered(request, answer)
                    last[request.origin] = answer
                    again.append(request)
                    if answer.retry_after is not None:
                        waits.append(answer.retry_after)
                else:
                    self.record(self.failed(request, answer, unclear[request.origin]))
            remaining = again
            if remaining:
                await self.sink.durable()  # the passes issued so far, on disk before the wait
                # Retried together, after the longest Retry-After among them.
                raise TransientError(
                    f"{len(remaining)} requests in the batch must be retried",
                    status=last[remaining[0].origin].status,
                    retry_after=max(waits) if waits else None,
                )

        try:
            await with_retries(attempt, self.retries)
        except GraphError as exc:
            for request in remaining:
                failure = last.get(request.origin, exc)
                self.record(self.failed(request, failure, unclear[request.origin]))


class _Again:
    """A sink that puts each outcome in place of the row's earlier one (a pass issued again)."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def sending(self, request: PassRequest) -> None:
        self._sink.sending(request)

    def outcome(self, outcome: Outcome, *, again: bool = False) -> None:
        self._sink.outcome(outcome, again=True)

    async def durable(self) -> None:
        await self._sink.durable()

    def flush(self) -> None:
        self._sink.flush()

    def unconfirmed(self) -> list[Issued]:
        return self._sink.unconfirmed()


@dataclass(slots=True)
class Confirmation:
    confirmed: list[Issued] = field(default_factory=list)  # Graph holds exactly this pass
    replaced: list[Issued] = field(default_factory=list)  # Graph holds another: issue again
    unknown: list[Issued] = field(default_factory=list)  # could not ask; kept, with a note


async def confirm(
    issued: Sequence[Issued], current: Current, run: RunSettings, sleep: Sleep = asyncio.sleep
) -> Confirmation:
    """Ask Graph which pass each user holds now, for passes issued after an unclear attempt.

    A request that timed out may still complete at Graph after its retry did; its pass then
    replaces the one we were given. Comparing method ids finds those users.
    """
    answers = await ask_all(
        [item.request.user for item in issued],
        current,
        concurrency=run.concurrency,
        retries=retries_for(run, sleep),
    )
    found = Confirmation()
    for item in issued:
        held = answers[item.request.user]
        if isinstance(held, GraphError):
            note = (
                f"could not confirm with Graph (HTTP {held.status}) after an unclear attempt: if "
                "this pass does not work, run this row again"
            )
            found.unknown.append(replace(item, note=_join(item.note, note)))
        elif held == item.method_id:
            note = "confirmed with Graph after an unclear attempt"
            found.confirmed.append(replace(item, note=_join(item.note, note), unconfirmed=False))
        else:
            found.replaced.append(item)
    return found


def _made(exc: GraphError) -> bool:
    """A create answered with success but unreadable (too large, no pass in it): the pass may
    exist, and nobody has its value."""
    return exc.status is not None and 200 <= exc.status < 300


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second
