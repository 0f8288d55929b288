"""Retry-After parsing, the shared pause, and the concurrency limit, on a fake clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from onboard.retrying import ThrottleGate, parse_retry_after

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("10", 10.0),
        ("2.128", 2.128),
        (" 3 ", 3.0),
        ("Sat, 28 Nov 2026 12:00:07 GMT", 7.0),
        ("Sat, 28 Nov 2026 11:59:00 GMT", 0.0),  # a date already past: go now
        ("-5", 0.0),
        ("99999", 600.0),  # capped
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    """Integer, decimal and HTTP-date Retry-After values are read; garbage is None."""
    assert parse_retry_after(header, now=NOW) == seconds


class FakeClock:
    """Time that moves only when somebody sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def test_hold_pauses_every_waiter_until_it_has_passed() -> None:
    """After hold(2), a worker that wants to send waits 2 s (plus the spread jitter)."""
    clock = FakeClock()
    gate = ThrottleGate(clock=clock, sleep=clock.sleep, jitter=lambda spread: spread / 2)
    gate.hold(2.0)

    async def waiter() -> float:
        await gate.wait()
        return clock.now

    done = asyncio.run(waiter())
    assert done == pytest.approx(3.0)  # 2 s hold + half of the 2 s spread
    assert gate.remaining == 0


def test_throttle_halves_the_limit_and_clean_answers_restore_it() -> None:
    """A 429 halves the concurrency limit; clean answers raise it back one step at a time."""
    gate = ThrottleGate(limit=8)
    gate.throttled(0)
    assert gate.limit == 4
    gate.throttled(0)
    assert gate.limit == 2
    for _ in range(2):
        gate.answered()
    assert gate.limit == 3
    for _ in range(3 + 4 + 5 + 6 + 7):
        gate.answered()
    assert gate.limit == 8  # never above the configured concurrency
    gate.answered()
    assert gate.limit == 8


def test_slot_never_admits_more_than_the_limit() -> None:
    """With limit 2, at most two holders are inside at once, however many ask."""
    gate = ThrottleGate(limit=2)
    peak = 0

    async def worker() -> None:
        nonlocal peak
        async with gate.slot():
            peak = max(peak, gate.in_flight)
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(10)))

    asyncio.run(main())
    assert peak == 2
    assert gate.in_flight == 0
