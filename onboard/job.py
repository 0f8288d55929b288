"""One run, start to finish: read the files, get a token, issue the passes, write the audit.

This is the library entry point the CLI calls; it prints nothing and exits nothing. With
``graph.endpoint: simulator`` it starts the built-in simulator on a loopback port first and
then runs exactly the production path against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from . import __version__
from .audit import FileSummary, RunSummary, write_audit
from .auth import MsalTokenProvider, load_credential
from .config import CLOUDS, Config, OutputSettings
from .errors import ConfigError, GraphError, InputFileError
from .graph import GraphClient
from .outcomes import Failed, Issued, Outcome, PassRequest, Skipped
from .pool import Confirmation, OnOutcome, PoolResult, confirm, issue_all
from .reader import InputFile, plan, read_input
from .simulator import DEFAULT_CLIENT_SECRET, Faults, RunningSimulator, SimulatorState, serve
from .tls import make_ssl_context, requests_session

log = logging.getLogger(__name__)

SIMULATOR_TENANT = "contoso.onmicrosoft.com"
SIMULATOR_CLIENT_ID = "00000000-0000-0000-0000-0000000000aa"


@dataclass(slots=True)
class RunReport:
    run_id: str
    started: datetime
    finished: datetime | None = None
    files: list[InputFile] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    audit_path: Path | None = None
    stopped: str | None = None  # why the run stopped early, if it did
    retries: int = 0
    throttled: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.issued) + len(self.failed) + len(self.skipped)


@dataclass(frozen=True, slots=True)
class Endpoint:
    graph_url: str
    authority: str
    ca_bundle: Path | None
    secret_env: Mapping[str, str]


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def read_all(config: Config, inputs: Sequence[str | Path], now: datetime) -> list[InputFile]:
    """Read every input file; raises InputFileError on the first unusable one.

    Rows are traced by file name, or by the path as given when two inputs share a name.
    """
    paths = [Path(p) for p in inputs]
    names = [p.name for p in paths]
    files: list[InputFile] = []
    for path in paths:
        source = path.name if names.count(path.name) == 1 else str(path)
        read = read_input(path, config.input, config.pass_, now=now, source=source)
        for earlier in files:
            if earlier.sha256 == read.sha256:
                raise InputFileError(
                    f"has the same content as {earlier.path}; give each file once",
                    path=str(path),
                )
        files.append(read)
    return files


def check_output_dir(directory: Path) -> None:
    """Create the output directory (owner-only) and prove it is writable, before any request."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"cannot write the audit workbook into {directory}: it is a file, not a folder; "
            "set output.dir or --out to a folder"
        )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the audit workbook into {directory}: {exc.strerror}; "
            "set output.dir or --out to a writable folder"
        ) from None


async def run(
    config: Config,
    inputs: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    out_dir: Path | None = None,
    on_outcome: OnOutcome | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunReport:
    """Run the whole job.

    Raises ConfigError, InputFileError or AuthError before any pass is created. Once passes may
    exist, the audit workbook is written whatever happens (an error, Ctrl-C, SIGTERM as a
    cancellation), and only then is the exception passed on.
    """
    started = datetime.now(UTC)
    if out_dir is not None:
        config = replace(config, output=OutputSettings(out_dir))
    directory = config.output.dir
    report = RunReport(new_run_id(started), started)
    report.files = read_all(config, inputs, started)
    requests, conflicts, repeats = plan(report.files)
    checked: list[Outcome] = [*conflicts, *repeats]
    for f in report.files:
        checked.extend(f.failed)
        checked.extend(f.skipped)
    check_output_dir(directory)
    if on_start is not None:
        on_start(len(requests) + len(checked))

    def record(outcome: Outcome) -> None:
        if isinstance(outcome, Issued):
            report.issued.append(outcome)
        elif isinstance(outcome, Failed):
            report.failed.append(outcome)
        else:
            report.skipped.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    for outcome in sorted(checked, key=lambda o: (o.origin.source, o.origin.row)):
        _log_checked(outcome)
        record(outcome)

    if requests:
        async with contextlib.AsyncExitStack() as stack:
            endpoint = await stack.enter_async_context(_endpoint(config, env))
            client = await _connect(config, endpoint, stack)  # nothing sent if this fails
            pending = {r.origin: r for r in requests}

            def track(outcome: Outcome) -> None:
                pending.pop(outcome.origin, None)
                record(outcome)

            try:
                await _issue(config, client, requests, report, track)
            except BaseException as exc:
                interrupted = isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))
                report.stopped = "interrupted" if interrupted else f"crashed ({type(exc).__name__})"
                for r in pending.values():
                    record(_unfinished(r, interrupted))
                _write(config, report, directory)
                raise
    _write(config, report, directory)
    return report


def _unfinished(request: PassRequest, interrupted: bool) -> Failed:
    why = "interrupted" if interrupted else "stopped by an internal error"
    return Failed(
        request.origin,
        request.user,
        "Interrupted" if interrupted else "Not finished",
        f"The run was {why} while this row was waiting or in flight; it may or may not have a "
        "pass. Run again for this row (a new pass replaces any earlier one).",
    )


def _log_checked(outcome: Outcome) -> None:
    where = f"{outcome.origin.source} row {outcome.origin.row}"
    if isinstance(outcome, Failed):
        log.warning("%s %s: %s: %s", where, outcome.user or "-", outcome.reason, outcome.detail)
    elif isinstance(outcome, Skipped):
        log.info("%s %s: skipped: %s", where, outcome.user or "-", outcome.reason)


async def _connect(
    config: Config, endpoint: Endpoint, stack: contextlib.AsyncExitStack
) -> GraphClient:
    """Credential, TLS, a first token and the HTTP session: everything before the first create."""
    credential = load_credential(config.auth, endpoint.secret_env)
    context = make_ssl_context(endpoint.ca_bundle)
    http = stack.enter_context(contextlib.closing(requests_session(context)))
    tokens = MsalTokenProvider(
        method=config.auth.method,
        credential=credential,
        authority=endpoint.authority,
        scope=f"{CLOUDS[config.graph.cloud].graph_root}/.default",
        http_client=http,
    )
    await tokens.token()  # fail fast, before any pass is created
    connector = aiohttp.TCPConnector(ssl=context, limit=config.run.concurrency * 2)
    session = await stack.enter_async_context(
        aiohttp.ClientSession(connector=connector, trust_env=True)
    )
    return GraphClient(
        session,
        endpoint.graph_url,
        tokens,
        api_version=config.graph.api_version,
        timeout_seconds=config.run.timeout_seconds,
    )


async def _issue(
    config: Config,
    client: GraphClient,
    requests: list[PassRequest],
    report: RunReport,
    record: OnOutcome,
) -> None:
    report.notes.extend(await _policy_notes(client))
    run = config.run

    async def issue(batch: list[PassRequest], on_outcome: OnOutcome) -> PoolResult:
        return await issue_all(
            batch,
            client.create_pass,
            concurrency=run.concurrency,
            max_attempts=run.max_attempts,
            backoff_seconds=run.backoff_seconds,
            backoff_max_seconds=run.backoff_max_seconds,
            on_outcome=on_outcome,
        )

    async def check(suspects: list[Issued]) -> Confirmation:
        return await confirm(
            suspects,
            client.current_pass_id,
            concurrency=run.concurrency,
            max_attempts=run.max_attempts,
            backoff_seconds=run.backoff_seconds,
            backoff_max_seconds=run.backoff_max_seconds,
        )

    result = await issue(requests, record)
    _add_stats(report, result)
    unclear = result.unclear
    for _ in range(CONFIRM_ROUNDS):
        if not unclear or report.stopped:
            break
        # Give a request whose answer was lost time to finish at Graph before asking.
        settled_at = max(unclear.values()) + run.settle_seconds
        await asyncio.sleep(max(0.0, settled_at - time.monotonic()))
        suspects = [i for i in report.issued if i.origin in unclear]
        found = await check(suspects)
        _swap(report.issued, found.confirmed + found.unknown)
        if not found.replaced:
            return
        for item in found.replaced:
            report.issued.remove(item)
            log.warning(
                "%s row %d %s: Graph holds a different pass than the one it returned (a slower "
                "earlier request finished late); issuing again",
                item.origin.source,
                item.origin.row,
                item.request.user,
            )
        again = [replace(i.request, note=_REISSUE_NOTE) for i in found.replaced]
        result = await issue(again, _quiet(report))
        _add_stats(report, result)
        unclear = {r.origin: time.monotonic() for r in again}
    else:
        for item in [i for i in report.issued if i.origin in unclear]:
            report.issued.remove(item)
            report.failed.append(
                Failed(
                    item.origin,
                    item.request.user,
                    "Pass not confirmed",
                    "Graph kept holding a different pass than the one it returned. Run this "
                    "row again.",
                    attempts=item.attempts,
                    request_id=item.request_id,
                )
            )


CONFIRM_ROUNDS = 3
_REISSUE_NOTE = "issued again: a slower earlier request had replaced the first pass"


def _swap(issued: list[Issued], updated: Sequence[Issued]) -> None:
    by_origin = {i.origin: i for i in updated}
    issued[:] = [by_origin.get(i.origin, i) for i in issued]


def _quiet(report: RunReport) -> OnOutcome:
    def record(outcome: Outcome) -> None:
        if isinstance(outcome, Issued):
            report.issued.append(outcome)
        elif isinstance(outcome, Failed):
            report.failed.append(outcome)

    return record


def _add_stats(report: RunReport, result: PoolResult) -> None:
    report.retries += result.retries
    report.throttled += result.throttled
    if result.aborted is not None:
        report.stopped = f"aborted: {result.aborted}"


async def _policy_notes(client: GraphClient) -> list[tuple[str, str]]:
    try:
        policy = await client.get_policy()
    except GraphError as exc:
        if exc.status == 403:
            log.warning(
                "cannot read the pass policy (the app lacks Policy.Read.AuthenticationMethod); "
                "relying on Graph's answers"
            )
            return [("Pass policy", "not readable (needs Policy.Read.AuthenticationMethod)")]
        log.warning("cannot read the pass policy: HTTP %s %s", exc.status, exc.code)
        return [("Pass policy", f"not readable (HTTP {exc.status})")]
    state = str(policy.get("state"))
    if state != "enabled":
        log.warning(
            "the tenant's Temporary Access Pass policy is %s: every create will be refused. "
            "Turn it on in Entra admin center > Protection > Authentication methods > Policies",
            state,
        )
    return [
        (
            "Pass policy",
            f"{state}; lifetime {policy.get('minimumLifetimeInMinutes')}.."
            f"{policy.get('maximumLifetimeInMinutes')} minutes; one-time only: "
            f"{'yes' if policy.get('isUsableOnce') else 'no'}",
        )
    ]


@contextlib.asynccontextmanager
async def _endpoint(config: Config, env: Mapping[str, str]) -> AsyncIterator[Endpoint]:
    if not config.graph.is_simulator:
        yield Endpoint(config.graph.endpoint, authority_url(config), config.graph.ca_bundle, env)
        return
    yield_env = dict(env)
    secret_env = config.auth.client_secret_env
    yield_env.setdefault(secret_env, DEFAULT_CLIENT_SECRET)
    async with simulator_for(config) as sim:
        tenant = config.auth.tenant_id or SIMULATOR_TENANT
        log.info("running against the built-in Graph simulator at %s", sim.url)
        yield Endpoint(sim.url, f"{sim.url}/{tenant}", sim.ca_file, yield_env)


def authority_url(config: Config) -> str:
    """The tenant-specific sign-in authority: `auth.authority` (host, or a full URL) + tenant."""
    host = config.auth.authority or CLOUDS[config.graph.cloud].authority_host
    if urlsplit(host).path.strip("/"):
        return host  # already names the tenant
    return f"{host}/{config.auth.tenant_id}"


def simulator_state(config: Config) -> SimulatorState:
    """The simulated tenant described by the `simulator:` section."""
    s = config.simulator
    faults = Faults(
        latency_ms=s.latency_ms,
        fault_rate=s.fault_rate,
        throttle_rate=s.throttle_rate,
        throttle_burst=s.throttle_burst,
        retry_after_seconds=s.retry_after_seconds,
        lost_response_rate=s.lost_response_rate,
    )
    if s.tenant is not None:
        return SimulatorState.from_file(s.tenant, faults=faults, seed=s.seed)
    return SimulatorState(faults=faults, auto_users=True, seed=s.seed)


@contextlib.asynccontextmanager
async def simulator_for(config: Config) -> AsyncIterator[RunningSimulator]:
    """The in-process simulator on a free loopback port."""
    async with serve(simulator_state(config)) as running:
        yield running


def _write(config: Config, report: RunReport, directory: Path) -> None:
    report.finished = datetime.now(UTC)
    summary = RunSummary(
        run_id=report.run_id,
        started=report.started,
        finished=report.finished,
        version=__version__,
        files=[FileSummary(str(f.path), f.sha256, f.row_count, f.sheet) for f in report.files],
        settings=config.public_settings(),
        status=report.stopped or "completed",
        notes=[*report.notes, ("Retries", report.retries), ("429 answers", report.throttled)],
    )
    path = directory / f"onboard-{report.run_id}.xlsx"
    report.audit_path = write_audit(path, summary, report.issued, report.failed, report.skipped)
    os.chmod(report.audit_path, 0o600)
