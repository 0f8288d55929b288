"""The shared rate controller on a virtual clock: no real sleeping anywhere."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from conftest import FakeClock

from onboard.graph import GraphClient
from onboard.rate import CUT, Budget, Pacing, RateController, Ticket


def controller(max_rate: float = 10.0) -> tuple[RateController, FakeClock]:
    time = FakeClock()
    return RateController(max_rate, clock=time, sleep=time.sleep), time


def test_requests_are_paced_at_the_rate() -> None:
    """At 10 requests/s, five workers asking at once are let through 0.1 s apart."""
    rate, time = controller(10.0)

    async def main() -> list[float]:
        tickets = await asyncio.gather(*(rate.acquire() for _ in range(5)))
        return sorted(t.sent_at for t in tickets)

    assert time.run(main) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_a_429_pauses_every_worker_until_retry_after_has_passed() -> None:
    """One worker's 429 with Retry-After 2.5 s holds back the others, even those already
    waiting for their turn; after the pause they go again, paced."""
    rate, time = controller(10.0)
    sent: list[float] = []

    async def worker() -> None:
        for _ in range(3):
            ticket = await rate.acquire()
            sent.append(ticket.sent_at)

    async def main() -> None:
        first = await rate.acquire()  # t=0
        workers = [asyncio.ensure_future(worker()) for _ in range(4)]
        await time.sleep(0.05)  # the answer to the first request comes back: throttled
        rate.throttled(first, 2.5)
        await asyncio.gather(*workers)

    time.run(main)
    later = sorted(sent)
    assert len(later) == 12
    # Nobody sent during the pause, though four were due at 0.1 s to 0.4 s.
    assert later[0] == pytest.approx(2.55)
    assert rate.paused_seconds == pytest.approx(2.5)
    assert rate.throttles == 1
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert min(gaps) >= 1 / rate.max_rate - 1e-9  # paced after the pause: no herd


def test_429s_of_requests_already_in_flight_cut_the_rate_once() -> None:
    """Five requests sent before the first 429 all come back 429: one cut, not five."""
    rate, time = controller(100.0)
    tickets = [Ticket(0.0) for _ in range(5)]
    time.now = 0.05
    for ticket in tickets:
        rate.throttled(ticket, 0.2)
    once = rate.rate
    assert once == pytest.approx(100.0 * CUT)
    time.now = 0.3
    rate.throttled(Ticket(0.26), 0.2)  # sent after the cut, still refused: cut again
    assert rate.rate < once


def test_decimal_and_date_retry_after_both_pause_for_that_long() -> None:
    """Retry-After '2.128' pauses 2.128 s; an HTTP date 7 s ahead pauses about 7 s."""
    for header, seconds in (
        ("2.128", 2.128),
        # An HTTP date has whole seconds: 7.5 s ahead, cut to the second, is 6.5 to 7.5 s away.
        (format_datetime(datetime.now(timezone.utc) + timedelta(seconds=7.5), usegmt=True), 7.0),
    ):
        time = FakeClock()
        pacing = Pacing(10.0, clock=time, sleep=time.sleep)
        rate = pacing.writes
        client = GraphClient(None, "https://graph.invalid", None, pacing=pacing)  # type: ignore[arg-type]
        client._judge(Budget.WRITES, Ticket(0.0), [(429, {"retry-after": header})])

        async def main(rate: RateController = rate) -> float:
            return (await rate.acquire()).sent_at

        assert time.run(main) == pytest.approx(seconds, abs=1.0 if "GMT" in header else 1e-6)


def test_throttle_percentage_slows_before_any_429_and_clean_answers_climb_back() -> None:
    """Rising x-ms-throttle-limit-percentage lowers the rate with no 429 at all; once Graph
    stops warning, clean answers raise it again, up to the ceiling and never past it."""
    rate, time = controller(100.0)
    seen = []
    for step, usage in enumerate([0.82, 0.86, 0.9, 0.94, 0.98, 1.0]):
        time.now = 0.05 * (step + 1)
        rate.answered(Ticket(time.now - 0.05), usage)
        seen.append(rate.rate)
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] < 40.0  # a fifth-ish of the ceiling by the time the budget is spent
    assert rate.throttles == 0 and rate.warnings == 6
    low = rate.rate
    for _ in range(1, 200):
        time.now += 0.1
        rate.answered(Ticket(time.now - 0.05), None)
    assert rate.rate > 2 * low
    assert rate.rate == 100.0


def test_warnings_that_ease_let_the_rate_recover() -> None:
    """Usage falling back (the budget refilling) raises the rate again, header or not."""
    rate, time = controller(100.0)
    time.now = 0.1
    rate.answered(Ticket(0.05), 1.0)
    after_peak = rate.rate
    time.now = 0.2
    rate.answered(Ticket(0.15), 0.85)
    assert rate.rate > after_peak


def test_never_below_the_floor_and_the_summary_figures() -> None:
    """However many 429s, the rate stays at or above its floor; the Summary figures add up."""
    rate, time = controller(20.0)

    async def main() -> None:
        for _ in range(30):
            ticket = await rate.acquire()
            time.now += 0.01
            rate.throttled(ticket, 0.1)

    time.run(main)
    assert rate.rate >= rate.min_rate > 0
    assert rate.throttles == 30 and rate.requests == 30
    assert rate.paused_seconds == pytest.approx(3.0, rel=0.05)
    assert rate.effective_rate is not None and rate.effective_rate > 0


def test_a_batch_waits_for_its_share_of_the_rate() -> None:
    """At 10 requests/s, a batch of 5 after a single request goes 0.5 s later, not 0.1 s."""
    rate, time = controller(10.0)

    async def main() -> list[float]:
        first = await rate.acquire()
        batch = await rate.acquire(5)
        after = await rate.acquire()
        return [first.sent_at, batch.sent_at, after.sent_at]

    assert time.run(main) == pytest.approx([0.0, 0.5, 0.6])
    assert rate.requests == 7
