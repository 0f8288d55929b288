"""Defects found by hostile testing of the pipelined checks and the per-budget pacing."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import FakeClock, Served, Tokens, pass_request, users, with_client

import onboard
from onboard.config import Config, RunSettings, load_config
from onboard.errors import GraphError, JournalWriteError, ProtocolError, ThrottledError
from onboard.graph import MAX_PAGES, CreatedPass, GraphClient, explain, unusable_pass
from onboard.journal import Journal
from onboard.outcomes import Origin, PassRequest, Reason
from onboard.pool import Sender, issue_all
from onboard.rate import Pacing
from onboard.simulator import RESOURCE_UNIT_LIMIT, Faults, SimulatorState
from onboard.testing import fake_tenant

PEOPLE = ("ada@contoso.com", "alan@contoso.com", "grace@contoso.com")


def test_a_create_refused_for_resource_units_holds_the_creates(
    serve_simulator: Callable[..., Served],
) -> None:
    """A create refused by the resource-unit budget (which creates spend too) pauses the
    creates for its Retry-After, and cuts the resource-unit rate once, not per create."""
    faults = Faults(read_rate=1, read_burst=1, retry_after_seconds=30)
    state = SimulatorState(users(*PEOPLE), faults=faults, clock=FakeClock())
    served = serve_simulator(state)
    state.exhaust(RESOURCE_UNIT_LIMIT)

    async def work(client: GraphClient) -> tuple[float, float, float]:
        with pytest.raises(ThrottledError):
            await client.create_pass(pass_request(PEOPLE[0]))
        rate = client.pacing.reads.rate
        return client.pacing.writes.wait_for(), client.pacing.reads.wait_for(), rate

    write_wait, read_wait, read_rate = with_client(served, work)
    assert write_wait > 25 and read_wait > 25
    assert state.counts["429 ResourceUnitLimitExceeded"] == 1
    assert read_rate < Pacing().reads.rate


def api_config(tmp_path: Path) -> Config:
    return load_config(
        None,
        env={
            "ONBOARD_GRAPH_ENDPOINT": "simulator",
            "ONBOARD_OUTPUT_DIR": str(tmp_path / "audit"),
            "ONBOARD_STATE_PATH": str(tmp_path / "state" / "journal.sqlite"),
        },
    )


def hire(**fields: Any) -> PassRequest:
    given: dict[str, Any] = {
        "origin": Origin("hr-feed", 1),
        "user": "ada@contoso.com",
        "display_name": "Ada Lovelace",
        "start": None,
        "lifetime_minutes": 480,
        "usable_once": False,
    }
    return PassRequest(**{**given, **fields})


@pytest.mark.parametrize(
    ("arguments", "error", "named"),
    [
        ({"inputs": "hires.csv"}, TypeError, "inputs"),
        ({"inputs": Path("hires.csv")}, TypeError, "inputs"),
        ({"requests": hire()}, TypeError, "requests"),
        ({"requests": [{"user": "ada@contoso.com"}]}, TypeError, r"requests\[0\]"),
        ({"requests": [hire(start=dt.date(2027, 1, 4))]}, TypeError, "start="),
        ({"requests": [hire(start="2027-01-04")]}, TypeError, "start="),
        ({"requests": [hire(usable_once="no")]}, TypeError, "usable_once="),
        ({"requests": [hire(lifetime_minutes="480")]}, TypeError, "lifetime_minutes="),
        ({"requests": [hire(lifetime_minutes=True)]}, TypeError, "lifetime_minutes="),
        ({"requests": [hire(user=None)]}, TypeError, "user="),
        ({"requests": [hire(origin=("hr-feed", 1))]}, TypeError, "Origin"),
        ({"requests": [hire(origin=Origin("hr-feed", "1"))]}, TypeError, "row"),
        ({"requests": [hire()], "now": lambda: "2027-01-01"}, TypeError, "now="),
        ({"requests": [hire()], "allow_users": "ada@contoso.com"}, TypeError, "allow_users"),
        ({"requests": [hire()], "reissue_users": "ada@contoso.com"}, TypeError, "reissue_users"),
        ({"requests": [hire()], "due_within_days": "3"}, TypeError, "due_within_days"),
        ({"requests": [hire()], "due_within_days": -1}, ValueError, "due_within_days"),
    ],
)
def test_run_names_the_argument_given_wrong(
    tmp_path: Path, arguments: dict[str, Any], error: type[Exception], named: str
) -> None:
    """A wrong argument to onboard.run is refused naming it, before anything is read or sent."""
    with pytest.raises(error, match=named):
        asyncio.run(onboard.run(api_config(tmp_path), **arguments))
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("config", [None, Path("config.yaml")])
def test_run_and_validate_want_a_config(tmp_path: Path, config: Any) -> None:
    """onboard.run and onboard.validate given no Config say so (not an AttributeError)."""
    with pytest.raises(TypeError, match="load_config"):
        asyncio.run(onboard.run(config, requests=[hire()]))
    with pytest.raises(TypeError, match="load_config"):
        asyncio.run(onboard.validate(config, requests=[hire()]))


def test_run_takes_out_dir_as_text(tmp_path: Path) -> None:
    """out_dir given as a str is a folder like a Path (no AttributeError mid-run)."""

    async def main() -> onboard.RunReport:
        async with fake_tenant(["ada@contoso.com"]) as tenant:
            return await onboard.run(
                api_config(tmp_path), requests=[hire()], client=tenant, out_dir=str(tmp_path / "o")
            )

    report = asyncio.run(main())
    assert report.audit_path is not None and report.audit_path.parent == tmp_path / "o"
    assert [i.request.user for i in report.issued] == ["ada@contoso.com"]


def test_a_listing_that_never_ends_fails_the_read() -> None:
    """A server whose next page never runs out (a new link each time, or one read before)
    gets a ProtocolError after MAX_PAGES pages, not a run that reads forever."""
    asked: list[str] = []

    async def page(request: web.Request) -> web.Response:
        asked.append(request.path_qs)
        number = int(request.query.get("page", "0"))
        link = str(request.url.with_query(page=str(number + 1)))
        if request.match_info["user"] == "loop@contoso.com":
            link = str(request.url)
        return web.json_response({"value": [], "@odata.nextLink": link})

    async def main() -> tuple[GraphError, GraphError]:
        app = web.Application()
        app.router.add_get("/v1.0/users/{user}/authentication/methods", page)
        async with TestServer(app) as server, aiohttp.ClientSession() as http:
            root = str(server.make_url("")).rstrip("/")
            client = GraphClient(http, root, Tokens(), pacing=Pacing())  # type: ignore[arg-type]
            errors = []
            for user in ("pages@contoso.com", "loop@contoso.com"):
                with pytest.raises(ProtocolError) as caught:
                    await asyncio.wait_for(client.methods(user), timeout=20)
                errors.append(caught.value)
            return errors[0], errors[1]

    endless, looping = asyncio.run(main())
    assert endless.status == looping.status == 200
    assert len(asked) == MAX_PAGES + 1  # every page of the first, the loop's first only


# The CLI's import held until the signal comes (a finder that waits when onboard.cli is
# looked up), so the signal lands while the CLI loads however fast the machine is.
SLOW_CLI = """
import runpy, sys, time
class Slow:
    def find_spec(self, name, path=None, target=None):
        if name == "onboard.cli":
            print("loading", flush=True)
            time.sleep(60)
        return None
sys.meta_path.insert(0, Slow())
sys.argv = ["onboard", "--version"]
runpy.run_module("onboard", run_name="__main__")
"""


def test_ctrl_c_while_the_cli_loads_ends_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C in the second or so `onboard` takes to load its modules ends it as SIGINT ends
    a process (the shell sees 130), with no traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(onboard.__file__).parent.parent)}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "loading\n"
        child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGINT
    assert "Traceback" not in err


def failing_run(tmp_path: Path) -> onboard.RunReport:
    """A run of the docs' example: one user the tenant does not know."""

    async def main() -> onboard.RunReport:
        async with fake_tenant(["ada@contoso.com"]) as tenant:
            hires = [hire(), hire(origin=Origin("hr-feed", 2), user="alan@contoso.com")]
            return await onboard.run(api_config(tmp_path), requests=hires, client=tenant)

    return asyncio.run(main())


def test_the_api_prints_nothing_where_logging_is_not_configured(tmp_path: Path) -> None:
    """A program that calls onboard.run and configures no logging gets no log lines on its
    stderr (Python's last-resort handler): the library's loggers end in a NullHandler."""
    root = logging.getLogger()
    root.handlers[:] = []  # as in a program that never configured logging
    printed = io.StringIO()
    last_resort = logging.lastResort
    logging.lastResort = logging.StreamHandler(printed)
    try:
        report = failing_run(tmp_path)
    finally:
        logging.lastResort = last_resort
    assert [f.reason for f in report.failed] == [Reason.USER_NOT_FOUND]
    assert printed.getvalue() == ""


def test_a_row_its_check_fails_is_logged_with_graphs_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning for a row the checks failed (a user Graph does not know) names Graph's
    request id, as the audit's Failed sheet does."""
    caplog.set_level(logging.WARNING, logger="onboard")
    report = failing_run(tmp_path)
    (failed,) = report.failed
    assert failed.request_id
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(failed.request_id in line and failed.user in line for line in warned), warned


class BrokenJournal:
    """A sink whose journal fails on its second commit, as a full disk makes it."""

    def __init__(self) -> None:
        self.commits = 0

    def sending(self, request: PassRequest) -> None:
        pass

    def outcome(self, outcome: object, *, again: bool = False) -> None:
        pass

    async def durable(self) -> None:
        self.commits += 1
        if self.commits == 2:
            raise JournalWriteError("cannot write the run journal: disk full")

    def flush(self) -> None:
        pass

    def unconfirmed(self) -> list[Any]:
        return []


def test_no_check_outlives_the_pool_that_stopped_on_a_journal_error() -> None:
    """The journal fails mid-run while rows are being checked: when the pool gives up, no
    check is left running (none may read on through the Graph session the run closes next,
    fail on it, and be reported as an internal error)."""
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)

    async def check(request: PassRequest) -> PassRequest:
        for _ in range(20):  # reads take longer than creates: none wait to be sent
            await asyncio.sleep(0)
        return request

    async def create(request: PassRequest) -> CreatedPass:
        await asyncio.sleep(0)
        return CreatedPass("+value", "method", start, start, 480, True, "request")

    async def current(user: str) -> str | None:
        return None

    async def main() -> list[asyncio.Task[Any]]:
        requests = [
            PassRequest(Origin("hires.csv", n), f"u{n}@contoso.com", None, start, 480, True)
            for n in range(2, 202)
        ]
        sender = Sender(create, None, current, explain, unusable_pass)
        with pytest.raises(JournalWriteError):
            await issue_all(requests, sender, BrokenJournal(), RunSettings(concurrency=4),
                            check=check)  # fmt: skip
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]

    assert asyncio.run(main()) == []


def test_a_journal_commit_that_fails_unwatched_is_not_reported_as_never_retrieved(
    tmp_path: Path,
) -> None:
    """A journal commit fails after every worker waiting for it was cancelled (stopping the
    pool on another error): asyncio does not print "Task exception was never retrieved" with
    a traceback; the failure is not lost either (flush raises it)."""
    journal = Journal(tmp_path / "journal.sqlite").open()
    writer = journal.writer("run-1")
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    writer.add(PassRequest(Origin("hires.csv", 2), "ada@contoso.com", None, start, 480, True))
    unreported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: unreported.append(context)
        )
        journal.db.close()  # every write now fails, as on a full disk
        waiter = asyncio.ensure_future(writer.durable())
        await asyncio.sleep(0)  # the commit has started, in its thread
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()  # the commit's thread
        for _ in range(3):  # its task takes the thread's error
            await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    assert unreported == []
    with pytest.raises(JournalWriteError):
        writer.flush()


def test_validate_online_decides_each_row_as_run_does(tmp_path: Path) -> None:
    """After a run, validate --online on the same rows says what the next run does: a hire
    who has since registered Authenticator is already issued (not a problem), a user holding
    a helpdesk pass is skipped (not ready), the rest ready."""
    config = api_config(tmp_path)
    people = ["ada@contoso.com", "alan@contoso.com", "grace@contoso.com"]
    hires = [hire(origin=Origin("hr-feed", n), user=u) for n, u in enumerate(people, start=1)]

    async def main() -> tuple[onboard.Validation, onboard.RunReport]:
        async with fake_tenant(people) as tenant:
            await onboard.run(config, requests=hires[:1], client=tenant)
            ada = tenant.state.find_user(people[0])
            assert ada is not None
            ada.methods.append("microsoftAuthenticator")  # she set up her phone
            tenant.state.give_pass(people[1])  # the helpdesk gave Alan one
            found = await onboard.validate(config, requests=hires, online=True, client=tenant)
            return found, await onboard.run(config, requests=hires, client=tenant)

    found, report = asyncio.run(main())
    assert found.problems == [] and report.failed == []
    assert [r.user for r in found.ready] == [i.request.user for i in report.issued] == people[2:]
    skipped = [(s.user, s.reason) for s in found.skipped]
    assert (
        skipped
        == [(s.user, s.reason) for s in report.skipped]
        == [
            (people[0], Reason.ALREADY_ISSUED),
            (people[1], Reason.HELD_ELSEWHERE),
        ]
    )
