"""Records: one row to send, and the three ways a row can end (issued, failed, skipped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a row came from: the input file's name and its spreadsheet row (header = row 1)."""

    source: str
    row: int


@dataclass(frozen=True, slots=True)
class PassRequest:
    """A validated row, ready to send to Graph."""

    origin: Origin
    user: str
    display_name: str | None
    start: datetime | None  # UTC; None means usable at once
    lifetime_minutes: int
    usable_once: bool
    note: str = ""

    @property
    def key(self) -> str:
        """The identity used to keep one request per user (UPNs are case-insensitive)."""
        return self.user.casefold()


@dataclass(frozen=True, slots=True)
class Issued:
    request: PassRequest
    temporary_access_pass: str = field(repr=False)
    method_id: str
    starts: datetime
    expires: datetime
    lifetime_minutes: int
    usable_once: bool
    created: datetime | None
    attempts: int
    request_id: str | None
    note: str = ""

    @property
    def origin(self) -> Origin:
        return self.request.origin


@dataclass(frozen=True, slots=True)
class Failed:
    origin: Origin
    user: str
    reason: str
    detail: str
    http_status: int | None = None
    graph_code: str | None = None
    attempts: int = 0
    request_id: str | None = None
    column: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    origin: Origin
    user: str
    reason: str


Outcome = Issued | Failed | Skipped
