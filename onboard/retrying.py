"""What is retried, how long to wait, and the pause every worker obeys.

Retried: 429, 500, 502, 503, 504, timeouts and dropped connections (ThrottledError and
TransientError). Everything else is a definite answer and becomes a Failed outcome at once.
A server's Retry-After wins; otherwise exponential backoff with full jitter. Holding back the
other workers too (requests sent while throttled still count against the tenant's budget) is
done by the one rate controller every request passes through (rate.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.wait import wait_base

from .config import RunSettings
from .errors import ThrottledError, TransientError

RETRYABLE = (ThrottledError, TransientError)
# Answers after which Graph may or may not have created the pass: no answer at all, or a
# gateway/server failure that can happen after the work was done.
UNCLEAR_STATUS = frozenset({500, 502, 504})
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 600.0
MAX_SPREAD_SECONDS = 5.0

T = TypeVar("T")
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


class wait_server_hint(wait_base):
    """The server's Retry-After when it sent one; else exponential backoff with jitter.

    The backoff doubles with each failure that came *without* a hint, so a row that waited out
    a few 429s does not then jump to a long wait on its first 503. (Pausing the *other* workers
    on a 429 is the rate controller's job: see rate.py.)
    """

    def __init__(
        self,
        *,
        initial: float,
        maximum: float,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter or (lambda spread: random.uniform(0, spread))  # noqa: S311
        self.unhinted = 0

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        return self.after(outcome.exception() if outcome is not None else None)

    def after(self, exc: BaseException | None) -> float:
        """How long to wait after this failure."""
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            delay = float(hint)
        else:
            self.unhinted += 1
            delay = min(self.maximum, self.initial * 2 ** (self.unhinted - 1))
            delay += self.jitter(min(self.initial, self.maximum))
        return delay


@dataclass(frozen=True, slots=True)
class Retries:
    """How often and how patiently one request is tried (run.max_attempts, run.backoff_*)."""

    max_attempts: int
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    sleep: Sleep = asyncio.sleep


def retries_for(run: RunSettings, sleep: Sleep = asyncio.sleep) -> Retries:
    """The retry policy run.* sets (attempts, first wait, longest wait); `sleep` waits."""
    return Retries(run.max_attempts, run.backoff_seconds, run.backoff_max_seconds, sleep)


async def with_retries(attempt: Callable[[int], Awaitable[T]], retries: Retries) -> T:
    """`attempt(1)`, then as many more as the policy allows while it fails retryably.

    The first try runs outside tenacity and the rest through it: nearly every request
    succeeds at once, and at 100,000 rows tenacity's setup for each call (about 70 us) is a
    measurable share of the client's time. The waits and the attempt limit are the same.
    """
    try:
        return await attempt(1)
    except RETRYABLE as exc:
        if retries.max_attempts <= 1:
            raise
        wait = wait_server_hint(
            initial=retries.backoff_seconds, maximum=retries.backoff_max_seconds
        )
        await retries.sleep(wait.after(exc))
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries.max_attempts - 1),
        wait=wait,
        retry=retry_if_exception_type(RETRYABLE),
        sleep=retries.sleep,
        reraise=True,
    )
    async for again in retrying:
        with again:
            return await attempt(again.retry_state.attempt_number + 1)
    raise AssertionError("tenacity stops by raising")
