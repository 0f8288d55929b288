"""A sending rate per Graph budget: token buckets whose rates follow Graph's answers.

Graph budgets writes (creates, deletes) apart from the resource units every request spends
(reads above all), so a run has one controller per budget (`Pacing`): each request asks the
controller of the budget it spends first. Each controller's rate starts at its ceiling
(`run.max_rate` for writes, `run.max_read_rate` for resource units) and adapts below it:

- a 429 on its budget pauses the requests that spend that budget (and only those) until its
  Retry-After has passed (requests sent while throttled still count against the budget) and
  cuts the rate to CUT of what it was; the 429s of requests that were already on their way
  when the rate was cut do not cut again;
- `x-ms-throttle-limit-percentage` (sent by Graph once more than 80% of the budget is used)
  steers the rate before any 429: down as the figure rises, up as it falls, towards keeping
  TARGET_USAGE of the budget used;
- while answers come back clean without the header, the rate climbs (if Graph never sends
  the header, slowly near the rate it last throttled).

The sleeping is done by `acquire`; the decisions are plain methods on a clock, so they are
tested with a fake clock and no real waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# Documented limits (GRAPH_FACTS.md, "Throttling"): per app and tenant about 3,000 writes per
# 150 s, i.e. 20 creates/s sustained after a burst; resource units 3,500 per 10 s for the
# smallest tenants. The ceiling stays well under the resource-unit budget; the adaptive rate
# below it finds the app's own write budget from Graph's answers.
DEFAULT_MAX_RATE = 150.0
MIN_RATE = 1.0  # never slower than one request a second, except while paused
CUT = 0.7  # the rate after a 429, as a share of the rate that was throttled
WARN_AT = 0.8  # Graph sends x-ms-throttle-limit-percentage from here on
NO_WARNING = 0.7  # the usage assumed when Graph sends no header
TARGET_USAGE = 0.99  # keep the budget nearly spent: unspent budget is time lost
PROPORTIONAL = 8.0  # usage 0.8 -> 1.0 cuts the rate to e**-1.6, a fifth
INTEGRAL = 1.0  # per second, per unit of usage away from the target
NEAR = 0.9  # within this share of the rate Graph last throttled, if Graph never warns ...
NEAR_SLOWDOWN = 0.2  # ... climb five times more slowly
RECHECK_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Ticket:
    """Handed out with every permission to send; brought back with the answer."""

    sent_at: float


class RateController:
    def __init__(
        self,
        max_rate: float = DEFAULT_MAX_RATE,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_rate <= 0:
            raise ValueError("max_rate must be positive")
        self.max_rate = float(max_rate)
        self.min_rate = min(MIN_RATE, self.max_rate)
        self.rate = self.max_rate
        self._clock = clock
        self._sleep = sleep
        self._next = clock()  # the earliest time the next request may go
        self._until = 0.0  # everybody waits until then (a Retry-After)
        self._line = asyncio.Lock()  # requests wait for their turn in order
        self._cut_at = -1.0  # when the rate was last cut: older requests' answers don't cut
        self._usage = WARN_AT  # the last budget usage Graph reported (or assumed)
        self._throttled_rate: float | None = None  # the rate at which Graph last said 429
        self._steered_at = clock()
        self._first_send: float | None = None
        self._last_answer: float | None = None
        # What the Summary reports.
        self.requests = 0
        self.throttles = 0
        self.warnings = 0
        self.paused_seconds = 0.0

    # --- asking to send ----------------------------------------------------------------
    def wait_for(self, count: int = 1) -> float:
        """Seconds until `count` requests may go at the current rate and pause (0: now)."""
        now = self._clock()
        # A batch of `count` waits until `count` requests' worth of the rate is free.
        return max(now, self._until, self._next + (count - 1) / self.rate) - now

    def take(self, count: int = 1) -> Ticket:
        """Book the requests as sent now."""
        now = self._clock()
        self._next = now + 1 / self.rate  # smooth pacing: no credit saved up while idle
        if self._first_send is None:
            self._first_send = now
        self.requests += count
        return Ticket(now)

    async def acquire(self, count: int = 1) -> Ticket:
        """Wait until `count` requests (a batch counts each of its requests) may be sent.

        Callers queue in order; the one at the front waits for its time, looking again at
        least every RECHECK_SECONDS, so a pause or a change of rate applies at once, also to
        requests already waiting.
        """
        async with self._line:
            while (delay := self.wait_for(count)) > 0:
                await self._sleep(min(delay, RECHECK_SECONDS))
            return self.take(count)

    # --- what Graph answered -----------------------------------------------------------
    def hold(self, seconds: float) -> None:
        """Pause every request for `seconds` (a Retry-After), without changing the rate."""
        now = self._clock()
        until = now + max(0.0, seconds)
        if until <= self._until:
            return
        self.paused_seconds += until - max(now, self._until)
        self._until = until

    def throttled(self, ticket: Ticket, retry_after: float, count: int = 1) -> None:
        """A 429 (`count` of them, from one batch): everybody pauses for `retry_after`; the
        rate is cut once per episode."""
        self.throttles += count
        self._answered()
        self.hold(retry_after)
        if ticket.sent_at >= self._cut_at:
            self._throttled_rate = self.rate
            self._cut(CUT)

    def answered(self, ticket: Ticket, usage: float | None = None) -> None:
        """Any other answer; `usage` is x-ms-throttle-limit-percentage when Graph sent it."""
        now = self._answered()
        if usage is not None and usage >= WARN_AT:
            self.warnings += 1
        self._steer(now, usage)

    def _steer(self, now: float, usage: float | None) -> None:
        # A proportional-integral controller on how much of the budget is used: the rate
        # falls as usage rises (and rises as it falls), and drifts towards keeping usage at
        # TARGET_USAGE. Without the header, usage is only known to be under 80%: climb, more
        # slowly near the rate Graph last throttled.
        elapsed = min(max(now - self._steered_at, 0.0), 1.0)
        self._steered_at = now
        if usage is None:
            # Usage fell below 80% (or Graph does not send the header): undo what the warnings
            # took off on the way up, then keep climbing; if Graph never warns, slowly near
            # the rate it last throttled.
            growth = INTEGRAL * (TARGET_USAGE - NO_WARNING) * elapsed
            throttled = self._throttled_rate
            if not self.warnings and throttled is not None and self.rate >= NEAR * throttled:
                growth *= NEAR_SLOWDOWN  # no warning will come before the next 429: tiptoe
            change = growth - PROPORTIONAL * (WARN_AT - self._usage)
            self._usage = WARN_AT
        else:
            # Above 1.0 Graph is refusing requests (429s: handled by `throttled`): steering
            # further on it would only overshoot on the way back.
            usage = min(usage, 1.0)
            change = -PROPORTIONAL * (usage - self._usage)
            change -= INTEGRAL * (usage - TARGET_USAGE) * elapsed
            self._usage = usage
        self.rate = min(self.max_rate, max(self.min_rate, self.rate * math.exp(change)))

    def _answered(self) -> float:
        now = self._clock()
        self._last_answer = now
        return now

    def _cut(self, factor: float) -> None:
        now = self._clock()
        self.rate = max(self.min_rate, self.rate * factor)
        self._cut_at = now
        self._steered_at = now

    # --- for the Summary ---------------------------------------------------------------
    @property
    def effective_rate(self) -> float | None:
        """Requests per second from the first send to the last answer."""
        if self._first_send is None or self._last_answer is None:
            return None
        elapsed = self._last_answer - self._first_send
        return self.requests / elapsed if elapsed > 0 else None

    def book(self, count: float) -> None:
        """Count `count` units spent without waiting for them (a write's resource unit, or a
        read that cost more than it was booked for): the next request waits for them."""
        if count <= 0:
            return
        now = self._clock()
        self._next = max(self._next, now) + count / self.rate


class Budget(StrEnum):
    """Graph's budgets (per app and tenant): writes (creates, deletes: 3,000 per 150 s), and
    resource units, which every request spends (reads: 3,500 to 8,000 per 10 s by tenant size).
    A read never waits on the write pacing, and a 429 on one budget pauses only its own.
    Mail (sendMail) has Exchange's own limits per sending mailbox, apart from both."""

    WRITES = "writes"
    READS = "resource units"
    MAIL = "mail"


# x-ms-throttle-information names the budget a 429 came from; without it, the request's own.
THROTTLE_INFORMATION = {
    "WriteLimitExceeded": Budget.WRITES,
    "ResourceUnitLimitExceeded": Budget.READS,
}
# The resource units Graph charged for a request (reads cost 1 to 5 by path and query).
RESOURCE_UNIT_HEADER = "x-ms-resource-unit"
# Graph's resource-unit budget for the largest tenants: 8,000 per 10 s (GRAPH_FACTS.md).
DEFAULT_MAX_READ_RATE = 800.0
# Exchange Online's sending limits per mailbox (GRAPH_FACTS.md, "Delivering passes by mail"):
# 30 messages a minute, 4 concurrent requests, 10,000 recipients a day. A 429 beyond them says
# ApplicationThrottled and carries a Retry-After.
MAILBOX_MESSAGES_PER_MINUTE = 30
MAILBOX_CONCURRENCY = 4
MAILBOX_RECIPIENTS_PER_DAY = 10_000
SECONDS_PER_MINUTE = 60.0
# Exchange counts a minute by when messages arrive, not when they were sent: pacing a little
# under the limit keeps network jitter from tipping the 31st message of a minute into a 429.
MAIL_HEADROOM = 0.95


class Pacing:
    """A rate controller per budget: `writes` in requests per second, `reads` in resource
    units per second, `mail` in messages per second (per sending mailbox: a run sends from
    one). Each write also spends a resource unit: booked on the read side without waiting, so
    reads leave room for it."""

    def __init__(
        self,
        max_rate: float = DEFAULT_MAX_RATE,
        max_read_rate: float = DEFAULT_MAX_READ_RATE,
        *,
        max_mail_per_minute: float = MAILBOX_MESSAGES_PER_MINUTE,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.writes = RateController(max_rate, clock=clock, sleep=sleep)
        self.reads = RateController(max_read_rate, clock=clock, sleep=sleep)
        self.mail = RateController(
            max_mail_per_minute * MAIL_HEADROOM / SECONDS_PER_MINUTE, clock=clock, sleep=sleep
        )

    def __getitem__(self, budget: Budget) -> RateController:
        if budget is Budget.MAIL:
            return self.mail
        return self.writes if budget is Budget.WRITES else self.reads

    def throttled_budget(self, information: str | None, own: Budget) -> Budget:
        """The budget a 429 was for: as x-ms-throttle-information names it, else the
        request's own (`information` is a header value, compared as Graph documents it)."""
        return THROTTLE_INFORMATION.get((information or "").strip(), own)

    @property
    def requests(self) -> int:
        return self.writes.requests + self.reads.requests

    @property
    def throttles(self) -> int:
        return self.writes.throttles + self.reads.throttles
