"""Where a run's requests go, and the connection to it: the endpoint (a tenant's, or the
built-in simulator started here on a loopback port), the sign-in authority, TLS, the proxy, a
first token, and the tenant that token names. Nothing here reads a spreadsheet or a journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from .auth import Credential, MsalTokenProvider, TokenProvider, load_credential
from .config import CLOUDS, Config
from .errors import RunStopped
from .graph import GraphClient
from .rate import Pacing
from .simulator import DEFAULT_CLIENT_SECRET, Faults, RunningSimulator, SimulatorState, serve
from .tenant import SIMULATOR_ROOT, SIMULATOR_TENANT, Tenant, tenant_of
from .tls import IDENTITY_ENDPOINT, SIGN_IN_SERVICE, make_ssl_context, requests_session

log = logging.getLogger(__name__)
T = TypeVar("T")

# Stopped (a signal) while signing in: how long the sign-in may still take to answer, so that
# the rows get their "not sent" outcomes and an audit, before the run gives it up.
SIGN_IN_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    graph_url: str
    authority: str
    ca_bundle: Path | None
    secret_env: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Connection:
    """A signed-in client, the tenant its token names, and what the operator must hear (a
    certificate about to expire). `onboard.run(..., client=...)` takes one instead of signing
    in; onboard.testing.fake_tenant yields one."""

    client: GraphClient
    tenant: Tenant
    attention: list[str]


async def connect(
    config: Config, env: Mapping[str, str], stack: contextlib.AsyncExitStack
) -> Connection:
    """The endpoint (the simulator, started here, or the tenant's), a signed-in client, and
    the tenant. Everything opened is closed with `stack`."""
    endpoint = await stack.enter_async_context(_endpoint(config, env))
    client, token, credential = await _sign_in(config, endpoint, stack)
    simulator = config.graph.is_simulator
    tenant = tenant_of(
        token,
        graph_root=SIMULATOR_ROOT if simulator else config.graph.endpoint,
        configured=config.auth.tenant_id or (SIMULATOR_TENANT if simulator else None),
        simulator=simulator,
    )
    log.info("signed in to the tenant %s", tenant.describe())
    expiring = credential.expiring(datetime.now(UTC))
    return Connection(client, tenant, [expiring] if expiring else [])


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event | None) -> T:
    """`work`'s result, unless `stop` is set first: then RunStopped (work is cancelled; a
    sign-in thread still waiting on the network is a daemon and cannot keep the process)."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():  # a moment more: a sign-in about to answer lets the rows be recorded
        await asyncio.wait({task}, timeout=SIGN_IN_GRACE_SECONDS)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise RunStopped("stopped while signing in: nothing was sent")


async def _sign_in(
    config: Config, endpoint: Endpoint, stack: contextlib.AsyncExitStack
) -> tuple[GraphClient, str, Credential]:
    """Credential, TLS, a first token and the HTTP session: everything before the first
    create. Returns the client and that first token (it names the tenant)."""
    credential = load_credential(config.auth, endpoint.secret_env)
    context = make_ssl_context(endpoint.ca_bundle)
    service = IDENTITY_ENDPOINT if config.auth.method == "managed_identity" else SIGN_IN_SERVICE
    http = stack.enter_context(contextlib.closing(requests_session(context, service=service)))
    tokens = MsalTokenProvider(
        method=config.auth.method,
        credential=credential,
        authority=endpoint.authority,
        scope=f"{CLOUDS[config.graph.cloud].graph_root}/.default",
        http_client=http,
    )
    token = await tokens.token()  # fail fast, before any pass is created
    connector = aiohttp.TCPConnector(ssl=context, limit=connector_limit(config))
    # HTTPS_PROXY / NO_PROXY are read once here, not by aiohttp on every request (its
    # trust_env looks them up, and ~/.netrc, in a thread per request).
    proxy, proxy_auth = None, None
    with contextlib.suppress(LookupError):
        proxy, proxy_auth = get_env_proxy_for_url(URL(endpoint.graph_url))
    session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
    client = graph_client(config, session, endpoint.graph_url, tokens, proxy, proxy_auth)
    return client, token, credential


def graph_client(
    config: Config,
    session: aiohttp.ClientSession,
    graph_url: str,
    tokens: TokenProvider,
    proxy: URL | None = None,
    proxy_auth: aiohttp.BasicAuth | None = None,
) -> GraphClient:
    """The Graph client a run uses, with the run's settings (onboard.testing builds its fake
    tenant's the same way)."""
    return GraphClient(
        session,
        graph_url,
        tokens,
        api_version=config.graph.api_version,
        timeout_seconds=config.run.timeout_seconds,
        pacing=Pacing(
            config.run.max_rate,
            config.run.max_read_rate,
            max_mail_per_minute=config.delivery.max_per_minute,
        ),
        proxy=proxy,
        proxy_auth=proxy_auth,
    )


def connector_limit(config: Config) -> int:
    """The most connections a run's HTTP session opens to Graph at once: creates
    (run.concurrency), the checks ahead of them (twice as many workers, each up to two reads at
    once), and the odd token or confirm read; a create never waits for a socket a read holds."""
    return config.run.concurrency * 6


@contextlib.asynccontextmanager
async def _endpoint(config: Config, env: Mapping[str, str]) -> AsyncIterator[Endpoint]:
    if not config.graph.is_simulator:
        yield Endpoint(config.graph.endpoint, authority_url(config), config.graph.ca_bundle, env)
        return
    yield_env = dict(env)
    secret = config.auth.client_secret
    if secret.env and secret.inline is None and secret.file is None:
        yield_env.setdefault(secret.env, DEFAULT_CLIENT_SECRET)  # the simulator's demo secret
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
        read_rate=s.read_rate,
        read_burst=s.read_burst,
        retry_after_seconds=s.retry_after_seconds,
        lost_response_rate=s.lost_response_rate,
        mail_per_minute=s.mail_per_minute,
        mail_concurrency=s.mail_concurrency,
    )
    if s.tenant is not None:
        return SimulatorState.from_file(s.tenant, faults=faults, seed=s.seed, mail_dir=s.mail_dir)
    return SimulatorState(faults=faults, auto_users=True, seed=s.seed, mail_dir=s.mail_dir)


@contextlib.asynccontextmanager
async def simulator_for(config: Config) -> AsyncIterator[RunningSimulator]:
    """The in-process simulator on a free loopback port."""
    async with serve(simulator_state(config)) as running:
        yield running
