"""A Graph tenant inside your test, as httpx ships MockTransport: `fake_tenant`.

    async with fake_tenant(["ada@contoso.com"]) as tenant:
        report = await onboard.run(config, requests=[...], client=tenant)
        assert tenant.passes() == {i.request.user: i.temporary_access_pass for i in report.issued}

The tenant is onboard's simulator (onboard/simulator.py: Graph's rules for passes, the pass
policy, guests, admins, throttling and the faults it can inject), served on a loopback port of
this event loop. The run under test takes the production path (GraphClient over aiohttp, every
request and answer as with a real tenant); only the sign-in is skipped (a token the tenant
issued, handed over at once: no MSAL) and the connection is plain HTTP (no certificates, no
TLS handshakes). `tenant.state` is the simulator's state, for arranging (give a user a pass
beforehand, revoke tokens) and for asserting (every pass it ever created, its counters).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .config import Config, load_config
from .connect import Connection, connector_limit, graph_client
from .simulator import Faults, SimulatorState, SimUser, make_app
from .tenant import SIMULATOR_ROOT, SIMULATOR_TENANT, tenant_of

__all__ = ["FakeTenant", "Faults", "SimUser", "SimulatorState", "StaticTokens", "fake_tenant"]

LOOPBACK = "127.0.0.1"


class StaticTokens:
    """The token provider of a fake tenant: a token it issued, at once. One Graph refuses
    (expired, revoked with `state.revoke_tokens()`) is replaced, as a new sign-in would."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state
        self._token = state.issue_token()

    def __repr__(self) -> str:
        return "StaticTokens(<hidden>)"

    async def token(self) -> str:
        return self._token

    async def refresh(self, rejected: str) -> str:
        if rejected == self._token:
            self._token = self._state.issue_token()
        return self._token


@dataclass(frozen=True, slots=True)
class FakeTenant(Connection):
    """What `run(..., client=...)` and `validate(..., client=...)` take (a Connection: the
    Graph client and the tenant its token names), and the simulated tenant behind it."""

    state: SimulatorState
    url: str  # where it listens (http://127.0.0.1:port)

    def passes(self) -> dict[str, str]:
        """Each user's current pass as Graph holds it now: {UPN: pass value}."""
        upns = {user.id: user.user_principal_name for user in self.state.users.values()}
        return {upns[user_id]: held.value for user_id, held in self.state.passes.items()}


@contextlib.asynccontextmanager
async def fake_tenant(
    users: Iterable[str | SimUser] = (),
    *,
    faults: Faults | None = None,
    policy: dict[str, Any] | None = None,
    state: SimulatorState | None = None,
    config: Config | None = None,
) -> AsyncIterator[FakeTenant]:
    """A simulated tenant served on this event loop until the block ends.

    `users`: UPNs (each becomes a member the pass policy targets) or SimUser records (guests,
    admins, users with sign-in methods...). `faults`: latency, 503s, lost answers, 429s (see
    simulator.Faults). `policy`: the pass policy's fields that differ from the default.
    `state`: a SimulatorState of your own instead (then users, faults and policy must not be
    given): one state served twice is one tenant, e.g. before and after a restart. `config`:
    the run settings the Graph client is built with (timeout, rate ceiling, connections, API
    version), as a run builds its own; the defaults otherwise.
    """
    if state is None:
        state = SimulatorState(_users(users), faults=faults, policy=policy)
    elif users or faults is not None or policy is not None:
        raise ValueError("give either state, or users, faults and policy: not both")
    settings = config or load_config(None)
    runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        url = f"http://{LOOPBACK}:{runner.addresses[0][1]}"
        tokens = StaticTokens(state)
        connector = aiohttp.TCPConnector(limit=connector_limit(settings))
        async with aiohttp.ClientSession(connector=connector) as session:
            # The tenant as the built-in simulator's: a journal tells its runs apart from any
            # real tenant's, and `onboard validate` offline finds them.
            tenant = tenant_of(await tokens.token(), graph_root=SIMULATOR_ROOT,
                               configured=SIMULATOR_TENANT, simulator=True)  # fmt: skip
            client = graph_client(settings, session, url, tokens)
            yield FakeTenant(client, tenant, [], state, url)
    finally:
        await runner.cleanup()


def _users(given: Iterable[str | SimUser]) -> list[SimUser]:
    """SimUser records for the UPNs given (ids in order: ...0000, ...0001), the others as is."""
    return [
        user if isinstance(user, SimUser) else SimUser(f"00000000-0000-0000-0000-{n:012d}", user)
        for n, user in enumerate(given)
    ]
