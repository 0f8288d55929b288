"""Shared fixtures and helpers: a Graph simulator served on loopback in a background thread,
the one fake clock, the audit workbook read back, `onboard run` as a child process, and the
certificates, token providers and pool runs several test modules use (no test module imports
another)."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import heapq
import json
import logging
import os
import select
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import markupsafe
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from openpyxl import load_workbook

from onboard.auth import Credential, MsalTokenProvider
from onboard.cli import EXIT_OK, main
from onboard.config import RunSettings
from onboard.errors import AuthError
from onboard.graph import GraphClient, explain, unusable_pass
from onboard.outcomes import Issued, Origin, Outcome, PassRequest
from onboard.pool import Sender, issue_all
from onboard.rate import Pacing
from onboard.simulator import (
    DEFAULT_CLIENT_SECRET,
    Faults,
    SimMail,
    SimulatorState,
    SimUser,
    serve,
)
from onboard.tls import make_ssl_context, requests_session

ROOT = Path(__file__).resolve().parent.parent
TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SCOPE = "https://graph.microsoft.com/.default"
MAX_RATE = 10_000  # run.max_rate's upper bound: the simulator's runs are not paced
# Forty users who all exist, and five start dates a month or so ahead (row n starts on SOON[n % 5]).
GOOD = [f"hire{n:02d}@contoso.com" for n in range(40)]
SOON = [(dt.date.today() + dt.timedelta(days=30 + n)).isoformat() for n in range(5)]


@dataclass
class Served:
    url: str
    ca_file: Path
    state: SimulatorState
    loop: asyncio.AbstractEventLoop  # the simulator's

    @contextmanager
    def hold_after(self, creates: int) -> Iterator[threading.Event]:
        """Hold every answer from the moment the simulator has created `creates` passes
        (counted over the whole test) until the block ends; the event yielded is set then.
        The pass that reaches the count is made but not answered: the client has requests in
        flight, whatever the machine's load."""
        reached, release = threading.Event(), threading.Event()

        class Tripwire(list[Any]):
            def append(self, item: Any) -> None:
                super().append(item)
                if len(self) >= creates and not release.is_set():
                    reached.set()
                    release.wait(60)  # in the simulator's thread: nothing else is answered

        self.state.issued = Tripwire(self.state.issued)
        try:
            yield reached
        finally:
            release.set()

    def freeze(self, seconds: float) -> None:
        """Hold every answer (in flight or not) for `seconds`: the simulator's thread sleeps."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def config(self, path: Path, **sections: dict[str, Any]) -> Path:
        """Write a config.yaml pointing at this simulator as if it were a real tenant."""
        data: dict[str, Any] = {
            "graph": {"endpoint": self.url, "ca_bundle": str(self.ca_file)},
            "auth": {"tenant_id": TENANT, "client_id": CLIENT_ID, "authority": self.url},
            "pass": {"timezone": "UTC"},
            # No ceiling on the rate to speak of: tests that are about the rate set their own.
            "run": {
                "concurrency": 4,
                "backoff_seconds": 0.01,
                "backoff_max_seconds": 0.05,
                "settle_seconds": 0.2,
                "max_rate": MAX_RATE,
            },
            "output": {"dir": str(path.parent / "audit")},
            "state": {"path": str(path.parent / "state" / "journal.sqlite")},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path


def read_audit(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every sheet of a workbook as rows of {header: value}: the Issued sheet by its name's
    start (a simulated run's is "Issued (SIMULATED)"), the Summary without its banner row."""
    book = load_workbook(path)
    out: dict[str, list[dict[str, Any]]] = {}
    for sheet in book.worksheets:
        rows = list(sheet.iter_rows(values_only=True))
        if rows and str(rows[0][0] or "").startswith("SIMULATED"):
            rows = rows[1:]
        name = sheet.title.split(" (")[0]
        out[name] = [dict(zip(rows[0], row, strict=False)) for row in rows[1:]] if rows else []
    return out


def audit_rows(path: Path) -> dict[str, list[dict[str, object]]]:
    """The Issued, Failed and Skipped sheets' rows."""
    sheets = read_audit(path)
    return {name: sheets[name] for name in ("Issued", "Failed", "Skipped")}


def latest_audit(directory: Path) -> Path:
    """The one audit workbook (not a validation report) in `directory`."""
    (path,) = sorted(p for p in directory.glob("onboard-*.xlsx") if "-validate-" not in p.name)
    return path


def summary_of(sheets: dict[str, list[dict[str, Any]]]) -> dict[object, object]:
    """The Summary sheet (read by read_audit) as {item: value}."""
    return {r["Item"]: r["Value"] for r in sheets["Summary"]}


def issued_sheet(book: Any) -> Any:
    """The Issued sheet of a loaded workbook, whether or not the run was simulated."""
    return next(ws for ws in book.worksheets if ws.title.split(" (")[0] == "Issued")


def users(*names: str, **flags: dict[str, Any]) -> list[SimUser]:
    """Simulator users for the given UPNs; flags maps a UPN to SimUser overrides."""
    made = []
    for index, upn in enumerate(names):
        extra = flags.get(upn.split("@")[0], {})
        made.append(SimUser(f"00000000-0000-0000-0000-{index:012d}", upn, **extra))
    return made


class FakeClock:
    """The tests' one fake clock: a monotonic reading (call it) and an async `sleep`, on a
    virtual timeline that never sleeps for real.

    Driven by `run`, time jumps to the next wake-up only when every task is waiting, so
    concurrent sleepers see the same timeline as they would for real. Outside `run`, a sleep
    simply moves the clock on by its length; `now` may also be set or `advance`d by hand.
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0
        self._driven = False

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        if not self._driven:
            self.now += max(0.0, seconds)
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), self._count, future))
        await future

    def run(self, main: Callable[[], Awaitable[Any]]) -> Any:
        """asyncio.run(main()) on virtual time."""

        async def driver() -> Any:
            task = asyncio.ensure_future(main())
            while not task.done():
                for _ in range(20):  # let every runnable task reach its next wait
                    await asyncio.sleep(0)
                if self._sleepers and not task.done():
                    when, _, future = heapq.heappop(self._sleepers)
                    self.now = max(self.now, when)
                    future.set_result(None)
            return task.result()

        self._driven = True
        try:
            return asyncio.run(driver())
        finally:
            self._driven = False


@pytest.fixture
def serve_simulator(tmp_path: Path) -> Iterator[Any]:
    """Start a simulator for a given state in a thread; stopped at the end of the test."""
    stops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, threading.Thread]] = []

    def start(state: SimulatorState) -> Served:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            stop = asyncio.Event()
            async with serve(state, cert_dir=tmp_path / f"certs{len(stops)}") as running:
                box["served"] = Served(running.url, running.ca_file, state, loop)
                box["stop"] = stop
                ready.set()
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
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


def once_per_run(factory: pytest.TempPathFactory, name: str, make: Callable[[], Any]) -> Any:
    """`make()`'s JSON-able result, made by whichever pytest-xdist worker asks first and read
    back from a file by the others (a session fixture alone is made once per worker)."""
    shared = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is in the run's own
        shared = shared.parent
    path = shared / f"{name}.json"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not path.exists():
            path.write_text(json.dumps(make()), encoding="utf-8")
        return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI configures the root logger; put it back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(autouse=True)
def own_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Per-user state (the per-tenant locks) under the test's own folder, never ~/.local."""
    folder = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    return folder


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
    return {"ONBOARD_CLIENT_SECRET": DEFAULT_CLIENT_SECRET}


# --- `onboard run` as a child process: the tests of signals and kills ----------------------
def run_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    """Start `python -m onboard run ARGS -c CONFIG` with the simulator's client secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
    env["ONBOARD_CLIENT_SECRET"] = DEFAULT_CLIENT_SECRET
    return subprocess.Popen(
        [sys.executable, "-m", "onboard", "run", *args, "-c", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run_id_from(stdout: str) -> str:
    """The run id a run's output names ("onboard run RUN_ID: ...")."""
    line = next(line for line in stdout.splitlines() if line.startswith("onboard run "))
    return line.split()[2].rstrip(":")


def audit_path_from(stdout: str) -> Path:
    """The audit workbook a run's output names."""
    line = next(line for line in stdout.splitlines() if line.startswith("audit workbook: "))
    return Path(line.removeprefix("audit workbook: "))


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll (the simulator runs in another thread) until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def kill_after_creates(sim: Served, config: Path, sheet: Path, creates: int) -> None:
    """Start `onboard run`, and SIGKILL it as the simulator creates its `creates`-th pass
    (counted over the whole test): the run dies with exactly that many made and the requests
    it had in flight unanswered."""
    with sim.hold_after(creates) as reached:
        proc = run_cli(config, str(sheet))
        wait_until(lambda: reached.is_set() or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (out, err)


def stderr_until(proc: subprocess.Popen[str], text: str, timeout: float = 30.0) -> str:
    """What the child wrote to stderr up to and including `text` (read from the pipe itself,
    so `proc.communicate()` returns the rest)."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        assert time.monotonic() < deadline, f"no {text!r} on stderr: {seen!r}"
        ready, _, _ = select.select([proc.stderr.fileno()], [], [], 0.05)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536)
            assert chunk, f"stderr closed before {text!r}: {seen!r}"
            seen += chunk
    return seen.decode()


# --- certificates and token providers ------------------------------------------------------
def make_certificate(folder: Path, password: bytes | None) -> tuple[Path, Path]:
    """A self-signed app certificate with its key, as a PEM and as a PFX in `folder`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onboard test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256()))  # fmt: skip
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())  # fmt: skip
    pem = folder / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8, encryption)
                    + cert.public_bytes(serialization.Encoding.PEM))  # fmt: skip
    pfx = folder / "app.pfx"
    pfx.write_bytes(pkcs12.serialize_key_and_certificates(b"app", key, cert, None, encryption))
    return pem, pfx


def certificate_of(pem: Path) -> x509.Certificate:
    """The certificate in a PEM made by make_certificate: register it with the simulator."""
    return x509.load_pem_x509_certificate(pem.read_bytes())


def provider(url: str, ca_file: Path | None, material: object = DEFAULT_CLIENT_SECRET,
             method: str = "client_secret") -> MsalTokenProvider:  # fmt: skip
    """Real msal, signing in at the simulator (its authority) with the test app's identity."""
    return MsalTokenProvider(
        method=method, credential=Credential(CLIENT_ID, material),
        authority=f"{url}/{TENANT}", scope=SCOPE,
        http_client=requests_session(make_ssl_context(ca_file)),
    )  # fmt: skip


# --- the worker pool with hand-written answers ---------------------------------------------
class Collected:
    """A pool Sink that keeps what it is told (a run's is the report, journal and progress)."""

    def __init__(self, durable: Callable[[], Awaitable[None]] | None = None) -> None:
        self.outcomes: list[Outcome] = []
        self.sent: list[PassRequest] = []
        self._durable = durable

    def sending(self, request: PassRequest) -> None:
        self.sent.append(request)

    def outcome(self, outcome: Outcome, *, again: bool = False) -> None:
        if again:
            self.outcomes = [o for o in self.outcomes if o.origin != outcome.origin]
        self.outcomes.append(outcome)

    async def durable(self) -> None:
        if self._durable is not None:
            await self._durable()

    def flush(self) -> None:
        pass

    def unconfirmed(self) -> list[Issued]:
        return [o for o in self.outcomes if isinstance(o, Issued) and o.unconfirmed]


@dataclass
class Ran:
    outcomes: list[Outcome]
    retries: int
    aborted: AuthError | None
    unclear: dict[Origin, float]


async def no_current(user: str) -> str | None:
    raise AssertionError("these tests never confirm a pass")


def run_pool(requests: list[PassRequest], create: Callable[..., Any],
             clock: FakeClock | None = None, *, concurrency: int = 4, max_attempts: int = 5,
             create_batch: Callable[..., Any] | None = None, batch_size: int = 1,
             stop: asyncio.Event | None = None,
             durable: Callable[[], Awaitable[None]] | None = None) -> Ran:  # fmt: skip
    """The pool issuing `requests` through the fake `create` (and `create_batch`), its
    backoff sleeping on the fake clock (1 s, doubling to 8 s)."""
    clock = clock or FakeClock()
    settings = RunSettings(concurrency=concurrency, max_attempts=max_attempts, backoff_seconds=1.0,
                           backoff_max_seconds=8.0, batch_size=batch_size)  # fmt: skip
    sender = Sender(create, create_batch, no_current, explain, unusable_pass)
    sink = Collected(durable)
    result = asyncio.run(issue_all(requests, sender, sink, settings, stop, sleep=clock.sleep))
    return Ran(sink.outcomes, result.retries, result.aborted, result.unclear)


# --- delivery by mail: a tenant with managers and a sender's mailbox ------------------------
MAIL_SENDER = "onboarding@contoso.com"
MAIL_FAST = {"max_per_minute": 60_000}  # the client's pace, for tests that are not about pacing
MAIL_START = (dt.date.today() + dt.timedelta(days=3)).isoformat()  # the hires' start date


def mail_tenant(
    hires: dict[str, str | None],
    managers: Sequence[str] = (),
    *,
    no_mailbox: Sequence[str] = (),
    faults: Faults | None = None,
    **extra: Any,
) -> SimulatorState:
    """A tenant of hires (UPN: manager UPN or None), their managers (with a mailbox unless
    listed in `no_mailbox`) and the sender's mailbox. Mail limits off unless `faults` says."""
    people = [SimUser(f"00000000-0000-0000-0000-{n:012d}", upn, manager=manager)
              for n, (upn, manager) in enumerate(hires.items())]  # fmt: skip
    for n, upn in enumerate([*managers, MAIL_SENDER]):
        name = upn.split("@")[0].title()
        mail = None if upn in no_mailbox else upn
        people.append(SimUser(f"10000000-0000-0000-0000-{n:012d}", upn, name, mail=mail))
    return SimulatorState(people, faults=faults or Faults(mail_per_minute=None), **extra)


def mail_sheet(path: Path, upns: Sequence[str], **columns: Sequence[str]) -> Path:
    """A CSV of hires starting soon; `columns` adds columns (header: one value per hire)."""
    headers = ["UPN", "Start Date", *columns]
    lines = [",".join(headers)]
    for n, upn in enumerate(upns):
        lines.append(",".join([upn, MAIL_START, *(values[n] for values in columns.values())]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mail_config(sim: Served, tmp_path: Path, **delivery: Any) -> Path:
    """A config for `sim` that delivers by mail from MAIL_SENDER (unpaced unless told)."""
    return sim.config(tmp_path / "c.yaml", delivery={"method": "mail", "sender": MAIL_SENDER,
                                                     **MAIL_FAST, **delivery})  # fmt: skip


def passes_in(mail: SimMail, state: SimulatorState, upns: Sequence[str]) -> set[str]:
    """Which of these hires' current passes the message holds (in its HTML, escaped: a pass
    may hold an & or a <)."""
    return {u for u in upns if shown_in_html(state.current_pass(u) or "\0") in mail.body}


def shown_in_html(value: str) -> str:
    """A value as an HTML body shows it."""
    return str(markupsafe.escape(value))


__all__ = ["CLIENT_ID", "TENANT", "Faults", "Served", "SimulatorState", "users"]


# --- after the run (status, revoke): shared by test_lifecycle.py and test_trial18.py ----------
PAST = (dt.date.today() - dt.timedelta(days=1)).isoformat()  # started: the pass is usable at once
LATER = (dt.date.today() + dt.timedelta(days=5)).isoformat()  # not started: the pass not yet valid
SHORT, LONG = 60, 480  # lifetimes (minutes) the simulator's default policy allows


def write_sheet(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["UPN,Start Date,Lifetime"] + [f"{u},{d},{m}" for u, d, m in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def json_out(capsys: pytest.CaptureFixture[str]) -> Any:
    """Standard output, which must be exactly one JSON value."""
    return json.loads(capsys.readouterr().out)


def issue(
    sim: Any, tmp_path: Path, rows: list[tuple[str, str, int]], capsys: pytest.CaptureFixture[str]
) -> tuple[Path, str]:
    """Run the sheet against the simulator: the config and the run id."""
    config = sim.config(tmp_path / "c.yaml")
    sheet = write_sheet(tmp_path / "hires.csv", rows)
    assert main(["run", str(sheet), "-c", str(config), "--json"]) == EXIT_OK
    return config, json_out(capsys)["run_id"]


def revoke_process(config: Path, run_id: str, *args: str) -> subprocess.Popen[str]:
    """`onboard revoke RUN_ID --yes` in a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONBOARD_")}
    env["ONBOARD_CLIENT_SECRET"] = "simulator-secret"
    return subprocess.Popen(
        [sys.executable, "-m", "onboard", "revoke", run_id, "--yes", "-c", str(config), *args],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_deletes(state: SimulatorState, proc: subprocess.Popen[str], count: int) -> None:
    """Poll (the simulator answers in another thread) until it has deleted `count` passes."""
    deadline = time.monotonic() + 60
    while len(state.deleted) < count:
        assert time.monotonic() < deadline and proc.poll() is None, "revoke did not get going"
        time.sleep(0.01)


# --- a Graph client of the production code path, on a static token (test_budgets, test_trial16)
TOKEN = "static-test-token"


class Tokens:
    async def token(self) -> str:
        return TOKEN

    async def refresh(self, rejected: str) -> str:
        return TOKEN


def pass_request(user: str) -> PassRequest:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    return PassRequest(Origin("hires.csv", 2), user, None, start, 480, True)


def with_client(served: Served, work: Callable[[GraphClient], Awaitable[Any]]) -> Any:
    """Run `work` with a Graph client of the production code path against the simulator."""
    served.state.tokens[TOKEN] = float("inf")

    async def main() -> Any:
        context = ssl.create_default_context(cafile=str(served.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            client = GraphClient(http, served.url, Tokens(), pacing=Pacing())  # type: ignore[arg-type]
            return await asyncio.wait_for(work(client), timeout=20)

    return asyncio.run(main())
