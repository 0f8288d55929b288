"""Trial of issue 18 (status, revoke, --json): what a hostile tester found, each pinned down.
Graph's answers are bent by a middleware in front of the simulator's own app, on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from conftest import LONG, PAST, Served, issue, revoke_process, users, wait_for_deletes, write_sheet

from onboard import lifecycle
from onboard.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_ROWS_FAILED, main
from onboard.config import load_config
from onboard.graph import MAX_PAGES
from onboard.simulator import (
    DEFAULT_CLIENT_SECRET,
    MAX_ADVANCE_SECONDS,
    SimulatorState,
    make_app,
    make_certificates,
)

Rule = Callable[[web.Request], web.StreamResponse | None]
TAP = "temporaryAccessPassMethods"
METHODS = "/authentication/methods"


@pytest.fixture
def bent(tmp_path: Path) -> Iterator[Callable[[SimulatorState, list[Rule]], Served]]:
    """The simulator in a thread, with `rules` asked first for every request: the first that
    returns an answer gives it instead of the simulator."""
    stops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, threading.Thread]] = []

    def start(state: SimulatorState, rules: list[Rule]) -> Served:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, Any] = {}

        @web.middleware
        async def bend(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            for rule in rules:
                answer = rule(request)
                if answer is not None:
                    return answer
            return await handler(request)

        async def serve() -> None:
            app = make_app(state)
            app.middlewares.append(bend)
            certs = make_certificates(tmp_path / f"bent{len(stops)}")
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=certs.server_context())
            await site.start()
            url = f"https://127.0.0.1:{runner.addresses[0][1]}"
            box["served"], box["stop"] = Served(url, certs.ca_file, state, loop), asyncio.Event()
            ready.set()
            await box["stop"].wait()
            await runner.cleanup()

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        assert ready.wait(10), "simulator did not start"
        stops.append((loop, box["stop"], thread))
        served: Served = box["served"]
        return served

    yield start
    for loop, stop, thread in stops:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def reads(state: SimulatorState, upn: str, path_end: str, answer: Callable[[], Any]) -> Rule:
    """A rule: a GET ending in `path_end` for this user (by UPN or object id) gets `answer`."""
    oid = state.users[upn].id

    def rule(request: web.Request) -> web.StreamResponse | None:
        ours = oid in request.path or upn in request.path
        if request.method == "GET" and ours and request.path.endswith(path_end):
            return web.json_response(answer())
        return None

    return rule


def test_a_listed_pass_with_times_beyond_the_calendar_is_no_internal_error(
    tmp_path: Path, bent, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listing whose start plus lifetime is past year 1 or 9999: status and revoke --unused
    answer (exit 0/1, never 4), and the run's own pass is still revoked."""
    state = SimulatorState(users("a@contoso.com", "b@contoso.com"))
    rules: list[Rule] = []
    sim = bent(state, rules)
    rows = [("a@contoso.com", PAST, LONG), ("b@contoso.com", PAST, LONG)]
    config, run_id = issue(sim, tmp_path, rows, capsys)
    ours = state.passes[state.users["b@contoso.com"].id].id
    bogus = {"value": [{"id": ours, "startDateTime": "0001-01-01T00:00:00Z",
                        "lifetimeInMinutes": -(10**9)}]}  # fmt: skip
    rules.append(reads(state, "b@contoso.com", TAP, lambda: bogus))
    assert main(["status", run_id, "-c", str(config), "--json"]) in (EXIT_OK, EXIT_ROWS_FAILED)
    passes = json.loads(capsys.readouterr().out)
    assert {p["user"]: p["state"] for p in passes}["b@contoso.com"] == "usable"  # end unknown
    code = main(["revoke", run_id, "--unused", "--yes", "-c", str(config), "--json"])
    assert code == EXIT_OK
    done = json.loads(capsys.readouterr().out)
    assert done["counts"] == {"deleted": 2}
    assert state.delete_requests == {p.id: 1 for p in state.issued}


def test_an_endless_listing_is_refused_not_followed_for_ever(
    tmp_path: Path, bent, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A methods listing whose next page links on for ever: read up to MAX_PAGES pages, then
    that user's methods are "not read" (exit 1), and the command ends."""
    state = SimulatorState(users("a@contoso.com"))
    rules: list[Rule] = []
    sim = bent(state, rules)
    config, run_id = issue(sim, tmp_path, [("a@contoso.com", PAST, LONG)], capsys)
    pages = []

    def endless() -> dict[str, Any]:
        pages.append(1)
        if len(pages) > 4 * MAX_PAGES:  # so that a client without a limit fails, not hangs
            return {"value": []}
        link = f"{sim.url}/v1.0/users/a@contoso.com/authentication/methods?page={len(pages)}"
        return {"value": [], "@odata.nextLink": link}

    rules.append(reads(state, "a@contoso.com", METHODS, endless))
    code = main(["status", run_id, "-c", str(config), "--json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert code == EXIT_ROWS_FAILED
    assert (row["state"], row["registered"], row["needs_attention"]) == ("usable", None, True)
    assert "methods not read" in row["error"]
    assert len(pages) == MAX_PAGES


def test_a_second_signal_during_revoke_stops_at_once_without_a_traceback(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGINT, then SIGINT again while deletes hang: exit 130 with one JSON value saying so,
    no traceback; the same command then finishes, nothing deleted twice."""
    hires = [f"hire{n:02d}@contoso.com" for n in range(20)]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    config, run_id = issue(sim, tmp_path, [(h, PAST, LONG) for h in hires], capsys)
    state.faults.latency_ms = 50
    proc = revoke_process(config, run_id, "--json")
    wait_for_deletes(state, proc, 3)
    sim.freeze(3)  # the deletes in flight get no answer: the grace period is still running
    proc.send_signal(signal.SIGINT)
    threading.Event().wait(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    said = json.loads(out)
    assert said["error"]["exit_code"] == EXIT_INTERRUPTED
    state.faults.latency_ms = 0
    assert main(["revoke", run_id, "--yes", "-c", str(config), "--json"]) == EXIT_OK
    capsys.readouterr()
    assert state.passes == {}
    assert state.delete_requests == {p.id: 1 for p in state.issued}


def test_ctrl_c_at_the_revoke_prompt_deletes_nothing(
    tmp_path: Path,
    serve_simulator,
    secret_env,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while revoke waits for y/N ends the question (no answer typed after it counts):
    nothing deleted, exit 130, the JSON says it was not confirmed."""
    state = SimulatorState(users("a@contoso.com", "b@contoso.com"))
    sim = serve_simulator(state)
    rows = [("a@contoso.com", PAST, LONG), ("b@contoso.com", PAST, LONG)]
    config, run_id = issue(sim, tmp_path, rows, capsys)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

        def readline(self, size: int | None = -1) -> str:
            signal.raise_signal(signal.SIGINT)  # the person presses Ctrl-C, then types y
            return "y\n"

    monkeypatch.setattr(sys, "stdin", Terminal())
    code = main(["revoke", run_id, "-c", str(config), "--json"])
    done = json.loads(capsys.readouterr().out)
    assert state.delete_requests == {}
    assert code == EXIT_INTERRUPTED
    assert done["declined"] is True
    assert {p["action"] for p in done["passes"]} == {"not done"}


def test_run_json_says_why_when_the_log_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file that takes no line (a folder) with --json: exit 2 and one JSON error value."""
    sheet = write_sheet(tmp_path / "hires.csv", [("a@contoso.com", PAST, LONG)])
    config = tmp_path / "c.yaml"
    config.write_text("graph:\n  endpoint: simulator\n", encoding="utf-8")
    code = main(["run", str(sheet), "-c", str(config), "--json", "--log-file", str(tmp_path)])
    said = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert json.loads(said.out)["error"]["exit_code"] == EXIT_BAD_INPUT
    assert "cannot write the log file" in said.err


def test_a_revoke_stopped_while_it_looks_lists_nothing_as_would_delete(
    tmp_path: Path, bent, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped while reading the passes to show before asking: not a dry run, so each pass is
    "not done", none "would delete", and nothing is asked or deleted."""
    hires = ["a@contoso.com", "b@contoso.com"]
    state = SimulatorState(users(*hires))
    rules: list[Rule] = []
    sim = bent(state, rules)
    config, run_id = issue(sim, tmp_path, [(h, PAST, LONG) for h in hires], capsys)
    asked: list[int] = []

    async def revoke() -> lifecycle.RevokeReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping(request: web.Request) -> None:
            if request.method == "GET" and request.path.endswith(TAP):
                loop.call_soon_threadsafe(stop.set)  # a signal as the first look goes out
            return None

        rules.append(stopping)
        return await lifecycle.revoke(
            load_config(config), run_id, env={"ONBOARD_CLIENT_SECRET": DEFAULT_CLIENT_SECRET},
            confirm=lambda passes: bool(asked.append(len(passes))), stop=stop,
        )  # fmt: skip

    report = asyncio.run(revoke())
    assert {str(r.action) for r in report.revocations} == {"not done"}
    assert report.stopped and not report.dry_run and asked == []
    assert state.delete_requests == {}


def test_the_advance_control_refuses_a_time_past_the_calendar(
    tmp_path: Path, serve_simulator
) -> None:
    """POST /_simulator/advance beyond MAX_ADVANCE_SECONDS (or NaN): 400, and the simulator
    keeps answering (it used to move its clock first and answer 500 ever after)."""
    state = SimulatorState(users("a@contoso.com"))
    sim = serve_simulator(state)

    def advance(body: str) -> requests.Response:
        return requests.post(
            f"{sim.url}/_simulator/advance", data=body, verify=str(sim.ca_file), timeout=10
        )

    for seconds in (f"{MAX_ADVANCE_SECONDS * 100}", "1e300", "NaN", "Infinity"):
        assert advance(f'{{"seconds": {seconds}}}').status_code == 400, seconds
    assert advance('{"seconds": 3600}').status_code == 200
    made = state.give_pass("a@contoso.com")
    listed = requests.post(
        f"{sim.url}/_simulator/sign-in",
        json={"user": "a@contoso.com"},
        verify=str(sim.ca_file),
        timeout=10,
    )
    assert listed.json() == {"accepted": True} and made.used


def test_a_created_pass_with_times_beyond_the_calendar_fails_its_row_not_the_run(
    tmp_path: Path, bent, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 201 whose lifetime runs past year 9999 (a hostile or broken answer): the row fails
    with a reason once its tries are spent, the run exits 1, never 4 (the pass's end is part
    of what is handed out)."""
    state = SimulatorState(users("a@contoso.com"))

    def created(request: web.Request) -> web.StreamResponse | None:
        if request.method == "POST" and request.path.endswith(TAP):
            body = {"id": "m-1", "temporaryAccessPass": "+Bogus1", "lifetimeInMinutes": 10**15,
                    "startDateTime": "2030-01-01T00:00:00Z", "isUsableOnce": True}  # fmt: skip
            return web.json_response(body, status=201)
        return None

    sim = bent(state, [created])
    config = sim.config(tmp_path / "c.yaml", run={"max_attempts": 2})
    sheet = write_sheet(tmp_path / "hires.csv", [("a@contoso.com", PAST, LONG)])
    assert main(["run", str(sheet), "-c", str(config), "--json"]) == EXIT_ROWS_FAILED
    said = json.loads(capsys.readouterr().out)
    assert said["counts"]["failed"] == 1 and said["counts"]["issued"] == 0
