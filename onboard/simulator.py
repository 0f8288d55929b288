"""A local stand-in for Microsoft Graph and the Entra sign-in endpoint, as a real aiohttp app.

It serves, over HTTPS with a throwaway certificate authority:

- ``GET  /{tenant}/v2.0/.well-known/openid-configuration`` and
  ``POST /{tenant}/oauth2/v2.0/token`` (client credentials), so msal runs unchanged. The token
  endpoint checks credentials as Entra ID does: the registered client secret, or a client
  assertion signed by a registered certificate (named by its thumbprint, for this endpoint,
  issued by the client, in its time), answering Entra ID's errors (AADSTS codes) otherwise;
- ``POST|GET /{version}/users/{id|upn}/authentication/temporaryAccessPassMethods`` and
  ``DELETE .../temporaryAccessPassMethods/{id}``, with Graph's rules: one pass per user, a new
  one replaces the old, the value is returned only in the 201 response; a user outside the
  policy's target groups still gets one, which says it cannot be used (DisabledByPolicy); an
  external (invited) guest is refused, an internal guest is not. Passes carry `@odata.type`
  and their methodUsabilityReason (EnabledByPolicy, NotYetValid, Expired, OneTimeUsed after
  `SimulatorState.sign_in_with`, DisabledByPolicy), and refusals Graph's documented texts;
- ``GET /{version}/policies/authenticationMethodsPolicy/authenticationMethodConfigurations/
  temporaryAccessPass``;
- for delivery by mail: ``GET /{version}/users/{id|upn}`` (name and mailbox address),
  ``.../manager`` (404 when none is set) and ``.../sponsors``; and
  ``POST .../users/{sender}/sendMail`` with Exchange's limits per mailbox (messages a minute,
  requests at once: 429 ApplicationThrottled with a Retry-After beyond them) and its refusals
  (404 ErrorInvalidUser, MailboxNotEnabledForRESTAPI for a user without a mailbox). Accepted
  messages are kept (`SimulatorState.mail`) and, with a mail folder, written there as .eml.

After the pass is issued, its life (tests call SimulatorState; `onboard simulate` users POST to
``/_simulator/{sign-in,replace,remove,register,advance}``): a sign-in with it, another admin
replacing or deleting it, methods the user registers, and the tenant's time moving on.

Errors have Graph's shape. Latency, transient 503/504 answers, responses lost after the pass was
created, and throttling (a token bucket answering 429 with Retry-After) can be switched on.
`SimulatorState` keeps every pass it issued so tests can check an audit against it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import math
import random
import re
import secrets
import ssl
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote

import jwt
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError
from .graph import (
    DISABLED_BY_POLICY,
    ENABLED_BY_POLICY,
    EXPIRED,
    GUEST_MARKER,
    GUEST_REFUSAL,
    INVITATION,
    LIFETIME_REFUSAL,
    NOT_YET_VALID,
    ONE_TIME_USED,
    POLICY_REFUSAL,
    START_IN_PAST_REFUSAL,
)
from .mail import address, eml, write_private
from .rate import MAILBOX_CONCURRENCY, MAILBOX_MESSAGES_PER_MINUTE, SECONDS_PER_MINUTE
from .tenant import SIMULATOR_CLIENT_ID

DEFAULT_CLIENT_SECRET = "simulator-secret"
DEFAULT_TOKEN_LIFETIME = 3599
# Client assertions (certificate sign-in), checked as Entra ID checks them.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS256", "PS256")
ASSERTION_CLOCK_SKEW_SECONDS = 300  # leeway on exp / nbf, as Entra's five minutes
# The simulated tenant's id (the `tid` claim of its tokens), whatever name a config gives it.
SIMULATED_TENANT_ID = "00000000-0000-4000-8000-00000000c0de"
SIMULATED_APP_ID = SIMULATOR_CLIENT_ID  # the app a 429's x-ms-throttle-scope names
# A claim only the simulator's tokens carry: a run that meets it says everywhere that it was
# simulated, even when the simulator is reached by URL like a real tenant (`onboard simulate`).
SIMULATED_CLAIM = "onboard_simulated"
# Graph's text for a multi-use pass under a one-time-only policy is not documented: this one is
# the simulator's own, and onboard reads nothing in it (it shows it as Graph's message).
MULTI_USE_REFUSAL = "The Temporary Access Pass policy does not allow a multi-use pass."
ALL_USERS = "all_users"  # the policy target that includes everyone
PASS_TYPE = "#microsoft.graph.temporaryAccessPassAuthenticationMethod"
PASS_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789+-=!@#$%&*"
DEFAULT_POLICY: dict[str, Any] = {
    "state": "enabled",
    "defaultLifetimeInMinutes": 60,
    "minimumLifetimeInMinutes": 60,
    "maximumLifetimeInMinutes": 480,
    "isUsableOnce": False,
    "defaultLength": 8,
    "includeTargets": [{"targetType": "group", "id": "all_users", "isRegistrationRequired": False}],
    "excludeTargets": [],
}
_TAP_PATH = "authentication/temporaryAccessPassMethods"
WARNING_USAGE = 0.8  # Graph sends x-ms-throttle-limit-percentage above this share of the budget
MAX_REPORTED_USAGE = 1.8  # ... and never more than this (GRAPH_FACTS.md)
MAX_BATCH = 20
MAX_FILTER_VALUES = 15  # values in one `in` filter
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_POLICY_PATH = (
    "policies/authenticationMethodsPolicy/authenticationMethodConfigurations/temporaryAccessPass"
)


@dataclass(slots=True)
class SimUser:
    id: str
    user_principal_name: str
    display_name: str = ""
    user_type: str = "Member"  # "Guest" alone is an internal guest, who may have a pass
    # False: outside the pass policy's targets whatever its groups (a shorthand for tests).
    in_pass_policy: bool = True
    forbidden: bool = False  # e.g. an admin the app's role may not touch: 403
    mail: str | None = None
    employee_id: str | None = None
    creation_type: str | None = None  # "Invitation" for a B2B guest; None for an internal one
    external_user_state: str | None = None  # "Accepted" / "PendingAcceptance" for a guest
    # Directory roles the user holds (display names, e.g. "Global Administrator").
    roles: list[str] = field(default_factory=list)
    # Authentication methods registered besides the password, by Graph's type name without
    # its namespace and suffix: "microsoftAuthenticator", "fido2", "windowsHelloForBusiness",
    # "phone", "softwareOath", "email", "platformCredential".
    methods: list[str] = field(default_factory=list)
    # The ids of the groups the user belongs to (the pass policy targets groups by id).
    groups: list[str] = field(default_factory=list)
    # The user's manager and sponsors (each a UPN or an id of another user); a user has a
    # mailbox when `mail` is set.
    manager: str | None = None
    sponsors: list[str] = field(default_factory=list)

    @property
    def external(self) -> bool:
        """An external guest: an invited account (#EXT# UPN, creationType Invitation, or an
        externalUserState). Graph refuses them a pass; internal guests it does not."""
        return (
            GUEST_MARKER in self.user_principal_name.upper()
            or self.creation_type == INVITATION
            or bool(self.external_user_state)
        )

    def as_person(self) -> dict[str, Any]:
        """The user as GET /users/{id}?$select=id,displayName,mail,userPrincipalName shows it."""
        return {
            "id": self.id,
            "displayName": self.display_name or None,
            "mail": self.mail,
            "userPrincipalName": self.user_principal_name,
        }

    def as_graph(self) -> dict[str, Any]:
        """The user as GET /users lists it (USER_FIELDS)."""
        return {
            "id": self.id,
            "userPrincipalName": self.user_principal_name,
            "mail": self.mail,
            "employeeId": self.employee_id,
            "userType": self.user_type,
            "creationType": self.creation_type,
            "externalUserState": self.external_user_state,
        }


@dataclass(slots=True)
class SimPass:
    id: str
    user_id: str
    value: str = field(repr=False)
    created: dt.datetime
    start: dt.datetime
    lifetime_minutes: int
    usable_once: bool
    used: bool = False  # a one-time pass someone signed in with: OneTimeUsed from then on


@dataclass(slots=True)
class Faults:
    """What can go wrong, and how often. All rates are probabilities per request."""

    latency_ms: float = 0.0
    fault_rate: float = 0.0  # 503 before anything happens
    lost_response_rate: float = 0.0  # create succeeds, then the answer is a 504
    late_create_rate: float = 0.0  # the create waits `late_create_seconds`, then happens anyway
    late_create_seconds: float = 1.0  # (longer than the client's timeout: it finishes late)
    throttle_rate: float | None = None  # writes per second; None: never throttle
    throttle_burst: int = 100
    read_rate: float | None = None  # resource units per second; None: never throttle
    read_burst: int = 8000
    retry_after_seconds: float | None = None  # fixed Retry-After; None: time until a token
    conflict_on_existing: bool = False  # old behaviour: 409 while a valid pass exists
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    # Exchange's limits per sending mailbox (None: no limit on messages a minute).
    mail_per_minute: int | None = MAILBOX_MESSAGES_PER_MINUTE
    mail_concurrency: int = MAILBOX_CONCURRENCY
    mail_latency_ms: float = 0.0  # how long sendMail holds its request (a concurrency slot)
    mail_lost_rate: float = 0.0  # the message is accepted, then the answer is a 504


@dataclass(frozen=True, slots=True)
class SimMail:
    """A message sendMail accepted: who from and to, its subject and body (it holds passes:
    kept out of repr), and the .eml file it was written to, if any."""

    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    body: str = field(repr=False)
    content_type: str
    save_to_sent_items: bool
    received: dt.datetime
    path: Path | None = None


WRITE_LIMIT = "WriteLimitExceeded"  # x-ms-throttle-information, as Graph names the budgets
RESOURCE_UNIT_LIMIT = "ResourceUnitLimitExceeded"
THROTTLE_SCOPE = {WRITE_LIMIT: "Write", RESOURCE_UNIT_LIMIT: "ReadWrite"}
# Base resource-unit costs of the reads onboard makes that Graph documents above 1
# (throttling-limits.md, identity and access): listing users, and a user's transitive
# memberships (me/transitiveMemberOf, which applies to users/{id} too). Any other costs 1.
LIST_USERS_COST = 2
TRANSITIVE_MEMBER_OF_COST = 2


def resource_units(call: Call) -> int:
    """What a request costs in resource units, as Graph's identity service counts them: a
    base cost by path, $select -1, $expand +1, $top under 20 -1, never below 1."""
    if call.method != "GET":
        return 1
    parts = call.path.strip("/").split("/")
    cost = 1
    if parts == ["users"]:
        cost = LIST_USERS_COST
    elif len(parts) >= 3 and parts[0] == "users" and parts[2] == "transitiveMemberOf":
        cost = TRANSITIVE_MEMBER_OF_COST
    query = dict(parse_qsl(call.query))
    cost += ("$expand" in query) - ("$select" in query)
    top = query.get("$top", "")
    if top.isdigit() and int(top) < 20:
        cost -= 1
    return max(1, cost)


@dataclass(frozen=True, slots=True)
class Refusal:
    budget: str  # WRITE_LIMIT or RESOURCE_UNIT_LIMIT
    wait: float  # seconds until the budget allows one more


class Bucket:
    """One budget: a token bucket of `burst` that refills at `rate` per second (a rate of
    None: it never runs out). `limits` gives (rate, burst) as the faults say now."""

    def __init__(self, limits: Callable[[], tuple[float | None, int]], now: float) -> None:
        self.limits = limits
        self.level = float(limits()[1])
        self.at = now

    def refused(self, amount: float, now: float) -> float | None:
        """Refill to `now`; if `amount` is not there, spend it as debt and return the seconds
        until one more is allowed."""
        rate, burst = self.limits()
        if rate is None:
            return None
        self.level = min(burst, self.level + (now - self.at) * rate)
        self.at = now
        if self.level >= amount:
            return None
        self.level = max(self.level - amount, -burst)
        return (amount - self.level) / rate

    def take(self, amount: float) -> None:
        if self.limits()[0] is not None:
            self.level -= amount

    @property
    def usage(self) -> float:
        """The share of the budget spent (1.0 and more: throttled); 0 for an endless one."""
        rate, burst = self.limits()
        return 0.0 if rate is None else (burst - self.level) / burst


class SimulatorState:
    """The simulated tenant: users, policy, passes, tokens and counters."""

    def __init__(
        self,
        users: list[SimUser] | None = None,
        *,
        policy: dict[str, Any] | None = None,
        faults: Faults | None = None,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        certificates: Sequence[x509.Certificate] = (),
        auto_users: bool = False,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] | None = None,
        mail_dir: Path | None = None,
    ) -> None:
        self.users: dict[str, SimUser] = {}
        for user in users or []:
            self.add_user(user)
        self.policy = dict(DEFAULT_POLICY if policy is None else {**DEFAULT_POLICY, **policy})
        self.faults = faults or Faults()
        # The app registration's credentials: its secret, and the certificates uploaded to it
        # (a client assertion must be signed by one of these, named by its thumbprint).
        self.client_secret = client_secret
        self.certificates = list(certificates)
        self.assertion_headers: list[dict[str, Any]] = []  # each client assertion's JWT header
        self.auto_users = auto_users
        self.random = random.Random(seed)
        self.clock = clock
        # The tenant's time, which passes start, expire and are used by: the wall clock (or
        # `now`), moved on by `advance` so that a test or a demo sees a pass expire at once.
        self._wall = now or _now
        self.offset = dt.timedelta(0)
        self.started = self.now()  # methods a user came with were registered before this
        self.registered_at: dict[tuple[str, str], dt.datetime] = {}  # (user id, kind) -> when
        self.delete_requests: dict[str, int] = {}  # method id -> DELETEs that reached it
        self.deleted: list[str] = []  # method ids deleted (204), in order
        self.passes: dict[str, SimPass] = {}  # user id -> the one current pass
        self.issued: list[SimPass] = []  # every pass ever created, in order
        self.tokens: dict[str, float] = {}  # access token -> expiry (clock)
        self.counts: dict[str, int] = {}
        self.create_attempts: dict[str, int] = {}  # user id -> POSTs that reached the handler
        self.policy_forbidden = False  # the app lacks Policy.Read.AuthenticationMethod: 403
        # The app lacks RoleManagement.Read.Directory / Directory.Read.All: reading a user's
        # directory roles is refused (403).
        self.roles_forbidden = False
        self.roles_forbidden_for: set[str] = set()  # user ids whose roles Graph will not show
        # The app lacks UserAuthenticationMethod.Read.All (it holds only the narrow
        # UserAuthMethod-TAP.* permission): listing a user's methods is refused (403).
        self.methods_forbidden = False
        self.tenant_id = SIMULATED_TENANT_ID  # the `tid` claim of the tokens it issues
        # Graph's two budgets per app and tenant (GRAPH_FACTS.md, "Throttling").
        f = self.faults  # read at each request: a test may change them as it goes
        self.budgets = {
            WRITE_LIMIT: Bucket(lambda: (f.throttle_rate, f.throttle_burst), clock()),
            RESOURCE_UNIT_LIMIT: Bucket(lambda: (f.read_rate, f.read_burst), clock()),
        }
        # Mail: what was accepted, where it is written, who hears of it (`onboard simulate`).
        self.mail: list[SimMail] = []
        self.mail_dir = mail_dir
        self.on_mail: Callable[[SimMail], None] | None = None
        self.mail_requests = 0  # sendMail requests that reached the handler
        self._mail_sent: dict[str, deque[float]] = {}  # mailbox -> clock() of recent messages
        self._mail_in_flight: dict[str, int] = {}
        self.mail_in_flight_peak = 0

    # --- tenant ---------------------------------------------------------------------------
    def add_user(self, user: SimUser) -> None:
        self.users[user.id.casefold()] = user
        self.users[user.user_principal_name.casefold()] = user

    def find_user(self, key: str) -> SimUser | None:
        user = self.users.get(key.casefold())
        if user is None and self.auto_users and "@" in key and GUEST_MARKER not in key.upper():
            user = SimUser(_stable_id(key), key)
            self.add_user(user)
        return user

    def give_pass(
        self, user: str, *, start: dt.datetime | None = None, lifetime_minutes: int = 480,
        created: dt.datetime | None = None, usable_once: bool = True,
    ) -> SimPass:  # fmt: skip
        """A pass issued outside onboard (the portal, a helpdesk): tests, and the `replace`
        control (another admin replacing the pass onboard issued)."""
        found = self.find_user(user)
        assert found is not None, user
        made = created or self.now()
        held = SimPass(str(uuid.uuid4()), found.id, "handed-out", made, start or made,
                       lifetime_minutes, usable_once)  # fmt: skip
        self.passes[found.id] = held
        return held

    def sign_in_with(self, user: str, value: str | None = None) -> bool:
        """Sign in as this user with the pass Graph holds for them (`value`: the pass value
        the person typed; None: the right one). True if Entra ID would accept it: the pass is
        usable now (EnabledByPolicy). A one-time pass is then used up (OneTimeUsed)."""
        found = self.find_user(user)
        held = None if found is None else self.passes.get(found.id)
        if found is None or held is None or (value is not None and value != held.value):
            return False
        if self.usability(found, held, self.now()) != ENABLED_BY_POLICY:
            return False
        held.used = held.usable_once
        return True

    def now(self) -> dt.datetime:
        """The tenant's time now (see `advance`)."""
        return self._wall() + self.offset

    def advance(self, seconds: float) -> dt.datetime:
        """Move the tenant's time on by `seconds`: passes start and expire by it (a test, or
        the demo's POST /_simulator/advance). Returns the new time."""
        self.offset += dt.timedelta(seconds=seconds)
        return self.now()

    def remove_pass(self, user: str) -> bool:
        """Another admin deletes the user's pass (the portal): True if there was one."""
        found = self.find_user(user)
        return found is not None and self.passes.pop(found.id, None) is not None

    def register_method(self, user: str, kind: str) -> None:
        """The user registers a sign-in method (`kind` as in SimUser.methods, e.g.
        "microsoftAuthenticator", "fido2", "phone"), now by the tenant's time."""
        found = self.find_user(user)
        if found is None:
            raise KeyError(user)
        if kind not in found.methods:
            found.methods.append(kind)
        self.registered_at[(found.id, kind)] = self.now()

    def in_policy(self, user: SimUser) -> bool:
        """Whether the pass policy targets this user: one of its includeTargets (all_users,
        or a group the user is in) and none of its excludeTargets."""

        def targets(key: str) -> set[str]:
            listed = self.policy.get(key) or []
            return {str(t.get("id")) for t in listed if isinstance(t, dict)}

        groups = set(user.groups)
        include, exclude = targets("includeTargets"), targets("excludeTargets")
        included = ALL_USERS in include or bool(groups & include)
        return user.in_pass_policy and included and not groups & exclude

    def usability(self, user: SimUser, held: SimPass, now: dt.datetime) -> str:
        """The pass's methodUsabilityReason now. Graph does not document which reason wins
        when several hold; here the policy first, then the pass's own window and use."""
        if self.policy.get("state") != "enabled" or not self.in_policy(user):
            return DISABLED_BY_POLICY
        if held.start + dt.timedelta(minutes=held.lifetime_minutes) <= now:
            return EXPIRED
        if held.used:
            return ONE_TIME_USED
        if held.start > now:
            return NOT_YET_VALID
        return ENABLED_BY_POLICY

    def current_pass(self, user: str) -> str | None:
        """The pass value Graph would hold for this user now (tests only)."""
        found = self.find_user(user)
        if found is None or found.id not in self.passes:
            return None
        return self.passes[found.id].value

    def passes_created_for(self, user: str) -> int:
        found = self.find_user(user)
        return 0 if found is None else sum(1 for p in self.issued if p.user_id == found.id)

    def issue_token(self) -> str:
        """A new access token for the app, as the token endpoint grants one once the
        credential checks out (onboard.testing hands it over without a sign-in)."""
        token = _access_token(self)
        self.tokens[token] = self.clock() + self.faults.token_lifetime
        return token

    def revoke_tokens(self) -> None:
        """Make every issued access token invalid, as if it had expired early."""
        self.tokens.clear()

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    # --- mail ---------------------------------------------------------------------------
    def set_manager(self, user: str, manager: str | None) -> None:
        """Make `manager` (a UPN or id; None: nobody) the user's manager (tests, demos)."""
        found = self.find_user(user)
        assert found is not None, user
        found.manager = manager

    def mail_to(self, address: str) -> list[SimMail]:
        """The accepted messages addressed (To) to `address`, in order."""
        key = address.casefold()
        return [m for m in self.mail if key in (t.casefold() for t in m.to)]

    def _mail_refusal(self, mailbox: str) -> float | None:
        """Exchange's limits per mailbox: None if one more message may go now (it is then
        counted), else the seconds until one may (a Retry-After)."""
        limit = self.faults.mail_per_minute
        if limit is None:
            return None
        now = self.clock()
        sent = self._mail_sent.setdefault(mailbox, deque())
        while sent and sent[0] <= now - SECONDS_PER_MINUTE:
            sent.popleft()
        if len(sent) >= limit:
            return sent[0] + SECONDS_PER_MINUTE - now
        sent.append(now)
        return None

    # --- throttling -----------------------------------------------------------------------
    def exhaust(self, budget: str) -> None:
        """Spend a budget (WRITE_LIMIT or RESOURCE_UNIT_LIMIT) to empty: the next request
        that needs it is refused (tests, demos)."""
        self.budgets[budget].level = 0.0

    def spend(self, call: Call) -> tuple[Refusal | None, int, float | None]:
        """Spend what `call` costs from Graph's budgets: a write spends one write and one
        resource unit, a read its resource units (by path and query, as Graph documents).

        Returns the refusal (the budget that ran out, and the seconds until it allows one
        more) or None, the resource units charged, and the budget usage Graph reports once it
        is over 80% (of the most used budget the request spends). As at Graph, a refused
        request still counts against the budget that refused it: it goes into debt (at most
        one burst deep), so a client that keeps sending while throttled waits longer.
        """
        units = resource_units(call)
        spends = [(RESOURCE_UNIT_LIMIT, float(units))]
        if call.method != "GET":
            spends.insert(0, (WRITE_LIMIT, 1.0))
        now = self.clock()
        for name, amount in spends:
            wait = self.budgets[name].refused(amount, now)
            if wait is not None:
                return Refusal(name, wait), units, self.budgets[name].usage
        for name, amount in spends:
            self.budgets[name].take(amount)
        usage = max(self.budgets[name].usage for name, _ in spends)
        return None, units, usage if usage > WARNING_USAGE else None

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> SimulatorState:
        """Load users and the pass policy from a tenant YAML file (see samples/tenant.yaml)."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read simulator tenant file {path}: {exc}") from None
        users = []
        for entry in data.get("users") or []:
            upn = str(entry["userPrincipalName"])
            users.append(
                SimUser(
                    id=str(entry.get("id") or _stable_id(upn)),
                    user_principal_name=upn,
                    display_name=str(entry.get("displayName") or ""),
                    user_type=str(entry.get("userType") or "Member"),
                    in_pass_policy=bool(entry.get("inPassPolicy", True)),
                    forbidden=bool(entry.get("forbidden", False)),
                    mail=_optional(entry.get("mail")),
                    employee_id=_optional(entry.get("employeeId")),
                    creation_type=_optional(entry.get("creationType")),
                    external_user_state=_optional(entry.get("externalUserState")),
                    roles=[str(r) for r in entry.get("roles") or []],
                    methods=[str(m) for m in entry.get("methods") or []],
                    groups=[str(g) for g in entry.get("groups") or []],
                    manager=_optional(entry.get("manager")),
                    sponsors=[str(g) for g in entry.get("sponsors") or []],
                )
            )
        return cls(users, policy=data.get("policy"), **kwargs)


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


def _stable_id(upn: str) -> str:
    return str(uuid.UUID(hashlib.md5(upn.casefold().encode()).hexdigest()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime, digits: int = 3) -> str:
    """UTC with a Z, to `digits` of a second (Graph shows a pass's createdDateTime to 6)."""
    text = moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text[: len(text) - 6 + digits] + "Z"


@dataclass(slots=True)
class Call:
    """One Graph request, on its own or inside a $batch."""

    method: str
    path: str  # raw path after the version, e.g. users/x/authentication/...
    body: Any
    request_id: str
    client_request_id: str
    base: str  # scheme://host
    query: str = ""  # the raw query string, e.g. $filter=...
    version: str = "v1.0"  # v1.0 or beta, as the URL said


# status, headers, JSON body
Answer = tuple[int, dict[str, str], dict[str, Any] | None]
_BAD_JSON = object()


def _graph_error(
    call: Call, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Answer:
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": _iso(_now())[:-5],
                "request-id": call.request_id,
                "client-request-id": call.client_request_id,
            },
        }
    }
    return status, dict(headers or {}), body


STATE_KEY = web.AppKey("state", SimulatorState)


def _state(request: web.Request) -> SimulatorState:
    state: SimulatorState = request.app[STATE_KEY]
    return state


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = _state(request)
    request[REQUEST_ID_KEY] = str(uuid.uuid4())
    if state.faults.latency_ms:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    try:
        response = await handler(request)
    except ConnectionError:
        # The client went away mid-request (a killed run): nobody is left to answer.
        response = web.Response(status=499)
    response.headers["request-id"] = request[REQUEST_ID_KEY]
    response.headers["client-request-id"] = request.headers.get("client-request-id", "")
    return response


def _respond(answer: Answer) -> web.Response:
    status, headers, body = answer
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.json_response(body, status=status, headers=headers)


async def _graph(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    raw_path, _, query = request.raw_path.partition("?")
    version, _, rest = raw_path.lstrip("/").partition("/")
    rest = rest.lstrip("/")  # Graph takes "v1.0//users" (as clients with a base URL send it)
    body: Any = None
    if request.can_read_body:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = _BAD_JSON
    call = Call(
        request.method,
        rest,
        body,
        request[REQUEST_ID_KEY],
        request.headers.get("client-request-id", ""),
        f"{request.scheme}://{request.host}",
        query,
        version,
    )
    auth = request.headers.get("Authorization", "")
    token = auth[7:] if auth.startswith("Bearer ") else ""
    expiry = state.tokens.get(token)
    if expiry is None or expiry < state.clock():
        state.count("401")
        message = "Access token has expired or is not yet valid."
        return _respond(_graph_error(call, 401, "InvalidAuthenticationToken", message))
    if rest == "$batch" and request.method == "POST":
        return await _batch(state, call)
    return _respond(await _call(state, call))


async def _call(state: SimulatorState, call: Call) -> Answer:
    """Throttling and faults, then the request itself: the same for a batch's sub-requests."""
    faults = state.faults
    state.count("graph_requests")
    if call.method == "POST" and call.path.endswith(f"/{_SEND_MAIL}"):
        # Outlook's own limits per mailbox, not the directory's budgets.
        return await _mail_call(state, call)
    refusal, units, usage = state.spend(call)
    if refusal is not None:
        state.count("429")
        state.count(f"429 {refusal.budget}")
        wait = refusal.wait
        retry_after = faults.retry_after_seconds if faults.retry_after_seconds is not None else wait
        # Graph sends whole seconds ("10") and decimals ("2.128"): so does the simulator,
        # rounding up: a wait of a second or more half the time in whole seconds.
        if retry_after >= 1 and state.random.random() < 0.5:
            shown = str(math.ceil(retry_after))
        else:
            shown = f"{math.ceil(retry_after * 1000) / 1000:.3f}".rstrip("0").rstrip(".")
        answer = _graph_error(
            call,
            429,
            "TooManyRequests",
            "Too many requests.",
            {
                "Retry-After": shown,
                "x-ms-throttle-scope": f"Tenant_Application/{THROTTLE_SCOPE[refusal.budget]}/"
                f"{SIMULATED_APP_ID}/{state.tenant_id}",
                "x-ms-throttle-information": refusal.budget,
            },
        )
    elif faults.fault_rate and state.random.random() < faults.fault_rate:
        state.count("503")
        answer = _graph_error(
            call, 503, "serviceNotAvailable", "The service is temporarily unavailable."
        )
    else:
        answer = await _route(state, call)
    answer[1]["x-ms-resource-unit"] = str(units)
    if usage is not None:
        answer[1]["x-ms-throttle-limit-percentage"] = f"{min(usage, MAX_REPORTED_USAGE):.2f}"
    return answer


async def _batch(state: SimulatorState, call: Call) -> web.Response:
    """POST $batch: each sub-request answered (and throttled) on its own, in any order."""
    state.count("batches")
    requests = call.body.get("requests") if isinstance(call.body, dict) else None
    if not isinstance(requests, list) or not requests:
        return _respond(_graph_error(call, 400, "BadRequest", "Invalid batch payload format."))
    if len(requests) > MAX_BATCH:
        message = f"Number of requests exceeds the limit of {MAX_BATCH}."
        return _respond(_graph_error(call, 400, "BadRequest", message))
    ids = [str(r.get("id") or "") if isinstance(r, dict) else "" for r in requests]
    if len(set(ids)) != len(ids) or "" in ids:
        return _respond(_graph_error(call, 400, "BadRequest", "Batch request ids must be unique."))
    calls = []
    for item in requests:
        headers = item.get("headers")
        headers = headers if isinstance(headers, dict) else {}
        body = item.get("body")
        if body is not None and "content-type" not in {str(k).lower() for k in headers}:
            body = _BAD_JSON  # Graph requires Content-Type with a body
        url, _, query = str(item.get("url") or "").lstrip("/").partition("?")
        method = str(item.get("method") or "GET").upper()
        calls.append(
            Call(
                method,
                url,
                body,
                str(uuid.uuid4()),
                call.client_request_id,
                call.base,
                query,
                call.version,
            )
        )
    answers = await asyncio.gather(*(_call(state, sub) for sub in calls))
    order = list(range(len(calls)))
    state.random.shuffle(order)  # Graph answers in any order: clients match by id
    responses = []
    for i in order:
        status, headers, body = answers[i]
        responses.append({"id": ids[i], "status": status, "headers": headers, "body": body})
    faults = state.faults
    if faults.lost_response_rate and state.random.random() < faults.lost_response_rate:
        state.count("lost_batch")
        return _respond(_graph_error(call, 504, "gatewayTimeout", "The gateway timed out."))
    return web.json_response({"responses": responses})


def _token_endpoint(request: web.Request) -> str:
    """This tenant's token endpoint URL: what discovery announces, and the only audience a
    client assertion may name."""
    return f"{request.scheme}://{request.host}/{request.match_info['tenant']}/oauth2/v2.0/token"


async def _openid_configuration(request: web.Request) -> web.Response:
    tenant = request.match_info["tenant"]
    base = f"{request.scheme}://{request.host}/{tenant}"
    return web.json_response(
        {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": _token_endpoint(request),
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        }
    )


def _sts_error(error: str, code: int, text: str, status: int = 401) -> web.Response:
    """An answer shaped like Entra ID's: the AADSTS code first, then trace lines."""
    now = _now()
    trace = str(uuid.uuid4())
    return web.json_response(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\n"
            f"Correlation ID: {uuid.uuid4()}\r\nTimestamp: {now:%Y-%m-%d %H:%M:%SZ}",
            "error_codes": [code],
            "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}",
            "trace_id": trace,
        },
        status=status,
    )


async def _token(request: web.Request) -> web.Response:
    state = _state(request)
    form = await request.post()
    state.count("token_requests")
    if form.get("grant_type") != "client_credentials":
        return _sts_error(
            "unsupported_grant_type", 70003, "The app requested an unsupported grant type.", 400
        )
    assertion = form.get("client_assertion")
    client_id = str(form.get("client_id") or "")
    if assertion:
        refused = _check_assertion(state, request, str(assertion), client_id,
                                   str(form.get("client_assertion_type") or ""))  # fmt: skip
        if refused is not None:
            state.count("assertions_refused")
            return refused
    elif not form.get("client_secret"):
        return _sts_error(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )
    elif form.get("client_secret") != state.client_secret:
        return _sts_error(
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the "
            "client secret value, not the client secret ID, for a secret added to app "
            f"'{client_id}'.",
        )
    token = state.issue_token()
    return web.json_response(
        {
            "token_type": "Bearer",
            "expires_in": state.faults.token_lifetime,
            "ext_expires_in": state.faults.token_lifetime,
            "access_token": token,
        }
    )


def _check_assertion(
    state: SimulatorState, request: web.Request, assertion: str, client_id: str, kind: str
) -> web.Response | None:
    """Entra ID's checks of a certificate sign-in: the certificate named by the header's
    thumbprint (x5t#S256, else x5t) is registered, the signature verifies with its public key,
    `aud` is this token endpoint, `iss` and `sub` the client id, `exp` / `nbf` hold. None if
    it passes; else the error Entra ID answers."""
    if kind != CLIENT_ASSERTION_TYPE:
        return _sts_error(
            "invalid_request",
            50027,
            f"Invalid client_assertion_type '{kind}': only '{CLIENT_ASSERTION_TYPE}' is supported.",
            400,
        )
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.DecodeError:
        return _sts_error("invalid_client", 50027, "JWT token is invalid or malformed.")
    state.assertion_headers.append(header)
    algorithm = header.get("alg")
    if algorithm not in ASSERTION_ALGORITHMS:
        return _sts_error(
            "invalid_client",
            5002738,
            f"Invalid JWT token. '{algorithm}' is not a supported signature algorithm. "
            f"Supported signing algorithms are: '{', '.join(ASSERTION_ALGORITHMS)}'",
        )
    certificate, thumbprint = _registered_certificate(state, header)
    if certificate is None:
        return _sts_error(
            "invalid_client",
            700027,
            "The certificate with identifier used to sign the client assertion is not "
            f"registered on application. [Reason - The key was not found., Thumbprint of key "
            f"used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or "
            f"directly use MS Graph to see configured keys for app Id '{client_id}'.]",
        )
    try:
        claims = jwt.decode(
            assertion,
            certificate.public_key(),  # type: ignore[arg-type]  # an RSA key, checked by alg
            algorithms=[algorithm],
            audience=_token_endpoint(request),
            leeway=ASSERTION_CLOCK_SKEW_SECONDS,
            options={"require": ["aud", "exp", "iss", "sub"]},
        )
    except jwt.InvalidSignatureError:
        return _sts_error("invalid_client", 700027, "Client assertion failed signature validation.")
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        return _sts_error(
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range. Current time: "
            f"{_now():%Y-%m-%dT%H:%M:%S}Z.",
        )
    except jwt.InvalidAudienceError:
        return _sts_error(
            "invalid_client", 50012, "Client assertion audience claim does not match Realm issuer."
        )
    except jwt.PyJWTError:  # a missing claim, a malformed body, a key of the wrong kind
        return _sts_error("invalid_client", 50027, "JWT token is invalid or malformed.")
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return _sts_error(
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        )
    return None


def _registered_certificate(
    state: SimulatorState, header: dict[str, Any]
) -> tuple[x509.Certificate | None, str]:
    """The registered certificate the header's thumbprint names (SHA-256 first), and that
    thumbprint in hex as Entra ID quotes it."""
    for name, algorithm in (("x5t#S256", hashes.SHA256()), ("x5t", hashes.SHA1())):  # noqa: S303
        value = header.get(name)
        if not isinstance(value, str):
            continue
        try:
            wanted = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except ValueError:
            return None, value
        for certificate in state.certificates:
            if certificate.fingerprint(algorithm) == wanted:
                return certificate, wanted.hex().upper()
        return None, wanted.hex().upper()
    return None, "(none: no x5t#S256 or x5t header)"


def _access_token(state: SimulatorState) -> str:
    """A token shaped like Entra's (a JWT: header, claims, signature; the signature is random):
    clients read the tenant from its `tid` claim, as they do from a real one."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": "https://graph.microsoft.com",
        "iss": f"https://sts.windows.net/{state.tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": now + state.faults.token_lifetime,
        "tid": state.tenant_id,
        "roles": ["UserAuthenticationMethod.ReadWrite.All"],
        "jti": secrets.token_urlsafe(16),
        SIMULATED_CLAIM: True,
    }
    signature = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{part({'typ': 'JWT', 'alg': 'RS256'})}.{part(claims)}.{signature}"


def _user_from_path(raw: str) -> tuple[str, str] | None:
    """Split a raw path after ``/users`` into (user key, remainder); None if malformed. The
    key is a path segment, or an OData string literal in ``('...')`` where '' stands for '.
    Percent-escapes are decoded first, as Graph does, so %27 is an apostrophe too."""
    if raw.startswith("('") or raw.startswith("(%27"):
        text = unquote(raw)
        key: list[str] = []
        at = 2
        while at < len(text):
            if text[at] != "'":
                key.append(text[at])
                at += 1
            elif text.startswith("''", at):
                key.append("'")
                at += 2
            elif text.startswith("')", at):
                return "".join(key), text[at + 2 :].lstrip("/")
            else:
                return None
        return None
    if not raw.startswith("/"):
        return None
    segment, _, rest = raw[1:].partition("/")
    return unquote(segment), rest


async def _route(state: SimulatorState, call: Call) -> Answer:
    rest = call.path
    if rest == _POLICY_PATH and call.method == "GET":
        if state.policy_forbidden:
            return _graph_error(call, 403, "accessDenied", "Request Authorization failed")
        body = {
            "@odata.type": "#microsoft.graph.temporaryAccessPassAuthenticationMethodConfiguration",
            "id": "TemporaryAccessPass",
            **state.policy,
        }
        return 200, {}, body
    if rest == "users" and call.method == "GET":
        return _find_users(call, state)
    if rest.startswith("users"):
        parsed = _user_from_path(rest[len("users") :])
        if parsed is not None:
            key, remainder = parsed
            if remainder == _TAP_PATH:
                if call.method == "POST":
                    return await _create_pass(call, state, key)
                if call.method == "GET":
                    return _list_passes(call, state, key)
            elif remainder.startswith(_TAP_PATH + "/") and call.method == "DELETE":
                return _delete_pass(call, state, key, remainder[len(_TAP_PATH) + 1 :])
            elif remainder == _ROLES_PATH and call.method == "GET":
                return _list_roles(call, state, key)
            elif remainder == _METHODS_PATH and call.method == "GET":
                return _list_methods(call, state, key)
            elif remainder == "" and call.method == "GET":
                return _get_person(call, state, key)
            elif remainder == _MANAGER and call.method == "GET":
                return _get_manager(call, state, key)
            elif remainder == _SPONSORS and call.method == "GET":
                return _list_sponsors(call, state, key)
            elif remainder == _SEND_MAIL and call.method == "POST":
                return await _send_mail(call, state, key)
    return _graph_error(
        call, 400, "BadRequest", f"Resource not found for the segment '{rest.split('/')[0]}'."
    )


_FILTER = re.compile(r"^(userPrincipalName|mail|employeeId|id) (eq|in) (.+)$")
_QUOTED = re.compile(r"'((?:[^']|'')*)'")


def _find_users(call: Call, state: SimulatorState) -> Answer:
    """GET /users?$filter=<field> eq 'x' | <field> in ('x','y'): at most 15 values, as Graph."""
    query = parse_qs(call.query)
    text = (query.get("$filter") or [""])[0]
    match = _FILTER.match(text)
    if match is None:
        return _graph_error(call, 400, "Request_UnsupportedQuery", "Unsupported Query.")
    field_name, operator, listed = match.groups()
    values = [v.replace("''", "'") for v in _QUOTED.findall(listed)]
    if not values or (operator == "eq" and len(values) != 1):
        return _graph_error(call, 400, "BadRequest", "Invalid filter clause.")
    if len(values) > MAX_FILTER_VALUES:
        return _graph_error(
            call, 400, "Request_UnsupportedQuery",
            "Too many child clauses specified in search filter expression containing 'OR' "
            f"operators: {len(values)}. Max allowed: {MAX_FILTER_VALUES}.",
        )  # fmt: skip
    state.count("user_lookups")
    wanted = {v.casefold() for v in values}
    found: dict[str, SimUser] = {}
    if field_name in ("userPrincipalName", "id"):
        for value in values:
            user = state.find_user(value)
            if user is not None:
                found[user.id] = user
    else:
        attribute = "mail" if field_name == "mail" else "employee_id"
        for user in state.users.values():  # Graph compares text without regard to case
            held = getattr(user, attribute)
            if held is not None and held.casefold() in wanted:
                found[user.id] = user
    # Pages of $top (Graph's default 100), the next one named by @odata.nextLink.
    listed = sorted(found.values(), key=lambda u: u.id)
    try:
        top = max(1, min(999, int((query.get("$top") or ["100"])[0])))
        skip = int((query.get("$skiptoken") or ["0"])[0])
    except ValueError:
        return _graph_error(call, 400, "BadRequest", "Invalid $top or $skiptoken.")
    body: dict[str, Any] = {"value": [u.as_graph() for u in listed[skip : skip + top]]}
    if skip + top < len(listed):
        rest = "&".join(p for p in call.query.split("&") if not p.startswith("$skiptoken="))
        body["@odata.nextLink"] = f"{call.base}/v1.0/users?{rest}&$skiptoken={skip + top}"
    return 200, {}, body


def _not_found(call: Call, key: str) -> Answer:
    return _graph_error(
        call,
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects "
        "are not present.",
    )


async def _create_pass(call: Call, state: SimulatorState, key: str) -> Answer:
    """POST .../temporaryAccessPassMethods, as documented: a user outside the policy's target
    groups still gets a pass, which says it cannot be used (201, DisabledByPolicy); only a
    policy turned off refuses the create."""
    body = call.body
    if not isinstance(body, dict):
        return _graph_error(call, 400, "BadRequest", "Unable to read JSON request payload.")
    user = state.find_user(key)
    if user is None:
        state.count("404")
        return _not_found(call, key)
    state.create_attempts[user.id] = state.create_attempts.get(user.id, 0) + 1
    faults = state.faults
    if faults.late_create_rate and state.random.random() < faults.late_create_rate:
        # The client gives up waiting and retries; this request still completes afterwards.
        state.count("late")
        await asyncio.sleep(faults.late_create_seconds)
    policy = state.policy
    if user.forbidden:
        return _graph_error(call, 403, "accessDenied", "Request Authorization failed")
    if user.external:
        return _graph_error(call, 400, "badRequest", GUEST_REFUSAL)
    if policy.get("state") != "enabled":
        return _graph_error(call, 400, "badRequest", POLICY_REFUSAL)
    lifetime = body.get("lifetimeInMinutes", policy["defaultLifetimeInMinutes"])
    low, high = policy["minimumLifetimeInMinutes"], policy["maximumLifetimeInMinutes"]
    if not isinstance(lifetime, int) or not low <= lifetime <= high:
        message = LIFETIME_REFUSAL.format(low=low, high=high)
        return _graph_error(call, 400, "badRequest", message)
    usable_once = body.get("isUsableOnce", policy["isUsableOnce"])
    if policy.get("isUsableOnce") and usable_once is False:
        return _graph_error(call, 400, "badRequest", MULTI_USE_REFUSAL)
    now = state.now()
    start = now
    if body.get("startDateTime") is not None:
        text = str(body["startDateTime"])
        try:
            start = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return _graph_error(call, 400, "BadRequest", _not_a_date(text))
        if start.tzinfo is None:
            # Microsoft's own PowerShell example sends '2022-05-23 06:00:00' and gets a pass
            # starting then: a start without an offset is read as UTC.
            start = start.replace(tzinfo=dt.UTC)
        if start < now - dt.timedelta(minutes=1):
            return _graph_error(call, 400, "badRequest", START_IN_PAST_REFUSAL)
    existing = state.passes.get(user.id)
    if existing is not None and state.faults.conflict_on_existing:
        expires = existing.start + dt.timedelta(minutes=existing.lifetime_minutes)
        if expires > now:
            return _graph_error(
                call, 409, "conflict", "A Temporary Access Pass already exists for this user."
            )
    length = int(policy.get("defaultLength", 8))
    value = "".join(secrets.choice(PASS_ALPHABET) for _ in range(length))
    created = SimPass(str(uuid.uuid4()), user.id, value, now, start, lifetime, bool(usable_once))
    state.passes[user.id] = created  # a new pass replaces the old one
    state.issued.append(created)
    state.count("201")
    if faults.lost_response_rate and state.random.random() < faults.lost_response_rate:
        state.count("lost")
        return _graph_error(call, 504, "gatewayTimeout", "The gateway timed out.")
    context = _context(call, f"users('{user.id}')/authentication/temporaryAccessPassMethods")
    return 201, {}, {"@odata.context": f"{context}/$entity", **_pass_json(state, user, created)}


def _not_a_date(text: str) -> str:
    """Graph's (OData's) answer to a value that is not a DateTimeOffset."""
    return f"Cannot convert the literal '{text}' to the expected type 'Edm.DateTimeOffset'."


def _pass_json(
    state: SimulatorState, user: SimUser, held: SimPass, *, value: bool = True
) -> dict[str, Any]:
    """A pass as Graph shows it: its value only in the create's answer (null when listed)."""
    reason = state.usability(user, held, state.now())
    return {
        "@odata.type": PASS_TYPE,
        "id": held.id,
        "temporaryAccessPass": held.value if value else None,
        "createdDateTime": _iso(held.created, digits=6),
        "startDateTime": _iso(held.start),
        "lifetimeInMinutes": held.lifetime_minutes,
        "isUsableOnce": held.usable_once,
        "isUsable": reason == ENABLED_BY_POLICY,
        "methodUsabilityReason": reason,
    }


_ROLES_PATH = "transitiveMemberOf/microsoft.graph.directoryRole"
_METHODS_PATH = "authentication/methods"
# The methods Graph lists with a createdDateTime (phones, OATH codes and email have none).
DATED_METHODS = frozenset(
    {"microsoftAuthenticator", "fido2", "windowsHelloForBusiness", "platformCredential"}
)
_DENIED = "Insufficient privileges to complete the operation."


def _list_roles(call: Call, state: SimulatorState, key: str) -> Answer:
    """GET /users/{id}/transitiveMemberOf/microsoft.graph.directoryRole: the directory roles
    the user holds (RoleManagement.Read.Directory or Directory.Read.All)."""
    user = state.find_user(key)
    if user is None:
        return _not_found(call, key)
    if state.roles_forbidden or user.id in state.roles_forbidden_for:
        return _graph_error(call, 403, "Authorization_RequestDenied", _DENIED)
    roles = [
        {
            "@odata.type": "#microsoft.graph.directoryRole",
            "id": _stable_id(f"role:{name}"),
            "displayName": name,
            "roleTemplateId": _stable_id(f"template:{name}"),
        }
        for name in user.roles
    ]
    return 200, {}, {"@odata.context": _context(call, "directoryObjects"), "value": roles}


def _list_methods(call: Call, state: SimulatorState, key: str) -> Answer:
    """GET /users/{id}/authentication/methods: every method, the password included, and the
    user's pass while one is held (UserAuthenticationMethod.Read.All)."""
    user = state.find_user(key)
    if user is None:
        return _not_found(call, key)
    if state.methods_forbidden:
        return _graph_error(call, 403, "accessDenied", "Request Authorization failed")
    methods = [
        {
            "@odata.type": "#microsoft.graph.passwordAuthenticationMethod",
            "id": "28c10230-6103-485e-b985-444c60001490",  # Graph's fixed id for the password
        }
    ]
    for kind in user.methods:
        method = {
            "@odata.type": f"#microsoft.graph.{kind}AuthenticationMethod",
            "id": _stable_id(f"{user.id}:{kind}"),
        }
        if kind in DATED_METHODS:  # others carry no createdDateTime at Graph
            when = state.registered_at.get((user.id, kind), state.started)
            method["createdDateTime"] = _iso(when)
        methods.append(method)
    held = state.passes.get(user.id)
    if held is not None:
        methods.append(
            {
                "@odata.type": "#microsoft.graph.temporaryAccessPassAuthenticationMethod",
                "id": held.id,
                "createdDateTime": _iso(held.created, digits=6),
            }
        )
    return 200, {}, {"@odata.context": _context(call, "authenticationMethods"), "value": methods}


def _context(call: Call, what: str) -> str:
    version = "beta" if call.version == "beta" else "v1.0"
    return f"{call.base}/{version}/$metadata#{what}"


def _list_passes(call: Call, state: SimulatorState, key: str) -> Answer:
    user = state.find_user(key)
    if user is None:
        return _not_found(call, key)
    current = state.passes.get(user.id)
    items = [] if current is None else [_pass_json(state, user, current, value=False)]
    context = _context(call, f"users('{user.id}')/authentication/temporaryAccessPassMethods")
    return 200, {}, {"@odata.context": context, "value": items}


def _delete_pass(call: Call, state: SimulatorState, key: str, method_id: str) -> Answer:
    """DELETE .../temporaryAccessPassMethods/{id}: 204, or 404 when the user holds no pass of
    that id (gone, or replaced by another)."""
    method_id = unquote(method_id)
    state.delete_requests[method_id] = state.delete_requests.get(method_id, 0) + 1
    user = state.find_user(key)
    current = None if user is None else state.passes.get(user.id)
    if user is None or current is None or current.id != method_id:
        return _not_found(call, method_id)
    del state.passes[user.id]
    state.deleted.append(method_id)
    state.count("deleted")
    return 204, {}, None


# --- delivery by mail: people, managers, sponsors, sendMail -------------------------------
_MANAGER = "manager"
_SPONSORS = "sponsors"
_SEND_MAIL = "sendMail"
MAILBOX_CONCURRENCY_REFUSAL = "Application is over its MailboxConcurrency limit."
# Exchange's text for the messages-a-minute limit is not documented: the simulator's own.
MAILBOX_RATE_REFUSAL = "Application is over its MailboxMessagesPerMinute limit."
NO_MAILBOX_REFUSAL = "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
CONCURRENCY_RETRY_AFTER = 1.0  # seconds a request refused for concurrency is told to wait


def _get_person(call: Call, state: SimulatorState, key: str) -> Answer:
    user = state.find_user(key)
    if user is None:
        return _not_found(call, key)
    return 200, {}, {"@odata.context": _context(call, "users/$entity"), **user.as_person()}


def _get_manager(call: Call, state: SimulatorState, key: str) -> Answer:
    """GET /users/{id}/manager: 404 Request_ResourceNotFound when none is set."""
    user = state.find_user(key)
    if user is None:
        return _not_found(call, key)
    manager = None if user.manager is None else state.find_user(user.manager)
    if manager is None:
        return _not_found(call, "manager")
    return 200, {}, {"@odata.type": "#microsoft.graph.user", **manager.as_person()}


def _list_sponsors(call: Call, state: SimulatorState, key: str) -> Answer:
    user = state.find_user(key)
    if user is None:
        return _not_found(call, key)
    sponsors = [state.find_user(s) for s in user.sponsors]
    value = [{"@odata.type": "#microsoft.graph.user", **s.as_person()} for s in sponsors if s]
    return 200, {}, {"@odata.context": _context(call, "directoryObjects"), "value": value}


async def _mail_call(state: SimulatorState, call: Call) -> Answer:
    """sendMail: random faults as any request, then the request itself."""
    if state.faults.fault_rate and state.random.random() < state.faults.fault_rate:
        state.count("503")
        return _graph_error(
            call, 503, "serviceNotAvailable", "The service is temporarily unavailable."
        )
    return await _route(state, call)


def _mail_throttled(call: Call, state: SimulatorState, message: str, wait: float) -> Answer:
    state.count("429")
    state.count("429 mail")
    shown = f"{math.ceil(max(wait, 0.001) * 1000) / 1000:.3f}".rstrip("0").rstrip(".")
    return _graph_error(call, 429, "ApplicationThrottled", message, {"Retry-After": shown})


async def _send_mail(call: Call, state: SimulatorState, key: str) -> Answer:
    """POST /users/{sender}/sendMail: 202 and no body; the message is kept (and written)."""
    state.mail_requests += 1
    sender = state.find_user(key)
    if sender is None:
        invalid = f"The requested user '{key}' is invalid."
        return _graph_error(call, 404, "ErrorInvalidUser", invalid)
    if not sender.mail:
        return _graph_error(call, 404, "MailboxNotEnabledForRESTAPI", NO_MAILBOX_REFUSAL)
    body = call.body if isinstance(call.body, dict) else {}
    message = body.get("message")
    parsed = _message(message) if isinstance(message, dict) else None
    if parsed is None:
        return _graph_error(
            call, 400, "ErrorInvalidRecipients", "At least one recipient is not valid."
        )
    faults, mailbox = state.faults, sender.id
    if state._mail_in_flight.get(mailbox, 0) >= faults.mail_concurrency:
        return _mail_throttled(call, state, MAILBOX_CONCURRENCY_REFUSAL, CONCURRENCY_RETRY_AFTER)
    wait = state._mail_refusal(mailbox)
    if wait is not None:
        return _mail_throttled(call, state, MAILBOX_RATE_REFUSAL, wait)
    state._mail_in_flight[mailbox] = state._mail_in_flight.get(mailbox, 0) + 1
    state.mail_in_flight_peak = max(state.mail_in_flight_peak, state._mail_in_flight[mailbox])
    try:
        if faults.mail_latency_ms:
            await asyncio.sleep(faults.mail_latency_ms / 1000)
    finally:
        state._mail_in_flight[mailbox] -= 1
    to, cc, subject, content, kind = parsed
    accepted = SimMail(
        sender.mail, to, cc, subject, content, kind, body.get("saveToSentItems") is not False,
        _now(),
    )  # fmt: skip
    if state.mail_dir is not None:
        # Named by when it came, so messages of simulators started one after the other (each
        # `onboard run`) never take each other's place.
        name = f"{accepted.received:%Y%m%dT%H%M%S%f}-{len(state.mail) + 1:05d}-{_safe(to[0])}.eml"
        data = eml(
            sender.mail, [address(a) for a in to], [address(a) for a in cc], subject,
            html=content if kind.lower() == "html" else None,
            text=None if kind.lower() == "html" else content,
        )  # fmt: skip
        accepted = replace(accepted, path=write_private(state.mail_dir / name, data))
    state.mail.append(accepted)
    state.count("mail_accepted")
    if state.on_mail is not None:
        state.on_mail(accepted)
    if faults.mail_lost_rate and state.random.random() < faults.mail_lost_rate:
        state.count("mail_lost")
        return _graph_error(call, 504, "gatewayTimeout", "The gateway timed out.")
    return 202, {}, None


def _message(
    message: dict[str, Any],
) -> tuple[tuple[str, ...], tuple[str, ...], str, str, str] | None:
    """A sendMail message's recipients, subject, body and its content type; None if it has no
    valid recipient."""

    def addresses(key: str) -> tuple[str, ...] | None:
        listed = message.get(key) or []
        found = []
        for item in listed if isinstance(listed, list) else [None]:
            mail = (item or {}).get("emailAddress") if isinstance(item, dict) else None
            text = mail.get("address") if isinstance(mail, dict) else None
            if not isinstance(text, str) or "@" not in text:
                return None
            try:
                address(text)
            except ValueError:
                return None
            found.append(text)
        return tuple(found)

    to, cc = addresses("toRecipients"), addresses("ccRecipients")
    given = message.get("body")
    body: dict[str, Any] = given if isinstance(given, dict) else {}
    if not to or cc is None:
        return None
    return (to, cc, str(message.get("subject") or ""), str(body.get("content") or ""),
            str(body.get("contentType") or "Text"))  # fmt: skip


def _safe(text: str) -> str:
    """A file-name part from an address: letters, digits, @ . - _ only."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", text)[:80]


async def _counts(request: web.Request) -> web.Response:
    """What the simulator has seen (requests, 429s, passes made): for benchmarks and demos."""
    return web.json_response(_state(request).counts)


async def _control(request: web.Request) -> web.Response:
    """POST /_simulator/{what}: what happens to a pass after it is issued, for the demo (`onboard
    simulate`) as tests do it through SimulatorState. A JSON body names the user:
    sign-in {"user", "value"?}: sign in with the pass (a one-time pass is then used);
    replace {"user"}: another admin issues a new pass; remove {"user"}: another admin deletes it;
    register {"user", "method"}: the user registers a method ("microsoftAuthenticator", ...);
    advance {"seconds"}: the tenant's time moves on (passes expire)."""
    state = _state(request)
    what = request.match_info["what"]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return web.json_response({"error": "a JSON object, please"}, status=400)
    if what == "advance":
        seconds = body.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            return web.json_response({"error": "seconds: a number, 0 or more"}, status=400)
        if not seconds + state.offset.total_seconds() <= MAX_ADVANCE_SECONDS:  # NaN too
            # Beyond it the tenant's time would pass the calendar's end: every answer a 500.
            said = f"seconds: at most {MAX_ADVANCE_SECONDS:.0f} in all (a hundred years)"
            return web.json_response({"error": said}, status=400)
        return web.json_response({"now": _iso(state.advance(float(seconds)))})
    user = str(body.get("user") or "")
    if state.find_user(user) is None:
        return web.json_response({"error": f"no user {user!r}"}, status=404)
    if what == "sign-in":
        value = body.get("value")
        accepted = state.sign_in_with(user, str(value) if value is not None else None)
        return web.json_response({"accepted": accepted})
    if what == "replace":
        return web.json_response({"id": state.give_pass(user).id})
    if what == "remove":
        return web.json_response({"removed": state.remove_pass(user)})
    if what == "register":
        method = str(body.get("method") or "")
        if not re.fullmatch(r"[a-zA-Z0-9]+", method):
            return web.json_response({"error": "method: e.g. microsoftAuthenticator"}, status=400)
        state.register_method(user, method)
        return web.json_response({"methods": state.find_user(user).methods})  # type: ignore[union-attr]
    return web.json_response({"error": f"no control {what!r}"}, status=404)


MAX_ADVANCE_SECONDS = 100 * 365 * 86400  # how far the advance control moves the tenant's time


def make_app(state: SimulatorState) -> web.Application:
    """The simulator as an aiohttp application (usable with aiohttp's TestServer too)."""
    app = web.Application(middlewares=[_middleware], client_max_size=1024**2)
    app[STATE_KEY] = state
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", _openid_configuration)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", _token)
    app.router.add_get("/_simulator/counts", _counts)
    app.router.add_post("/_simulator/{what}", _control)
    app.router.add_route("*", "/v1.0/{path:.*}", _graph)
    app.router.add_route("*", "/beta/{path:.*}", _graph)
    return app


# --- TLS: a throwaway CA so the simulator speaks HTTPS like the real service --------------
@dataclass(frozen=True, slots=True)
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


# How long the throwaway certificates are valid: from an hour ago (a clock a little behind
# still accepts them) for as long as any simulator run or test session lasts.
_CERT_BACKDATE = dt.timedelta(hours=1)
_CERT_LIFETIME = dt.timedelta(days=30)


def make_certificates(directory: Path) -> Certificates:
    """Write a new CA and a server certificate for localhost/127.0.0.1 into directory."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_cert.subject, ca_key, now)
    directory.mkdir(parents=True, exist_ok=True)
    files = Certificates(
        directory / "simulator-ca.pem",
        directory / "simulator-cert.pem",
        directory / "simulator-key.pem",
    )
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key_file.chmod(0o600)
    return files


def _ca_certificate(ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    """A self-signed CA that may sign server certificates and nothing below them: the file a
    config's graph.ca_bundle names, so the client checks TLS as it would against Graph."""
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onboard simulator CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CERT_BACKDATE)
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> x509.Certificate:
    """The simulator's own certificate, signed by the CA: for localhost and 127.0.0.1 (the
    names a loopback URL uses), for serving TLS only."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CERT_BACKDATE)
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    url: str
    ca_file: Path
    state: SimulatorState


@contextlib.asynccontextmanager
async def serve(
    state: SimulatorState,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    cert_dir: Path | None = None,
) -> AsyncIterator[RunningSimulator]:
    """Run the simulator on the current event loop (port 0: a free port) until the block ends."""
    with contextlib.ExitStack() as stack:
        if cert_dir is None:
            cert_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="onboard-sim-")))
        certs = make_certificates(cert_dir)
        runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=certs.server_context())
        await site.start()
        try:
            bound = port or runner.addresses[0][1]
            yield RunningSimulator(f"https://{host}:{bound}", certs.ca_file, state)
        finally:
            await runner.cleanup()
