"""How many at once, and how to stop: a bounded runner for any work, apart from the work itself.

    run_each(items, work, concurrency=..., stop=..., grace_seconds=...)
    run_taking(take, work, ...)   the same, each worker awaiting take() for its next item
        `concurrency` workers take items from one iterator (100,000 items cost no waiting
        tasks) and await `work(item)`. Once `stop` is set (or `halt()` says so) no new item is
        taken; work in flight gets `grace_seconds` to finish, then is cancelled. An exception
        from `work` stops every worker and goes on up. Returns the items never taken.

    ask_all(keys, ask, concurrency=..., retries=..., stop=...)
        `ask(key)` for every distinct key, each retried as retrying.py says: the answer, or the
        GraphError that ended its tries (reads: existing passes, lookups, account checks).

What to do with one item (issue a pass, read a user's roles) is the caller's; how fast
requests go is the rate controller's (rate.py). Like aiometer's run_on_each, kept apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from typing import Any, TypeVar

from .errors import GraphError
from .retrying import Retries, with_retries

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
DEFAULT_GRACE_SECONDS = 15.0


async def run_each(
    items: Iterable[T],
    work: Callable[[T], Awaitable[None]],
    *,
    concurrency: int,
    stop: asyncio.Event | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    halt: Callable[[], bool] = lambda: False,
) -> list[T]:
    """Run `work` over `items`, `concurrency` at once (see the module's docstring); return the
    items never taken."""
    todo: Iterator[T] = iter(items)

    async def take() -> T | None:
        return next(todo, None)

    await run_taking(take, work, concurrency=concurrency, stop=stop,
                     grace_seconds=grace_seconds, halt=halt)  # fmt: skip
    return list(todo)


async def run_taking(
    take: Callable[[], Awaitable[T | None]],
    work: Callable[[T], Awaitable[None]],
    *,
    concurrency: int,
    stop: asyncio.Event | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    halt: Callable[[], bool] = lambda: False,
) -> None:
    """As run_each, but each worker awaits `take()` for its next item (None: no more): items
    that become ready as others are worked on (rows checked ahead of their create)."""

    def taking() -> bool:
        return not halt() and not (stop is not None and stop.is_set())

    async def worker() -> None:
        while taking():
            item = await take()
            if item is None:
                return
            await work(item)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    try:
        await _until_done_or_stopped(workers, stop, grace_seconds)
    except BaseException:
        for task in workers:
            task.cancel()
        raise


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
    `stop` is set no key is asked again (a retry included): those keys have no answer."""
    answers: dict[K, A | GraphError] = {}

    class Stopped(Exception):
        pass

    async def one(key: K) -> None:
        async def attempt(_: int) -> A:
            if stop is not None and stop.is_set():
                raise Stopped
            return await ask(key)

        try:
            answers[key] = await with_retries(attempt, retries)
        except GraphError as exc:
            answers[key] = exc
        except Stopped:
            pass

    await run_each(dict.fromkeys(keys), one, concurrency=concurrency, grace_seconds=0)
    return answers


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
