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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import AuthError, GraphError
from .graph import CreatedPass, explain
from .outcomes import Failed, Issued, Origin, Outcome, PassRequest, interrupted, not_sent
from .retrying import RETRYABLE, Sleep, ThrottleGate, is_unclear, make_retrying

log = logging.getLogger(__name__)

Create = Callable[[PassRequest], Awaitable[CreatedPass]]
OnOutcome = Callable[[Outcome], None]
OnSend = Callable[[PassRequest], None]
DEFAULT_GRACE_SECONDS = 15.0


@dataclass(slots=True)
class PoolResult:
    outcomes: list[Outcome] = field(default_factory=list)
    aborted: AuthError | None = None
    retries: int = 0
    throttled: int = 0
    # Rows issued after an attempt of unknown fate, with when (time.monotonic) that attempt ended.
    unclear: dict[Origin, float] = field(default_factory=dict)


async def issue_all(
    requests: Sequence[PassRequest],
    create: Create,
    *,
    concurrency: int,
    max_attempts: int,
    backoff_seconds: float = 1.0,
    backoff_max_seconds: float = 60.0,
    gate: ThrottleGate | None = None,
    sleep: Sleep = asyncio.sleep,
    on_outcome: OnOutcome | None = None,
    on_send: OnSend | None = None,
    stop: asyncio.Event | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> PoolResult:
    """Issue one pass per request, at most `concurrency` in flight; every row gets an outcome.

    `on_send` runs before every request (the journal marks the row in flight); `on_outcome` as
    soon as a row's outcome is known, before its worker takes another row. Once `stop` is set,
    no new row is started; rows in flight get `grace_seconds` to finish, then are cancelled.
    """
    gate = gate or ThrottleGate(limit=concurrency, sleep=sleep)
    result = PoolResult()
    queue: asyncio.Queue[PassRequest] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    in_hand: dict[Origin, PassRequest] = {}
    sent: dict[Origin, int] = {}  # attempts made so far, per row

    def record(outcome: Outcome) -> None:
        in_hand.pop(outcome.origin, None)
        result.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    async def one(request: PassRequest) -> Outcome:
        retrying = make_retrying(
            max_attempts=max_attempts,
            gate=gate,
            backoff_seconds=backoff_seconds,
            backoff_max_seconds=backoff_max_seconds,
            sleep=sleep,
        )
        attempts = 0
        # A row sent before by a run that stopped: that request's fate is unknown too.
        doubtful = request.prior_attempts or request.doubtful
        unclear: float | None = time.monotonic() if doubtful else None
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = request.prior_attempts + attempt.retry_state.attempt_number
                    sent[request.origin] = attempts
                    if attempt.retry_state.attempt_number > 1:
                        result.retries += 1
                    async with gate.slot():
                        if on_send is not None:
                            on_send(request)
                        try:
                            created = await create(request)
                        except GraphError as exc:
                            if is_unclear(exc):
                                unclear = time.monotonic()
                            if exc.status == 429:
                                result.throttled += 1
                            elif not isinstance(exc, RETRYABLE):
                                gate.answered()
                            log.debug(
                                "row %s %s attempt %d: HTTP %s %s",
                                request.origin.row,
                                request.user,
                                attempts,
                                exc.status,
                                exc.code,
                            )
                            raise
                        gate.answered()
        except GraphError as exc:
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
                may_have_pass=unclear is not None or request.prior_attempts > 0,
            )
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
            attempts,
            created.request_id,
            created.note,
            unconfirmed=unclear is not None,
        )

    async def worker() -> None:
        while result.aborted is None and not (stop is not None and stop.is_set()):
            try:
                request = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            in_hand[request.origin] = request
            try:
                record(await one(request))
            except AuthError as exc:
                if result.aborted is None:
                    result.aborted = exc
                record(not_sent(request, str(exc)))
            except Exception as exc:  # a bug must not lose the row: report it and go on
                log.exception("unexpected error for row %d", request.origin.row)
                record(
                    Failed(
                        request.origin,
                        request.user,
                        "Internal error",
                        f"{type(exc).__name__} while issuing; report this to onboard's maintainers",
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
        attempts = sent.get(request.origin, request.prior_attempts)
        record(interrupted(request.origin, request.user, attempts))
    while not queue.empty():
        request = queue.get_nowait()
        record(not_sent(request, str(result.aborted) if result.aborted else None))
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
            return
        log.warning(
            "stopping: no new rows; waiting up to %.0f s for requests in flight", grace_seconds
        )
        try:
            await asyncio.wait_for(asyncio.shield(everything), grace_seconds)
        except TimeoutError:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    finally:
        stopping.cancel()


Current = Callable[[str], Awaitable[str | None]]


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
    max_attempts: int,
    backoff_seconds: float = 1.0,
    backoff_max_seconds: float = 60.0,
    sleep: Sleep = asyncio.sleep,
) -> dict[str, str | GraphError | None]:
    """Ask Graph which pass (method id) each user holds now; a GraphError where it would not say."""
    gate = ThrottleGate(limit=concurrency, sleep=sleep)
    answers: dict[str, str | GraphError | None] = {}

    async def ask(user: str) -> None:
        retrying = make_retrying(
            max_attempts=max_attempts,
            gate=gate,
            backoff_seconds=backoff_seconds,
            backoff_max_seconds=backoff_max_seconds,
            sleep=sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with gate.slot():
                        answers[user] = await current(user)
        except GraphError as exc:
            answers[user] = exc

    await asyncio.gather(*(ask(user) for user in dict.fromkeys(users)))
    return answers


async def confirm(
    issued: Sequence[Issued],
    current: Current,
    *,
    concurrency: int,
    max_attempts: int,
    backoff_seconds: float = 1.0,
    backoff_max_seconds: float = 60.0,
    sleep: Sleep = asyncio.sleep,
) -> Confirmation:
    """Ask Graph which pass each user holds now, for passes issued after an unclear attempt.

    A request that timed out may still complete at Graph after its retry did; its pass then
    replaces the one we were given. Comparing method ids finds those users.
    """
    answers = await current_passes(
        [item.request.user for item in issued],
        current,
        concurrency=concurrency,
        max_attempts=max_attempts,
        backoff_seconds=backoff_seconds,
        backoff_max_seconds=backoff_max_seconds,
        sleep=sleep,
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


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second
