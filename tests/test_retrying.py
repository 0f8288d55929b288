"""Retry-After parsing (the pause itself is the rate controller's: test_rate.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from onboard.retrying import parse_retry_after

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
