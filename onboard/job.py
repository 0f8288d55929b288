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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from . import __version__
from .audit import FileSummary, RunSummary, write_audit
from .auth import MsalTokenProvider, load_credential
from .config import CLOUDS, Config
from .errors import ConfigError, GraphError
from .graph import GraphClient
from .outcomes import Failed, Issued, Outcome, PassRequest, Skipped
from .pool import OnOutcome, issue_all
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
    """Read every input file; raises InputFileError on the first unusable one."""
    return [read_input(path, config.input, config.pass_, now=now) for path in inputs]


def check_output_dir(directory: Path) -> None:
    """Create the output directory (owner-only) and prove it is writable, before any request."""
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
    """Run the whole job. Raises ConfigError, InputFileError or AuthError before any request."""
    started = datetime.now(UTC)
    report = RunReport(new_run_id(started), started)
    report.files = read_all(config, inputs, started)
    requests, conflicts, repeats = plan(report.files)
    for f in report.files:
        report.failed.extend(f.failed)
        report.skipped.extend(f.skipped)
    report.failed.extend(conflicts)
    report.skipped.extend(repeats)
    directory = out_dir or config.output.dir
    check_output_dir(directory)
    if on_start is not None:
        on_start(len(requests))

    def record(outcome: Outcome) -> None:
        if isinstance(outcome, Issued):
            report.issued.append(outcome)
        elif isinstance(outcome, Failed):
            report.failed.append(outcome)
        else:
            report.skipped.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    pending = {r.origin: r for r in requests}

    def track(outcome: Outcome) -> None:
        pending.pop(outcome.origin, None)
        record(outcome)

    try:
        if requests:
            async with _endpoint(config, env) as endpoint:
                await _issue(config, endpoint, requests, report, track)
    except asyncio.CancelledError:
        report.stopped = "interrupted"
        for r in pending.values():
            record(
                Failed(
                    r.origin,
                    r.user,
                    "Interrupted",
                    "The run was interrupted while this row was waiting or in flight; it may "
                    "or may not have a pass. Run again for this row (a new pass replaces any "
                    "earlier one).",
                )
            )
        _write(config, report, directory)
        raise
    _write(config, report, directory)
    return report


async def _issue(
    config: Config,
    endpoint: Endpoint,
    requests: list[PassRequest],
    report: RunReport,
    record: OnOutcome,
) -> None:
    credential = load_credential(config.auth, endpoint.secret_env)
    context = make_ssl_context(endpoint.ca_bundle)
    http = requests_session(context)
    scope = f"{CLOUDS[config.graph.cloud].graph_root}/.default"
    tokens = MsalTokenProvider(
        method=config.auth.method,
        credential=credential,
        authority=endpoint.authority,
        scope=scope,
        http_client=http,
    )
    try:
        await tokens.token()  # fail fast, before any pass is created
        connector = aiohttp.TCPConnector(ssl=context, limit=config.run.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector, trust_env=True) as session:
            client = GraphClient(
                session,
                endpoint.graph_url,
                tokens,
                api_version=config.graph.api_version,
                timeout_seconds=config.run.timeout_seconds,
            )
            report.notes.extend(await _policy_notes(client))
            result = await issue_all(
                requests,
                client.create_pass,
                concurrency=config.run.concurrency,
                max_attempts=config.run.max_attempts,
                backoff_seconds=config.run.backoff_seconds,
                backoff_max_seconds=config.run.backoff_max_seconds,
                on_outcome=record,
            )
    finally:
        http.close()
    report.retries, report.throttled = result.retries, result.throttled
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
        host = config.auth.authority or CLOUDS[config.graph.cloud].authority_host
        yield Endpoint(
            config.graph.endpoint, f"{host}/{config.auth.tenant_id}", config.graph.ca_bundle, env
        )
        return
    yield_env = dict(env)
    secret_env = config.auth.client_secret_env
    yield_env.setdefault(secret_env, DEFAULT_CLIENT_SECRET)
    async with simulator_for(config) as sim:
        tenant = config.auth.tenant_id or SIMULATOR_TENANT
        log.info("running against the built-in Graph simulator at %s", sim.url)
        yield Endpoint(sim.url, f"{sim.url}/{tenant}", sim.ca_file, yield_env)


def simulator_state(config: Config) -> SimulatorState:
    """The simulated tenant described by the `simulator:` section."""
    s = config.simulator
    faults = Faults(
        latency_ms=s.latency_ms,
        fault_rate=s.fault_rate,
        throttle_rate=s.throttle_rate,
        throttle_burst=s.throttle_burst,
        retry_after_seconds=s.retry_after_seconds,
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
        notes=[
            *report.notes,
            ("Retries", str(report.retries)),
            ("429 answers", str(report.throttled)),
        ],
    )
    path = directory / f"onboard-{report.run_id}.xlsx"
    report.audit_path = write_audit(path, summary, report.issued, report.failed, report.skipped)
    os.chmod(report.audit_path, 0o600)
