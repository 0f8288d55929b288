"""What a caller may hand `run` and `validate` in place of what they would find themselves:
rows as PassRequests instead of a file to read, and a clock instead of the wall clock.

Rows handed in go the way a file's rows go: one per user across every input (identical repeats
skipped, conflicting ones failed), then decided, checked, sent, journalled and audited. Their
Origin is the caller's own and names where a person finds the row again (the HR system and
its record number, say); the audit lists each source as an input with the digest of its rows,
so handing the same requests in again is "the same command": a stopped run resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from .config import InputSettings, PassSettings
from .outcomes import Origin, PassRequest
from .reader import InputFile, read_all

Clock = Callable[[], datetime]  # returns an aware datetime: now


def utc_now() -> datetime:
    return datetime.now(UTC)


def clock_of(now: Clock | None) -> Clock:
    """The run's clock: `now`, read as UTC (it must say which zone it is in), or the wall's."""
    if now is None:
        return utc_now
    given = now

    def read() -> datetime:
        moment = given()
        if moment.utcoffset() is None:
            raise ValueError(
                f"the clock (now=) returned {moment.isoformat()}, a time without a zone: "
                "return an aware datetime, e.g. datetime.now(UTC)"
            )
        return moment.astimezone(UTC)

    return read


def read_inputs(
    inputs: Sequence[str | Path],
    requests: Sequence[PassRequest] | None,
    settings: InputSettings,
    pass_: PassSettings,
    now: datetime,
) -> list[InputFile]:
    """The files read, then the requests handed in (one InputFile per Origin source).

    Raises InputFileError for an unusable file, ValueError for requests no row could become
    (a start without a time zone, no user, two with one Origin) and when there is nothing at
    all to run on."""
    if not inputs and requests is None:
        raise ValueError("nothing to run on: give input files, requests, or both")
    files = read_all(inputs, settings, pass_, now)
    if requests is not None:
        taken = {r.origin for f in files for r in f.requests}
        for f in files:
            taken.update(o.origin for o in f.failed)
            taken.update(o.origin for o in f.skipped)
        files.extend(given_files(requests, pass_.zone, now, taken))
    return files


def given_files(
    requests: Sequence[PassRequest], zone: ZoneInfo, now: datetime, taken: set[Origin]
) -> list[InputFile]:
    """The requests as inputs, one per Origin source, each request completed as the reader
    completes a row (see `completed`)."""
    by_source: dict[str, list[PassRequest]] = {}
    for request in requests:
        if request.origin in taken:
            raise ValueError(
                f"two rows have the Origin {request.origin.source!r} row {request.origin.row}: "
                "give each request an Origin of its own"
            )
        taken.add(request.origin)
        by_source.setdefault(request.origin.source, []).append(request)
    return [
        InputFile(Path(source), _digest(rows), None, (), len(rows),
                  requests=[completed(r, zone, now) for r in rows])
        for source, rows in by_source.items()
    ]  # fmt: skip


def completed(request: PassRequest, zone: ZoneInfo, now: datetime) -> PassRequest:
    """A request as the reader would have made it from a row: times in UTC, the start as
    intended and its local date (what re-runs compare), and a start already past made usable
    at once (with a note). Raises ValueError for a request no row could become."""
    where = f"{request.origin.source!r} row {request.origin.row}"
    if not request.origin.source:
        raise ValueError(f"the request for {request.user!r} has an Origin without a source")
    if not request.user.strip():
        raise ValueError(f"the request {where} names no user")
    for moment in (request.start, request.intended_start):
        if moment is not None and moment.utcoffset() is None:
            raise ValueError(
                f"the request {where} starts at {moment.isoformat()}, a time without a zone: "
                "give an aware datetime"
            )
    start = None if request.start is None else request.start.astimezone(UTC)
    intended = request.intended_start.astimezone(UTC) if request.intended_start else start
    day = request.start_date or (intended.astimezone(zone).date() if intended else None)
    note = request.note
    if start is not None and start <= now:
        past = f"start {start:%Y-%m-%d %H:%M} UTC is in the past: pass usable at once"
        note, start = f"{note}; {past}" if note else past, None
    return replace(
        request,
        user=request.user.strip(),
        start=start,
        intended_start=intended,
        start_date=day,
        note=note,
    )


def _digest(rows: Sequence[PassRequest]) -> str:
    """What stands for a file's SHA-256: the same requests, as handed in, give the same one
    (whatever the clock says by then)."""
    fields = [
        [r.origin.row, r.user, r.display_name, _iso(r.start), _iso(r.intended_start),
         str(r.start_date), r.lifetime_minutes, r.usable_once, r.note, r.sheet_value,
         r.object_id, list(r.extra)]
        for r in rows
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
