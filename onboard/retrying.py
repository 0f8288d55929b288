"""What is retried, how long to wait, and the pause every worker obeys.

Retried: 429, 500, 502, 503, 504, timeouts and dropped connections (ThrottledError and
TransientError). Everything else is a definite answer and becomes a Failed outcome at once.
A server's Retry-After wins; otherwise exponential backoff with full jitter. A Retry-After (or
a 429 without one) holds *all* workers through the shared ThrottleGate, because requests sent
while throttled still count against the tenant's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.wait import wait_base

from .errors import ThrottledError, TransientError

RETRYABLE = (ThrottledError, TransientError)
# Answers after which Graph may or may not have created the pass: no answer at all, or a
# gateway/server failure that can happen after the work was done.
UNCLEAR_STATUS = frozenset({500, 502, 504})
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 600.0
MAX_SPREAD_SECONDS = 5.0

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


def is_unclear(exc: BaseException) -> bool:
    """True when a failed create may still have created a pass (so the result must be checked)."""
    return isinstance(exc, TransientError) and (exc.status is None or exc.status in UNCLEAR_STATUS)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: decimal seconds or an HTTP date.

    Returns None for a missing or unreadable value; never negative; capped at 10 minutes.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class ThrottleGate:
    """What every worker obeys before sending: a shared pause, and a shared concurrency limit.

    `hold(seconds)` pauses everyone (a Retry-After). A 429 (`throttled`) also halves the number
    of requests allowed in flight; each run of clean answers as long as the limit raises it by
    one again, up to the configured concurrency (additive increase, multiplicative decrease).
    """

    def __init__(
        self,
        *,
        limit: int = 1_000_000,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.max_limit = limit
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter or (lambda spread: random.uniform(0, spread))  # noqa: S311
        self._until = 0.0
        self._spread = 0.0
        self._in_flight = 0
        self._clean = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def hold(self, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._until:
            self._until = until
            self._spread = seconds

    def throttled(self, seconds: float) -> None:
        self.hold(seconds)
        self.limit = max(1, self.limit // 2)
        self._clean = 0

    def answered(self) -> None:
        """A request got a definite answer (not throttled, not a server error)."""
        self._clean += 1
        if self._clean >= self.limit and self.limit < self.max_limit:
            self.limit += 1
            self._clean = 0
            self._wake()

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self) -> None:
        # Waiting workers wake spread over one more hold's length, not all at the same instant:
        # a herd released together would spend the fresh budget at once and be throttled again.
        while (remaining := self.remaining) > 0:
            delay = remaining + self._jitter(min(self._spread, MAX_SPREAD_SECONDS))
            await self._sleep(delay)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait out any pause and for a free place under the limit; hold it while sending."""
        while True:
            await self.wait()
            if self._in_flight < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._wake()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _wake(self) -> None:
        free = self.limit - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class wait_server_hint(wait_base):
    """The server's Retry-After when it sent one; else exponential backoff with jitter.

    The backoff doubles with each failure that came *without* a hint, so a row that waited out
    a few 429s does not then jump to a long wait on its first 503. A 429 also tells the gate,
    which pauses every worker and lowers the concurrency limit.
    """

    def __init__(
        self,
        gate: ThrottleGate,
        *,
        initial: float,
        maximum: float,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.gate = gate
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter or (lambda spread: random.uniform(0, spread))  # noqa: S311
        self.unhinted = 0

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            delay = float(hint)
        else:
            self.unhinted += 1
            delay = min(self.maximum, self.initial * 2 ** (self.unhinted - 1))
            delay += self.jitter(min(self.initial, self.maximum))
        if isinstance(exc, ThrottledError):
            self.gate.throttled(delay)
        elif hint is not None:
            self.gate.hold(delay)
        return delay


def make_retrying(
    *,
    max_attempts: int,
    gate: ThrottleGate,
    backoff_seconds: float,
    backoff_max_seconds: float,
    sleep: Sleep = asyncio.sleep,
) -> AsyncRetrying:
    """The retry policy for one create request."""
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_server_hint(gate, initial=backoff_seconds, maximum=backoff_max_seconds),
        retry=retry_if_exception_type(RETRYABLE),
        sleep=sleep,
        reraise=True,
    )
