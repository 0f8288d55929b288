"""Graph's two budgets (writes, resource units) as the simulator plays them, and a rate
controller per budget in the client: a 429 on one budget pauses only the requests that spend it."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import TOKEN, FakeClock, Served, pass_request, users, with_client

from onboard.errors import ThrottledError
from onboard.graph import GraphClient
from onboard.outcomes import Origin, PassRequest
from onboard.rate import Budget
from onboard.simulator import Call, Faults, SimulatorState, resource_units

PEOPLE = ("ada@contoso.com", "alan@contoso.com", "grace@contoso.com")


def test_a_read_429_does_not_pause_creates(serve_simulator: Callable[..., Served]) -> None:
    """The resource-unit budget refuses a read (Retry-After 30 s): reads wait, a create goes
    at once, and is issued."""
    clock = FakeClock()  # the simulator's: its budgets refill only when the test says so
    faults = Faults(read_rate=1, read_burst=1, retry_after_seconds=30)
    state = SimulatorState(users(*PEOPLE), faults=faults, clock=clock)
    served = serve_simulator(state)

    async def work(client: GraphClient) -> tuple[float, float, str]:
        await client.current_pass(PEOPLE[0])
        with pytest.raises(ThrottledError):
            await client.current_pass(PEOPLE[1])
        waits = client.pacing[Budget.READS].wait_for(), client.pacing[Budget.WRITES].wait_for()
        clock.now = 10.0  # the budget has refilled: Graph takes the create
        created = await client.create_pass(pass_request(PEOPLE[2]))
        return *waits, created.value

    read_wait, write_wait, value = with_client(served, work)
    assert read_wait > 25 and write_wait == 0
    assert value == state.current_pass(PEOPLE[2])
    assert state.counts["429 ResourceUnitLimitExceeded"] == 1


def test_a_write_429_does_not_pause_reads(serve_simulator: Callable[..., Served]) -> None:
    """The write budget refuses a create (Retry-After 30 s): creates wait, reads go at once."""
    faults = Faults(throttle_rate=1, throttle_burst=1, retry_after_seconds=30)
    state = SimulatorState(users(*PEOPLE), faults=faults, clock=FakeClock())
    served = serve_simulator(state)

    async def work(client: GraphClient) -> tuple[float, float, object]:
        await client.create_pass(pass_request(PEOPLE[0]))
        with pytest.raises(ThrottledError):
            await client.create_pass(pass_request(PEOPLE[1]))
        waits = client.pacing[Budget.WRITES].wait_for(), client.pacing[Budget.READS].wait_for()
        return *waits, await client.current_pass(PEOPLE[0])

    write_wait, read_wait, held = with_client(served, work)
    # Reads wait only for the resource units the two creates spent (a few ms at 800/s).
    assert write_wait > 25 and read_wait < 0.1
    assert held is not None
    assert state.counts["429 WriteLimitExceeded"] == 1


def test_429s_name_their_budget_as_graph_does(serve_simulator: Callable[..., Served]) -> None:
    """A throttled answer carries x-ms-throttle-information and x-ms-throttle-scope (Write for
    the write budget, ReadWrite for resource units, which every request spends); every answer
    carries x-ms-resource-unit."""
    faults = Faults(throttle_rate=1, throttle_burst=1, read_rate=1, read_burst=2)
    state = SimulatorState(users(*PEOPLE), faults=faults, clock=FakeClock())
    served = serve_simulator(state)
    state.tokens[TOKEN] = float("inf")
    tap = f"{served.url}/v1.0/users/{PEOPLE[0]}/authentication/temporaryAccessPassMethods"

    async def main() -> list[tuple[int, dict[str, str]]]:
        context = ssl.create_default_context(cafile=str(served.ca_file))
        seen = []
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            for method in ("POST", "POST", "GET", "GET"):
                body = {"lifetimeInMinutes": 60} if method == "POST" else None
                async with http.request(method, tap, json=body, headers=headers) as answer:
                    seen.append((answer.status, dict(answer.headers)))
        return seen

    (created, made), (refused, write), (listed, read_ok), (throttled, read) = asyncio.run(main())
    assert (created, refused, listed, throttled) == (201, 429, 200, 429)
    assert made["x-ms-resource-unit"] == read_ok["x-ms-resource-unit"] == "1"
    assert write["x-ms-throttle-information"] == "WriteLimitExceeded"
    assert write["x-ms-throttle-scope"].startswith("Tenant_Application/Write/")
    assert read["x-ms-throttle-information"] == "ResourceUnitLimitExceeded"
    assert read["x-ms-throttle-scope"].startswith("Tenant_Application/ReadWrite/")


@pytest.mark.parametrize(
    ("method", "path", "query", "units"),
    [
        ("POST", "users/a/authentication/temporaryAccessPassMethods", "", 1),
        ("GET", "users/a/authentication/temporaryAccessPassMethods", "", 1),
        ("GET", "users", "$filter=mail in ('a')", 2),
        ("GET", "users", "$filter=mail in ('a')&$select=id,mail", 1),
        ("GET", "users", "$filter=x&$select=id&$top=15", 1),
        ("GET", "users/a/transitiveMemberOf/microsoft.graph.directoryRole", "", 2),
        ("GET", "users/a/transitiveMemberOf/microsoft.graph.directoryRole", "$select=id", 1),
        ("GET", "users/a/authentication/methods", "$expand=x", 2),
    ],
)
def test_resource_units_are_charged_as_graph_documents(
    method: str, path: str, query: str, units: int
) -> None:
    """Base cost by path (listing users and transitive memberships cost 2), $select -1,
    $expand +1, $top under 20 -1, never below 1; a write costs 1."""
    assert resource_units(Call(method, path, None, "r", "c", "https://x", query)) == units


class _Counted:
    """A pool Sink that only keeps the outcomes."""

    def __init__(self) -> None:
        self.outcomes: list[object] = []

    def sending(self, request: PassRequest) -> None:
        pass

    def outcome(self, outcome: object, *, again: bool = False) -> None:
        self.outcomes.append(outcome)

    async def durable(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def unconfirmed(self) -> list[Any]:
        return []


def _pipelined(rows: int, concurrency: int, skip: set[int]) -> tuple[_Counted, dict[str, Any]]:
    """issue_all with a check (a read) per row: how far the checks ran ahead of the creates."""
    from onboard.config import RunSettings
    from onboard.graph import CreatedPass, explain, unusable_pass
    from onboard.outcomes import Reason, Skipped
    from onboard.pool import Sender, issue_all

    seen: dict[str, Any] = {"checked": 0, "created": 0, "ahead": 0, "first_create_after": None}
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)

    async def check(request: PassRequest) -> PassRequest | Skipped:
        await asyncio.sleep(0)  # a read: other work goes on meanwhile
        seen["checked"] += 1
        if request.origin.row in skip:
            return Skipped(request.origin, request.user, Reason.ALREADY_ISSUED, "held")
        return request

    async def create(request: PassRequest) -> CreatedPass:
        assert request.origin.row not in skip, "a row its check decided was sent"
        if seen["first_create_after"] is None:
            seen["first_create_after"] = seen["checked"]
        seen["ahead"] = max(seen["ahead"], seen["checked"] - seen["created"])
        await asyncio.sleep(0)
        seen["created"] += 1
        return CreatedPass(f"+v{request.origin.row}", f"m{request.origin.row}", start, start,
                           480, True, "req")  # fmt: skip

    async def no_current(user: str) -> str | None:
        raise AssertionError("nothing to confirm")

    requests = [
        PassRequest(Origin("hires.csv", n), f"u{n}@contoso.com", None, start, 480, True)
        for n in range(2, rows + 2)
    ]
    sender = Sender(create, None, no_current, explain, unusable_pass)
    sink = _Counted()
    asyncio.run(issue_all(requests, sender, sink, RunSettings(concurrency=concurrency),
                          check=check))  # fmt: skip
    return sink, seen


def test_the_checks_run_ahead_of_the_creates_within_a_bound() -> None:
    """Creates start while most rows are still unchecked (no waiting for every read first),
    and the rows checked but not yet created never exceed the pool's bound: memory stays
    flat however long the sheet."""
    from onboard.pool import AHEAD, CHECKERS_PER_WORKER

    sink, seen = _pipelined(rows=400, concurrency=4, skip=set())
    assert len(sink.outcomes) == 400 and seen["created"] == 400
    assert seen["first_create_after"] < 50
    # waiting to be taken, being checked, being created
    assert seen["ahead"] <= AHEAD * 4 + CHECKERS_PER_WORKER * 4 + 4


def test_a_row_its_check_decides_is_never_created() -> None:
    """A row the check settles (its user holds a pass) gets that outcome, once, and no create."""
    from onboard.outcomes import Issued, Skipped

    sink, seen = _pipelined(rows=50, concurrency=3, skip={5, 17, 40})
    skipped = sorted(o.origin.row for o in sink.outcomes if isinstance(o, Skipped))
    assert skipped == [5, 17, 40]
    assert sum(isinstance(o, Issued) for o in sink.outcomes) == 47 == seen["created"]
    assert len({o.origin for o in sink.outcomes}) == 50  # type: ignore[attr-defined]
