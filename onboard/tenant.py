"""Which tenant a run works in, and one run per tenant at a time on this machine.

A run belongs to the tenant its token was issued for: the `tid` claim of the access token
(the tenant's GUID, whatever name `auth.tenant_id` gives it) and the Graph root it talks to.
Every journal record carries that pair, so a sheet rehearsed on the simulator, or run against
another tenant, is never taken as already issued here.

Two runs for the same tenant at once (two journals, two folders) would each issue every pass,
the second replacing the first's. A lock file per tenant in the user's state folder
(platformdirs) keeps a second run out, whichever journal it uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .errors import AuthError, ConfigError, JournalLocked
from .files import LockFile, holder_line, private_dir

SIMULATOR_ROOT = "simulator"  # the Graph root recorded for the built-in, in-process simulator
SIMULATOR_TENANT = "contoso.onmicrosoft.com"  # the built-in simulator's demo tenant
SIMULATOR_CLIENT_ID = "00000000-0000-0000-0000-0000000000aa"
# A claim the simulator's tokens carry (simulator.SIMULATED_CLAIM): the run was simulated.
SIMULATED_CLAIM = "onboard_simulated"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


@dataclass(frozen=True, slots=True)
class Tenant:
    """The tenant a run issues passes in."""

    id: str  # the `tid` claim: the tenant's GUID
    graph_root: str  # the Graph root (https://graph.microsoft.com...), or "simulator"
    name: str | None = None  # auth.tenant_id as configured: a GUID or a domain
    simulated: bool = False

    @property
    def key(self) -> str:
        """What the journal records: a pass belongs to this tenant at this Graph root."""
        return f"{self.id} {self.graph_root}"

    def describe(self) -> str:
        """For people: the configured name and the tenant id, and where."""
        shown = self.id if not self.name or self.name == self.id else f"{self.name} ({self.id})"
        where = "the built-in simulator" if self.graph_root == SIMULATOR_ROOT else self.graph_root
        return f"{shown} at {where}" + (" [SIMULATED]" if self.simulated else "")


def token_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT access token (not verified: it came from the sign-in service over a
    verified connection, and only the tenant is read from it); None if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def tenant_of(token: str, *, graph_root: str, configured: str | None, simulator: bool) -> Tenant:
    """The tenant a token was issued for. Raises AuthError when it cannot be told: a token that
    is not a JWT, with auth.tenant_id a domain rather than the tenant's GUID."""
    claims = token_claims(token) or {}
    tid = claims.get("tid")
    simulated = simulator or claims.get(SIMULATED_CLAIM) is True
    if isinstance(tid, str) and _GUID.match(tid):
        if configured and _GUID.match(configured) and configured.lower() != tid.lower():
            raise AuthError(
                f"the token is for the tenant {tid}, not auth.tenant_id {configured}: passes "
                "would land in another tenant. Check auth.tenant_id and auth.authority"
            )
        return Tenant(tid.lower(), graph_root, configured, simulated)
    if configured and _GUID.match(configured):
        return Tenant(configured.lower(), graph_root, configured, simulated)
    raise AuthError(
        "cannot tell which tenant this token is for (it carries no tenant id): set "
        "auth.tenant_id to the tenant's GUID (Entra admin center > Overview > Tenant ID)"
    )


def lock_folder() -> Path:
    """Where the per-tenant locks live: the user's state folder (XDG_STATE_HOME on Linux)."""
    return platformdirs.user_state_path("onboard") / "tenants"


class TenantLock:
    """Held while a run may issue passes in a tenant: a second run for it exits 5.

    Keyed by the tenant id alone (tenant ids are unique across clouds), so however the Graph
    root is spelled, two runs for one tenant meet the same lock."""

    def __init__(self, tenant: Tenant, folder: Path | None = None) -> None:
        self.tenant = tenant
        digest = hashlib.sha256(tenant.id.encode()).hexdigest()[:24]
        self.path = (folder or lock_folder()) / f"{digest}.lock"
        self._file = LockFile(self.path)

    def acquire(self, what: str) -> None:
        """Take the lock; raises JournalLocked naming the run that holds it."""
        try:
            private_dir(self.path.parent)
            held_by = self._file.acquire(holder_line(what))
        except OSError as exc:
            raise ConfigError(
                f"cannot take the tenant lock {self.path}: {exc.strerror} (the folder comes from "
                "XDG_STATE_HOME, or ~/.local/state: make it writable)"
            ) from None
        if held_by is not None:
            raise JournalLocked(
                f"another onboard run is issuing passes in the tenant {self.tenant.describe()} "
                f"on this machine ({held_by}); wait for it to finish",
                holder=held_by,
            )

    def release(self) -> None:
        self._file.release()
