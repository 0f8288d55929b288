"""The worker pool: how many requests at once, and what each row ends as.

"What to do with one row" is the `create` callable (GraphClient.create_pass); this module only
decides how many run at once, retries them, and turns every result into an outcome. Rows are
unique per user before they get here (reader.plan), so no two requests for one user are ever in
flight. An AuthError stops the pool: rows not yet sent end as Failed "Not sent".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .config import RunSettings
from .errors import AuthError, GraphError, JournalWriteError, TransientError
from .graph import CreatedPass, explain, unusable_pass
from .outcomes import (
    Failed,
    Issued,
    Origin,
    Outcome,
    PassRequest,
    Reason,
    interrupted,
    not_sent,
    refused_before_stop,
)
from .retrying import RETRYABLE, Retries, is_unclear, with_retries

log = logging.getLogger(__name__)

Create = Callable[[PassRequest], Awaitable[CreatedPass]]
CreateBatch = Callable[[Sequence[PassRequest]], Awaitable[list[CreatedPass | GraphError]]]
OnOutcome = Callable[[Outcome], None]
OnSend = Callable[[PassRequest], None]
Durable = Callable[[], Awaitable[None]]
DEFAULT_GRACE_SECONDS = 15.0
CREATED = 201  # the status of a create Graph accepted, shown on a row whose pass is unusable


@dataclass(slots=True)
class PoolResult:
    outcomes: list[Outcome] = field(default_factory=list)
    aborted: AuthError | None = None
    retries: int = 0
    # Rows issued after an attempt of unknown fate, with when (time.monotonic) that attempt ended.
    unclear: dict[Origin, float] = field(default_factory=dict)


async def issue_all(
    requests: Sequence[PassRequest],
    create: Create,
    *,
    concurrency: int,
    retries: Retries,
    on_outcome: OnOutcome | None = None,
    on_send: OnSend | None = None,
    stop: asyncio.Event | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    create_batch: CreateBatch | None = None,
    batch_size: int = 1,
    durable: Durable | None = None,
) -> PoolResult:
    """Issue one pass per request, `concurrency` workers; every row gets an outcome.

    How fast requests go is the rate controller's business (see rate.py); the workers only
    bound how many are in flight. With `batch_size` > 1 and `create_batch`, a worker sends up to
    `batch_size` rows in one JSON batch. `on_send` runs before every request (the journal marks
    the row in flight); `on_outcome` as soon as a row's outcome is known. Where they only queue
    the journal write, `durable` is awaited after each: before the request goes, and before the
    worker takes another row. Once `stop` is set, no new row is started; rows in flight get
    `grace_seconds` to finish, then are cancelled.
    """
    result = PoolResult()
    queue: asyncio.Queue[PassRequest] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    batching = create_batch is not None and batch_size > 1

    in_hand: dict[Origin, PassRequest] = {}
    sent: dict[Origin, int] = {}  # attempts made so far, per row
    flying: set[Origin] = set()  # rows with a request on its way now
    # Rows that may hold a pass from a request of unknown fate (this run's, or an earlier
    # run's); a request Graph answered (429, 503, 400...) made none.
    doubt: set[Origin] = set()

    def stopped(request: PassRequest, cause: str | None = None) -> Failed:
        """The outcome of a row the run stopped before it finished."""
        attempts = sent.get(request.origin, request.prior_attempts)
        if request.origin in flying or request.origin in doubt:
            return interrupted(request.origin, request.user, attempts)
        if cause is None and attempts > request.prior_attempts:
            return refused_before_stop(request, attempts)
        return not_sent(request, cause)

    def record(outcome: Outcome) -> None:
        in_hand.pop(outcome.origin, None)
        result.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    def ended(outcome: Failed) -> None:
        """A row the run stopped before it finished: logged, as every row's outcome is."""
        where = f"{outcome.origin.source} row {outcome.origin.row} {outcome.user}"
        log.info("%s: %s", where, outcome.shown)
        record(outcome)

    def issued(
        request: PassRequest, created: CreatedPass, unclear: float | None
    ) -> Issued | Failed:
        if created.unusable:
            return not_usable(request, created, unclear)
        if unclear is not None:
            result.unclear[request.origin] = unclear
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
            sent[request.origin],
            created.request_id,
            created.note,
            unconfirmed=unclear is not None,
        )

    def not_usable(request: PassRequest, created: CreatedPass, unclear: float | None) -> Failed:
        """A 201 whose pass Graph says nobody can sign in with (DisabledByPolicy...): not a
        success. Its value is dropped; its method id is kept, so it can be revoked."""
        reason, detail = unusable_pass(created, request.user)
        log.warning(
            "%s row %d %s: %s (method %s, request-id %s)",
            request.origin.source,
            request.origin.row,
            request.user,
            reason,
            created.method_id,
            created.request_id,
        )
        return Failed(
            request.origin,
            request.user,
            reason,
            detail,
            CREATED,
            None,
            sent[request.origin],
            created.request_id,
            may_have_pass=unclear is not None,
            method_id=created.method_id,
        )

    def failed(request: PassRequest, exc: GraphError, unclear: float | None) -> Failed:
        attempts = sent.get(request.origin, request.prior_attempts)
        reason, detail = explain(exc, request.user, attempts)
        log.warning(
            "%s row %d %s: %s (HTTP %s, request-id %s)",
            request.origin.source,
            request.origin.row,
            request.user,
            reason,
            exc.status,
            exc.request_id,
        )
        return Failed(
            request.origin,
            request.user,
            reason,
            detail,
            exc.status,
            exc.code,
            attempts,
            exc.request_id,
            may_have_pass=unclear is not None or request.prior_attempts > 0 or _made(exc),
        )

    def answered(request: PassRequest, exc: GraphError) -> None:
        log.debug(
            "row %s %s attempt %d: HTTP %s %s",
            request.origin.row,
            request.user,
            sent[request.origin],
            exc.status,
            exc.code,
        )

    def first_doubt(request: PassRequest) -> float | None:
        # A row sent before by a run that stopped: that request's fate is unknown too.
        if request.prior_attempts or request.doubtful:
            doubt.add(request.origin)
            return time.monotonic()
        return None

    async def one(request: PassRequest) -> None:
        unclear = first_doubt(request)

        async def attempt(number: int) -> CreatedPass:
            nonlocal unclear
            sent[request.origin] = request.prior_attempts + number
            if number > 1:
                result.retries += 1
            if on_send is not None:
                on_send(request)
            if durable is not None:
                await durable()
            flying.add(request.origin)
            try:
                return await create(request)
            except GraphError as exc:
                if is_unclear(exc):
                    unclear = time.monotonic()
                    doubt.add(request.origin)
                answered(request, exc)
                raise
            finally:
                flying.discard(request.origin)

        try:
            created = await with_retries(attempt, retries)
        except GraphError as exc:
            record(failed(request, exc, unclear))
            return
        record(issued(request, created, unclear))

    async def several(batch: list[PassRequest]) -> None:
        """One JSON batch; rows whose sub-request must be retried go again, after the wait."""
        assert create_batch is not None
        unclear = {r.origin: first_doubt(r) for r in batch}
        remaining = list(batch)
        last: dict[Origin, GraphError] = {}

        async def attempt(number: int) -> None:
            nonlocal remaining
            for request in remaining:
                sent[request.origin] = request.prior_attempts + number
                if on_send is not None:
                    on_send(request)
            if durable is not None:
                await durable()
            if number > 1:
                result.retries += len(remaining)
            flying.update(r.origin for r in remaining)
            try:
                answers = await create_batch(remaining)
            except GraphError as exc:  # the whole batch: refused, or its answer lost
                for request in remaining:
                    if is_unclear(exc):
                        unclear[request.origin] = time.monotonic()
                        doubt.add(request.origin)
                    answered(request, exc)
                last.clear()
                raise
            finally:
                flying.difference_update(r.origin for r in remaining)
            again: list[PassRequest] = []
            waits: list[float] = []
            for request, answer in zip(remaining, answers, strict=True):
                if isinstance(answer, CreatedPass):
                    record(issued(request, answer, unclear[request.origin]))
                elif isinstance(answer, RETRYABLE):
                    if is_unclear(answer):
                        unclear[request.origin] = time.monotonic()
                        doubt.add(request.origin)
                    answered(request, answer)
                    last[request.origin] = answer
                    again.append(request)
                    if answer.retry_after is not None:
                        waits.append(answer.retry_after)
                else:
                    record(failed(request, answer, unclear[request.origin]))
            remaining = again
            if remaining:
                if durable is not None:
                    await durable()  # the passes issued so far, on disk before the wait
                # Retried together, after the longest Retry-After among them.
                raise TransientError(
                    f"{len(remaining)} requests in the batch must be retried",
                    status=last[remaining[0].origin].status,
                    retry_after=max(waits) if waits else None,
                )

        try:
            await with_retries(attempt, retries)
        except GraphError as exc:
            for request in remaining:
                record(failed(request, last.get(request.origin, exc), unclear[request.origin]))

    def take() -> list[PassRequest]:
        batch: list[PassRequest] = []
        while len(batch) < (batch_size if batching else 1):
            try:
                batch.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def worker() -> None:
        while result.aborted is None and not (stop is not None and stop.is_set()):
            batch = take()
            if not batch:
                return
            for request in batch:
                in_hand[request.origin] = request
            try:
                if batching:
                    await several(batch)
                else:
                    await one(batch[0])
                if durable is not None:
                    await durable()
            except AuthError as exc:
                if result.aborted is None:
                    result.aborted = exc
                for request in batch:
                    if request.origin in in_hand:
                        # the request refused for the token made no pass; earlier ones may have
                        flying.discard(request.origin)
                        ended(stopped(request, str(exc)))
            except JournalWriteError:
                raise  # stop the run: no pass may be handed out that the journal cannot keep
            except Exception as exc:  # a bug must not lose a row: report it and go on
                log.exception("unexpected error for rows %s", [r.origin.row for r in batch])
                for request in batch:
                    if request.origin in in_hand:
                        record(
                            Failed(
                                request.origin,
                                request.user,
                                Reason.INTERNAL_ERROR,
                                f"{type(exc).__name__} while issuing; report this to onboard's "
                                "maintainers",
                                may_have_pass=request.origin in sent,
                            )
                        )

    workers = [
        asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(requests))))
    ]
    try:
        await _until_done_or_stopped(workers, stop, grace_seconds)
    except BaseException:
        for task in workers:
            task.cancel()
        raise
    for request in list(in_hand.values()):
        ended(stopped(request))
    while not queue.empty():
        request = queue.get_nowait()
        ended(not_sent(request, str(result.aborted) if result.aborted else None))
    return result


async def _until_done_or_stopped(
    workers: list[asyncio.Task[None]], stop: asyncio.Event | None, grace_seconds: float
) -> None:
    everything: asyncio.Future[list[None]] = asyncio.gather(*workers)
    # When we are cancelled (a second signal), the workers are cancelled too: read the result
    # so asyncio does not report an exception "never retrieved".
    everything.add_done_callback(lambda f: f.cancelled() or f.exception())
    if stop is None:
        await everything
        return
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        pending: list[asyncio.Future[Any]] = [everything, stopping]
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if everything.done():
            await _raise_if_failed(everything, workers)
            return
        log.warning(
            "stopping: no new rows; waiting up to %.0f s for requests in flight", grace_seconds
        )
        # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancel (a second signal)
        # that arrives just as the last request in flight finishes.
        done, _ = await asyncio.wait([everything], timeout=grace_seconds)
        if done:
            await _raise_if_failed(everything, workers)
        else:
            await _stop_all(workers)
    finally:
        stopping.cancel()


async def _raise_if_failed(
    everything: asyncio.Future[Any], workers: list[asyncio.Task[None]]
) -> None:
    """A worker that raised (a journal that cannot be written) stops the run: the others are
    stopped and waited for, then its error goes on up. asyncio.wait alone would swallow it."""
    if everything.cancelled() or everything.exception() is None:
        return
    await _stop_all(workers)
    raise everything.exception()  # type: ignore[misc]


async def _stop_all(workers: list[asyncio.Task[None]]) -> None:
    """Cancel the workers and wait until each has finished with its cancellation."""
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


Current = Callable[[str], Awaitable[str | None]]
K = TypeVar("K", bound=Hashable)
A = TypeVar("A")


@dataclass(slots=True)
class Confirmation:
    confirmed: list[Issued] = field(default_factory=list)  # Graph holds exactly this pass
    replaced: list[Issued] = field(default_factory=list)  # Graph holds another: issue again
    unknown: list[Issued] = field(default_factory=list)  # could not ask; kept, with a note


async def current_passes(
    users: Sequence[str],
    current: Current,
    *,
    concurrency: int,
    retries: Retries,
) -> dict[str, str | GraphError | None]:
    """Ask Graph which pass (method id) each user holds now; a GraphError where it would not say."""
    return await ask_all(users, current, concurrency=concurrency, retries=retries)


async def ask_all(
    keys: Iterable[K],
    ask: Callable[[K], Awaitable[A]],
    *,
    concurrency: int,
    retries: Retries,
    stop: asyncio.Event | None = None,
) -> dict[K, A | GraphError]:
    """`ask(key)` for every distinct key, `concurrency` at a time, each retried as a create
    would be: the answer, or the GraphError that ended its tries. Nothing is created. Once
    `stop` is set no key is asked again: those keys have no answer.

    `concurrency` workers share one iterator of the keys, so 100,000 keys cost 100,000
    answers, not 100,000 waiting tasks."""
    answers: dict[K, A | GraphError] = {}
    todo = iter(dict.fromkeys(keys))

    class Stopped(Exception):
        pass

    async def worker() -> None:
        for key in todo:

            async def attempt(_: int, key: K = key) -> A:
                if stop is not None and stop.is_set():
                    raise Stopped
                return await ask(key)

            try:
                answers[key] = await with_retries(attempt, retries)
            except GraphError as exc:
                answers[key] = exc
            except Stopped:
                return

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return answers


async def confirm(
    issued: Sequence[Issued],
    current: Current,
    *,
    concurrency: int,
    retries: Retries,
) -> Confirmation:
    """Ask Graph which pass each user holds now, for passes issued after an unclear attempt.

    A request that timed out may still complete at Graph after its retry did; its pass then
    replaces the one we were given. Comparing method ids finds those users.
    """
    answers = await current_passes(
        [item.request.user for item in issued],
        current,
        concurrency=concurrency,
        retries=retries,
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


def retries_for(run: RunSettings) -> Retries:
    """The retry policy run.* sets (attempts, first wait, longest wait)."""
    return Retries(run.max_attempts, run.backoff_seconds, run.backoff_max_seconds)


async def stopped_within(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait `seconds`, or less if asked to stop; True if asked to stop."""
    if stop is None:
        await asyncio.sleep(max(0.0, seconds))
        return False
    if seconds <= 0:
        return stop.is_set()
    # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancel (a second signal) that
    # arrives as the event is already set.
    waiter = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([waiter], timeout=seconds)
    finally:
        waiter.cancel()
    return bool(done)
