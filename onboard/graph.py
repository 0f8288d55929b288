"""Talking to Microsoft Graph: create a Temporary Access Pass for one user, read the pass policy.

One aiohttp session per run. Every request carries a fresh `client-request-id`; Graph's
`request-id` comes back on the result or the error. Errors keep Graph's status and code as
attributes; the worker pool decides what is retried (see retrying.py). Graph never redirects an
API call, so a redirect is refused, never followed (it would carry the token, and its answer
would be taken for Graph's); and no answer is read past the size its kind can need.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from . import redact
from .auth import TokenProvider
from .errors import AuthError, GraphError, ProtocolError, ThrottledError, TransientError
from .outcomes import PassRequest, Reason
from .rate import RESOURCE_UNIT_HEADER, Budget, Pacing, Ticket
from .retrying import RETRYABLE_STATUS, parse_retry_after
from .tls import redirect_refused

log = logging.getLogger(__name__)

TAP_PATH = "authentication/temporaryAccessPassMethods"
# Where an admin finds the pass policy (the Entra admin center's menus since 2025).
POLICY_IN_PORTAL = (
    "Entra admin center > Entra ID > Authentication methods > Policies > Temporary Access Pass"
)
ROLES_PATH = "transitiveMemberOf/microsoft.graph.directoryRole"
METHODS_PATH = "authentication/methods"
# Methods any account may have, or that are no way to sign in on their own: the password,
# email (password reset only), and the pass itself. Any other registered method shows a person
# who already signs in without a pass: not a new hire.
WEAK_METHODS = frozenset({
    "#microsoft.graph.passwordAuthenticationMethod",
    "#microsoft.graph.emailAuthenticationMethod",
    "#microsoft.graph.temporaryAccessPassAuthenticationMethod",
})  # fmt: skip
# Names for people of the usual strong methods (others are named from their type).
METHOD_NAMES = {
    "#microsoft.graph.microsoftAuthenticatorAuthenticationMethod": "Microsoft Authenticator",
    "#microsoft.graph.fido2AuthenticationMethod": "FIDO2 security key or passkey",
    "#microsoft.graph.windowsHelloForBusinessAuthenticationMethod": "Windows Hello for Business",
    "#microsoft.graph.phoneAuthenticationMethod": "phone (SMS or call)",
    "#microsoft.graph.softwareOathAuthenticationMethod": "authenticator app code (OATH)",
    "#microsoft.graph.hardwareOathAuthenticationMethod": "hardware OATH token",
    "#microsoft.graph.x509CertificateAuthenticationMethod": "certificate (smart card)",
    "#microsoft.graph.platformCredentialAuthenticationMethod": "platform credential (macOS)",
}


def strong_methods(types: Sequence[str]) -> list[str]:
    """The methods among `types` (@odata.type values) that show a person already signs in,
    named for people, sorted."""
    found = set()
    for kind in types:
        if kind in WEAK_METHODS:
            continue
        short = kind.removeprefix("#microsoft.graph.").removesuffix("AuthenticationMethod")
        found.add(METHOD_NAMES.get(kind, short or "an unnamed method"))
    return sorted(found)


POLICY_PATH = (
    "policies/authenticationMethodsPolicy/authenticationMethodConfigurations/temporaryAccessPass"
)
# A start closer than this is sent as "usable at once": by the time Graph sees it, it would be
# in the past and refused.
START_MARGIN = timedelta(minutes=2)
MAX_BATCH = 20  # Graph's limit on requests in one $batch
# Graph sends Retry-After with every 429; if one ever comes without, everybody pauses this long.
PAUSE_WITHOUT_RETRY_AFTER = 1.0
THROTTLE_INFORMATION = "x-ms-throttle-information"  # names the budget a 429 came from
# The most of an answer onboard reads (a few kB is usual); a larger one fails its request.
MB = 1024 * 1024
ANSWER_LIMIT = 1 * MB  # about one pass, one user's passes or the policy
PAGE_LIMIT = 4 * MB  # a page of a user lookup (up to 999 users) or a $batch answer
# The most pages of one listing onboard follows: a listing it reads is one user's methods or
# roles, or at most FILTER_VALUES people, a page or two (Graph pages roles at 100); beyond it,
# or at a next page already read, the listing never ends.
MAX_PAGES = 50


@dataclass(frozen=True, slots=True)
class CreatedPass:
    """Graph's 201 answer. The value is a credential: it is kept out of repr."""

    value: str = field(repr=False)
    method_id: str
    created: datetime | None
    starts: datetime
    lifetime_minutes: int
    usable_once: bool
    request_id: str | None
    note: str = ""
    usable: bool | None = None  # isUsable, as Graph answered (None: not said)
    usability: str | None = None  # methodUsabilityReason: EnabledByPolicy, NotYetValid, ...

    @property
    def expires(self) -> datetime:
        return self.starts + timedelta(minutes=self.lifetime_minutes)

    @property
    def unusable(self) -> bool:
        """Graph made the pass but says nobody can sign in with it (not merely not yet)."""
        later = self.created is not None and self.starts > self.created
        return cannot_be_used(self.usable, self.usability, starts_later=later)


@dataclass(frozen=True, slots=True)
class HeldPass:
    """A pass Graph holds for a user, as listed (Graph never lists the value)."""

    method_id: str
    created: datetime | None
    starts: datetime | None
    lifetime_minutes: int | None
    usability: str | None  # methodUsabilityReason: EnabledByPolicy, NotYetValid, Expired, ...
    usable: bool | None = None  # isUsable (None: not said)

    @property
    def expires(self) -> datetime | None:
        if self.starts is None or self.lifetime_minutes is None:
            return None
        try:
            return self.starts + timedelta(minutes=self.lifetime_minutes)
        except OverflowError:  # a listing's times beyond the calendar: its end is not known
            return None

    def in_force(self, now: datetime) -> bool:
        """Usable now, or not yet valid: a pass someone may have handed out. One that is
        expired, used (one-time), or refused by the policy (DisabledByPolicy) is not."""
        if self.usability is not None or self.usable is not None:
            later = self.starts is not None and self.starts > now
            return not cannot_be_used(self.usable, self.usability, starts_later=later)
        ends = self.expires
        return ends is None or now < ends  # cannot tell: assume it is in force


@dataclass(frozen=True, slots=True)
class RegisteredMethod:
    """One of a user's authentication methods, as listed: its @odata.type, and when it was
    registered (None where Graph does not say: phones, and Authenticator without passwordless
    sign-in)."""

    kind: str
    created: datetime | None


# methodUsabilityReason's documented values (temporaryAccessPassAuthenticationMethod resource).
ENABLED_BY_POLICY = "EnabledByPolicy"
NOT_YET_VALID = "NotYetValid"
DISABLED_BY_POLICY = "DisabledByPolicy"
EXPIRED = "Expired"
ONE_TIME_USED = "OneTimeUsed"


def cannot_be_used(usable: bool | None, usability: str | None, *, starts_later: bool) -> bool:
    """Whether Graph says a pass cannot be used, now or later: not usable, and not merely
    not yet valid. The reason decides; a reason Graph may add later, or none, counts by
    isUsable, which is false too for a pass that `starts_later`; saying neither, usable."""
    if usability in (ENABLED_BY_POLICY, NOT_YET_VALID):
        return False
    if usability in (DISABLED_BY_POLICY, EXPIRED, ONE_TIME_USED):
        return True
    return usable is False and not (usability is None and starts_later)


@dataclass(frozen=True, slots=True)
class Policy:
    """The tenant's Temporary Access Pass policy, as far as rows can be checked against it."""

    enabled: bool
    minimum: int | None
    maximum: int | None
    usable_once_only: bool

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> Policy:
        def minutes(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(
            enabled=str(data.get("state")).lower() == "enabled",
            minimum=minutes("minimumLifetimeInMinutes"),
            maximum=minutes("maximumLifetimeInMinutes"),
            usable_once_only=data.get("isUsableOnce") is True,
        )

    def describe(self) -> str:
        low = "?" if self.minimum is None else self.minimum
        high = "?" if self.maximum is None else self.maximum
        once = "yes" if self.usable_once_only else "no"
        state = "enabled" if self.enabled else "disabled"
        return f"{state}; lifetime {low}..{high} minutes; one-time only: {once}"

    def refuses(self, request: PassRequest) -> tuple[Reason, str, str] | None:
        """Why the policy would refuse this row's pass (reason, what to do, the field at fault);
        None if it would not (the target groups aside: Graph alone knows who is in them)."""
        low, high = self.minimum, self.maximum
        lifetime = request.lifetime_minutes
        column = request.header("lifetime_minutes")
        if (low is not None and lifetime < low) or (high is not None and lifetime > high):
            return (
                Reason.LIFETIME_OUTSIDE_POLICY,
                f"A lifetime of {lifetime} minutes is outside the tenant's Temporary Access Pass "
                f"policy, which allows {low}..{high} minutes. "
                + (
                    f"Put a lifetime in that range in the sheet's {column} column"
                    if column
                    else "This row has no lifetime of its own: set pass.lifetime_minutes (the "
                    "default) in that range"
                )
                + f", or widen the range in the policy ({POLICY_IN_PORTAL}).",
                "lifetime_minutes",
            )
        if self.usable_once_only and not request.usable_once:
            return (
                Reason.MULTI_USE_REFUSED,
                "The tenant's pass policy allows one-time passes only, and this row asks for a "
                "multi-use one. "
                + (
                    f"Set {request.header('usable_once')} to yes for this row"
                    if request.header("usable_once")
                    else "Set pass.usable_once: true (the default for rows without one)"
                )
                + ", or allow multi-use passes in the policy.",
                "usable_once",
            )
        return None


# What delivery reads of a person (the hire's manager or sponsor, the sender): who they are
# and their mailbox address (`mail` is null for a user without a mailbox).
PERSON_FIELDS = "id,displayName,mail,userPrincipalName"
MANAGER_PATH = "manager"
SPONSORS_PATH = "sponsors"
SEND_MAIL_PATH = "sendMail"


@dataclass(frozen=True, slots=True)
class DirectoryPerson:
    """A user as delivery reads one: the mailbox address is None when the user has none."""

    id: str
    upn: str
    name: str
    mail: str | None

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> DirectoryPerson:
        return cls(
            str(data.get("id") or ""),
            str(data.get("userPrincipalName") or ""),
            str(data.get("displayName") or ""),
            _text(data.get("mail")),
        )


FILTER_VALUES = 15  # Graph's default limit on the values of one `in` filter
USER_PAGE = 999  # users per page of a lookup ($top): Graph's maximum
USER_FIELDS = "id,userPrincipalName,mail,employeeId,userType,creationType,externalUserState"
INVITATION = "Invitation"  # creationType of an account invited from another organisation (B2B)


def user_path(user: str) -> str:
    """The URL path segment for a user: percent-encoded (no '/', '?', '#', '%' or control
    character survives), and `users('$x@y')` for a leading $: an OData string literal, so an
    apostrophe in it is doubled ('') before encoding. Whatever the value, the request names
    one user: an empty value, or one that is only dots, is refused."""
    if not user.strip("."):
        raise ValueError("a user must be named by a UPN or an object id")
    if user.startswith("$"):
        return f"users('{quote(user.replace(QUOTE, QUOTE * 2), safe='@' + QUOTE)}')"
    return f"users/{quote(user, safe='@')}"


QUOTE = "'"  # OData's string delimiter: doubled inside a literal


class GraphClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenProvider,
        *,
        api_version: str = "v1.0",
        timeout_seconds: float = 60.0,
        pacing: Pacing | None = None,
        proxy: URL | None = None,
        proxy_auth: aiohttp.BasicAuth | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._proxy = proxy
        self._proxy_auth = proxy_auth
        self._session = session
        self._root = f"{base_url.rstrip('/')}/{api_version}"
        self._tokens = tokens
        self.pacing = pacing or Pacing()
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._now = now

    def __repr__(self) -> str:
        return f"GraphClient({self._root!r})"

    async def create_pass(self, request: PassRequest) -> CreatedPass:
        """POST one pass. Raises GraphError (or a retryable subclass) on any error answer."""
        body, note = self._pass_body(request)
        url = f"{self._root}/{user_path(request.user)}/{TAP_PATH}"
        status, data, request_id, _ = await self._send("POST", url, body)
        if not 200 <= status < 300:
            raise _error(status, data, request_id, None)
        return self._created(request, status, data, request_id, note)

    async def create_passes(
        self, requests: Sequence[PassRequest]
    ) -> list[CreatedPass | GraphError]:
        """Up to 20 creates in one JSON batch; a result (pass or error) per request, in order.

        Each sub-request counts against Graph's limits on its own, so the rate controller is
        asked for one permission per request. A lost or failed batch raises, as a single
        request would: then every row in it is of unknown fate.
        """
        if not 1 <= len(requests) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} requests")
        items = []
        notes = []
        for number, request in enumerate(requests):
            body, note = self._pass_body(request)
            notes.append(note)
            items.append(
                {
                    "id": str(number),
                    "method": "POST",
                    "url": f"/{user_path(request.user)}/{TAP_PATH}",
                    "headers": {"Content-Type": "application/json"},
                    "body": body,
                }
            )
        status, data, request_id, ticket = await self._send(
            "POST",
            f"{self._root}/$batch",
            {"requests": items},
            cost=len(items),
            judge=False,
            limit=PAGE_LIMIT,
        )
        if status != 200:
            raise _error(status, data, request_id, None)
        answers = data.get("responses")
        by_id = {}
        if isinstance(answers, list):
            by_id = {str(a.get("id")): a for a in answers if isinstance(a, dict)}
        results: list[CreatedPass | GraphError] = []
        judged: list[tuple[int, Mapping[str, str]]] = []
        for number, request in enumerate(requests):
            answer = by_id.get(str(number))
            if answer is None:
                results.append(
                    TransientError("the batch answer had no response for this request", status=None)
                )
                continue
            try:
                sub_status = int(answer["status"])
            except (KeyError, TypeError, ValueError):
                results.append(
                    TransientError("the batch answer had no readable status", status=None)
                )
                continue
            headers = answer.get("headers")
            sub_headers = (
                {str(k).lower(): str(v) for k, v in headers.items()}
                if isinstance(headers, dict)
                else {}
            )
            sub_body = answer.get("body")
            answer_body: dict[str, Any] = sub_body if isinstance(sub_body, dict) else {}
            sub_id = sub_headers.get("request-id") or request_id
            judged.append((sub_status, sub_headers))
            if 200 <= sub_status < 300:
                try:
                    created = self._created(request, sub_status, answer_body, sub_id, notes[number])
                    results.append(created)
                except TransientError as exc:
                    results.append(exc)
            else:
                retry_after = parse_retry_after(sub_headers.get("retry-after"))
                results.append(_error(sub_status, answer_body, sub_id, retry_after))
        self._judge(Budget.WRITES, ticket, judged)
        return results

    def _judge(
        self, budget: Budget, ticket: Ticket, answers: Sequence[tuple[int, Mapping[str, str]]]
    ) -> None:
        """Tell the rate controllers what Graph answered, once per request sent: one answer, or
        a batch's sub-answers (sent together, so the highest budget usage or the longest
        Retry-After speaks for them). A 429 goes to the controller of the budget it names
        (x-ms-throttle-information), which alone pauses; the rest to the request's own.
        Header names are looked up in lower case."""
        rate = self.pacing[budget]
        retry = [h for status, h in answers if status in RETRYABLE_STATUS and status != 429]
        pauses = [parse_retry_after(h.get("retry-after")) for h in retry]
        if any(p is not None for p in pauses):
            rate.hold(max(p for p in pauses if p is not None))
        throttled: dict[Budget, list[float | None]] = {}
        for status, headers in answers:
            if status == 429:
                spent = self.pacing.throttled_budget(headers.get(THROTTLE_INFORMATION), budget)
                throttled.setdefault(spent, []).append(
                    parse_retry_after(headers.get("retry-after"))
                )
        for spent, waits in throttled.items():
            known = [p for p in waits if p is not None]
            pause = max(known) if known else PAUSE_WITHOUT_RETRY_AFTER
            self.pacing.throttled(budget, spent, ticket, pause, count=len(waits))
        if throttled or len(retry) == len(answers):  # nothing came back clean: no speeding up
            return
        usages = [_usage(h.get("x-ms-throttle-limit-percentage")) for _, h in answers]
        seen = [u for u in usages if u is not None]
        rate.answered(ticket, max(seen) if seen else None)

    def _pass_body(self, request: PassRequest) -> tuple[dict[str, Any], str]:
        body: dict[str, Any] = {
            "isUsableOnce": request.usable_once,
            "lifetimeInMinutes": request.lifetime_minutes,
        }
        note = request.note
        if request.start is not None:
            if request.start <= self._now() + START_MARGIN:
                note = note or "start time reached before sending: pass usable at once"
            else:
                body["startDateTime"] = request.start.strftime("%Y-%m-%dT%H:%M:%SZ")
        return body, note

    def _created(
        self,
        request: PassRequest,
        status: int,
        data: dict[str, Any],
        request_id: str | None,
        note: str,
    ) -> CreatedPass:
        value, method_id = data.get("temporaryAccessPass"), data.get("id")
        if isinstance(value, str):
            redact.remember(value)
        lifetime = data.get("lifetimeInMinutes", request.lifetime_minutes)
        if not (isinstance(value, str) and value.strip() and isinstance(method_id, str)
                and method_id.strip() and isinstance(lifetime, int)
                and not isinstance(lifetime, bool)):  # fmt: skip
            # A success without a usable pass (null, empty, no id): the pass may exist, but
            # nobody can hand it out; a retry replaces it.
            raise TransientError(
                "Graph's answer had no readable pass", status=status, request_id=request_id
            )
        try:
            return CreatedPass(
                value=value,
                method_id=method_id,
                created=_parse_time(data.get("createdDateTime")),
                starts=_parse_time(data.get("startDateTime")) or self._now(),
                lifetime_minutes=lifetime,
                usable_once=bool(data.get("isUsableOnce", request.usable_once)),
                request_id=request_id,
                note=note,
                usable=_flag(data.get("isUsable")),
                usability=_text(data.get("methodUsabilityReason")),
            )
        except (KeyError, TypeError, ValueError):
            # The pass may exist but its value is unreadable; a retry replaces it.
            raise TransientError(
                "Graph's answer had no readable pass", status=status, request_id=request_id
            ) from None

    async def current_pass_id(self, user: str) -> str | None:
        """The id of the pass Graph holds for this user now (None if it holds none)."""
        held = await self.current_pass(user)
        return held.method_id if held is not None else None

    async def current_pass(self, user: str) -> HeldPass | None:
        """The pass Graph holds for this user now, without its value (None if it holds none)."""
        url = f"{self._root}/{user_path(user)}/{TAP_PATH}"
        status, data, request_id, _ = await self._send("GET", url, None)
        if status != 200:
            raise _error(status, data, request_id, None)
        items = data.get("value")
        if items == []:
            return None
        if not (isinstance(items, list) and isinstance(items[0], dict) and items[0].get("id")):
            # Not Graph's shape: whether the user holds a pass cannot be told, and "no pass"
            # would let a live one be replaced.
            raise ProtocolError(
                "Graph's list of the user's passes could not be read", status=status,
                request_id=request_id,
            )  # fmt: skip
        item = items[0]
        starts = _parse_time(item.get("startDateTime"))
        lifetime = item.get("lifetimeInMinutes")
        return HeldPass(
            method_id=str(item["id"]),
            created=_parse_time(item.get("createdDateTime")),
            starts=starts,
            lifetime_minutes=lifetime if isinstance(lifetime, int) else None,
            usability=_text(item.get("methodUsabilityReason")),
            usable=_flag(item.get("isUsable")),
        )

    async def delete_pass(self, user: str, method_id: str) -> bool:
        """DELETE this very pass (a write). True: Graph deleted it (204); False: Graph holds no
        pass of that id (404): one issued since has another id and is never touched."""
        url = f"{self._root}/{user_path(user)}/{TAP_PATH}/{quote(method_id, safe='')}"
        status, data, request_id, _ = await self._send("DELETE", url, None)
        if status == 404:
            return False
        if not 200 <= status < 300:
            raise _error(status, data, request_id, None)
        return True

    async def registered_methods(self, user: str) -> list[RegisteredMethod]:
        """Every authentication method a user has registered, with when, where Graph says
        (needs UserAuthenticationMethod.Read.All)."""
        found = await self._pages(f"{self._root}/{user_path(user)}/{METHODS_PATH}")
        return [
            RegisteredMethod(str(m.get("@odata.type") or ""), _parse_time(m.get("createdDateTime")))
            for m in found
        ]

    async def find_users(self, field: str, values: Sequence[str]) -> list[dict[str, Any]]:
        """The directory's users whose `field` (userPrincipalName, mail, employeeId or id) is
        one of `values` (at most FILTER_VALUES: Graph's limit for `in`), every page."""
        if not 0 < len(values) <= FILTER_VALUES:
            raise ValueError(f"between 1 and {FILTER_VALUES} values per lookup")
        listed = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        query = {
            "$filter": f"{field} in ({listed})",
            "$select": USER_FIELDS,
            "$top": str(USER_PAGE),
        }
        return await self._pages(
            f"{self._root}/users?"
            + "&".join(f"{k}={quote(v, safe=',()')}" for k, v in query.items())
        )

    async def directory_roles(self, user: str) -> list[str]:
        """The directory roles a user holds, directly or through groups (display names; needs
        RoleManagement.Read.Directory or Directory.Read.All)."""
        found = await self._pages(
            f"{self._root}/{user_path(user)}/{ROLES_PATH}?$select=id,displayName"
        )
        return [str(r.get("displayName") or r.get("id") or "?") for r in found]

    async def methods(self, user: str) -> list[str]:
        """The `@odata.type` of every authentication method a user has registered (the
        password included; needs UserAuthenticationMethod.Read.All)."""
        found = await self._pages(f"{self._root}/{user_path(user)}/{METHODS_PATH}")
        return [str(m.get("@odata.type") or "") for m in found]

    async def _pages(self, url: str) -> list[dict[str, Any]]:
        """Every item of a listing, following @odata.nextLink (only under this Graph root)."""
        found: list[dict[str, Any]] = []
        next_url: str | None = url
        read: set[str] = set()
        while next_url is not None:
            if next_url in read or len(read) == MAX_PAGES:
                raise ProtocolError(
                    f"Graph's listing did not end (a next page read before, or more than "
                    f"{MAX_PAGES} pages)",
                    status=200,
                )
            read.add(next_url)
            status, data, request_id, _ = await self._send("GET", next_url, None, limit=PAGE_LIMIT)
            if status != 200:
                raise _error(status, data, request_id, None)
            page = data.get("value")
            if not isinstance(page, list) or not all(isinstance(u, dict) for u in page):
                # Not Graph's shape: "nothing listed" would read as "no roles", "no methods"
                # or "no such user", and let a row through unchecked.
                raise ProtocolError(
                    "Graph's listing could not be read", status=status, request_id=request_id
                )
            found.extend(page)
            link = data.get("@odata.nextLink")
            next_url = link if isinstance(link, str) else None
            if next_url is not None and not next_url.startswith(f"{self._root}/"):
                # Following it would send the token elsewhere; dropping it would miss people.
                raise GraphError(f"Graph's next page is not under {self._root}", status=200)
        return found

    async def get_policy(self) -> dict[str, Any]:
        """The tenant's Temporary Access Pass policy (needs Policy.Read.AuthenticationMethod)."""
        status, data, request_id, _ = await self._send("GET", f"{self._root}/{POLICY_PATH}", None)
        if status != 200:
            raise _error(status, data, request_id, None)
        return data

    def _charged(self, booked: int, header: str | None) -> None:
        """A read that cost more resource units (x-ms-resource-unit) than were booked for it:
        the next reads wait for the difference."""
        charged = _whole(header)
        self.pacing.reads.book((charged or booked) - booked)

    # --- delivery by mail (deliver.py): people, their managers and sponsors, sendMail -----
    async def person(self, user: str) -> DirectoryPerson:
        """A user's name and mailbox address (User.Read.All); raises GraphError (404: none)."""
        url = f"{self._root}/{user_path(user)}?$select={PERSON_FIELDS}"
        status, data, request_id, _ = await self._send("GET", url, None)
        if status != 200:
            raise _error(status, data, request_id, None)
        return DirectoryPerson.from_graph(data)

    async def manager(self, user: str) -> DirectoryPerson | None:
        """The user's manager (User.Read.All); None when none is set (Graph answers 404)."""
        url = f"{self._root}/{user_path(user)}/{MANAGER_PATH}?$select={PERSON_FIELDS}"
        status, data, request_id, _ = await self._send("GET", url, None)
        if status == 404:
            return None
        if status != 200:
            raise _error(status, data, request_id, None)
        return DirectoryPerson.from_graph(data)

    async def sponsors(self, user: str) -> list[DirectoryPerson]:
        """The user's sponsors (User.Read.All), every page."""
        found = await self._pages(
            f"{self._root}/{user_path(user)}/{SPONSORS_PATH}?$select={PERSON_FIELDS}"
        )
        return [DirectoryPerson.from_graph(item) for item in found]

    async def send_mail(
        self, sender: str, message: dict[str, Any], *, save_to_sent_items: bool
    ) -> str | None:
        """POST /users/{sender}/sendMail, paced by the mail budget (Exchange's limits per
        mailbox). Graph answers 202 with no body: the message is queued, and there is no
        message id; returns the request id. Raises GraphError on any other answer."""
        url = f"{self._root}/{user_path(sender)}/{SEND_MAIL_PATH}"
        body = {"message": message, "saveToSentItems": save_to_sent_items}
        status, data, request_id, _ = await self._send("POST", url, body, budget=Budget.MAIL)
        if status != 202:
            raise _error(status, data, request_id, None)
        return request_id

    async def _send(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        *,
        cost: int = 1,
        judge: bool = True,
        limit: int = ANSWER_LIMIT,
        budget: Budget | None = None,
    ) -> tuple[int, dict[str, Any], str | None, Ticket]:
        """One request, paced by the budget it spends (a GET: resource units; anything else:
        writes, each of which spends a resource unit too; `budget` names another: mail)."""
        if budget is None:
            budget = Budget.READS if method == "GET" else Budget.WRITES
        token = await self._tokens.token()
        for attempt in (1, 2):
            ticket = await self.pacing[budget].acquire(cost)
            if budget is Budget.WRITES:
                self.pacing.reads.book(cost)
            client_request_id = str(uuid.uuid4())
            headers = _headers(token, client_request_id)
            try:
                async with self._session.request(
                    method,
                    url,
                    json=body,
                    headers=headers,
                    timeout=self._timeout,
                    proxy=self._proxy,
                    proxy_auth=self._proxy_auth,
                    allow_redirects=False,
                ) as response:
                    if 300 <= response.status < 400:
                        response.close()
                        location = response.headers.get("Location")
                        raise redirect_refused("Graph", url, location, "graph.endpoint")
                    request_id = response.headers.get("request-id")
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    data = await _json(response, limit)
                    status = response.status
                    if judge or status != 200:
                        self._judge(budget, ticket, [(status, response.headers)])
                    if budget is Budget.READS:
                        self._charged(cost, response.headers.get(RESOURCE_UNIT_HEADER))
            except aiohttp.ClientConnectorCertificateError as exc:
                raise AuthError(
                    f"TLS certificate of {exc.host} is not trusted: {exc.certificate_error}; "
                    "if a proxy inspects TLS, set graph.ca_bundle to its CA file"
                ) from None
            except TimeoutError:
                log.debug("%s %s timed out (client-request-id %s)", method, url, client_request_id)
                raise TransientError("request timed out", status=None) from None
            except aiohttp.ClientError as exc:
                log.debug("%s %s failed: %s", method, url, type(exc).__name__)
                raise TransientError(
                    f"connection failed: {type(exc).__name__}", status=None
                ) from None
            log.debug(
                "%s %s -> %s (client-request-id %s, request-id %s)",
                method,
                url,
                status,
                client_request_id,
                request_id,
            )
            if status == 401 and attempt == 1:
                token = await self._tokens.refresh(token)
                continue
            if status == 401:
                raise AuthError(
                    "Graph refused a freshly issued token (401): check that the app has admin "
                    "consent and that graph.cloud matches your tenant"
                )
            if status in RETRYABLE_STATUS:
                raise _error(status, data, request_id, retry_after)
            return status, data, request_id, ticket
        raise AssertionError("unreachable")


def _headers(token: str, client_request_id: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "client-request-id": client_request_id,
        "Accept": "application/json",
    }


async def _json(response: aiohttp.ClientResponse, limit: int) -> dict[str, Any]:
    """The answer's JSON object ({} if it holds none), never reading more than `limit` bytes:
    Content-Length is checked first, and a chunked answer is read only up to limit + 1."""
    if response.content_length is not None and response.content_length > limit:
        raise _too_large(response, limit)
    body = bytearray()
    while len(body) <= limit:
        chunk = await response.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise _too_large(response, limit)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _too_large(response: aiohttp.ClientResponse, limit: int) -> ProtocolError:
    response.close()  # drops the connection: the rest is never received
    return ProtocolError(
        f"Graph's answer was larger than {limit // MB} MB: not read",
        status=response.status,
        request_id=response.headers.get("request-id"),
    )


def _error(
    status: int, data: dict[str, Any], request_id: str | None, retry_after: float | None
) -> GraphError:
    error = data.get("error")
    if not isinstance(error, dict):
        error = {}
    code = error.get("code")
    message = str(error.get("message") or f"HTTP {status}")
    inner = error.get("innerError") or {}
    request_id = request_id or (inner.get("request-id") if isinstance(inner, dict) else None)
    kind: type[GraphError] = GraphError
    if status == 429:
        kind = ThrottledError
    elif status in RETRYABLE_STATUS:
        kind = TransientError
    return kind(
        message,
        status=status,
        code=str(code) if code else None,
        request_id=request_id,
        retry_after=retry_after,
    )


def _whole(value: str | None) -> int | None:
    """A header's positive whole number (x-ms-resource-unit), or None."""
    try:
        number = int((value or "").strip())
    except ValueError:
        return None
    return number if 0 < number <= MAX_RESOURCE_UNITS else None


MAX_RESOURCE_UNITS = 100  # a read costs 1 to 5 units: a larger figure is not Graph's


def _usage(value: str | None) -> float | None:
    """x-ms-throttle-limit-percentage: the share of the budget used (0.8 to 1.8), if sent."""
    if value is None:
        return None
    try:
        usage = float(value)
    except ValueError:
        return None
    return usage if usage == usage else None  # not NaN


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


PERMISSIONS = "UserAuthMethod-TAP.ReadWrite.All (or UserAuthenticationMethod.ReadWrite.All)"
# Every Graph application permission onboard uses, and what for (init's next steps).
PERMISSIONS_USED = (
    (PERMISSIONS, "to create passes"),
    ("RoleManagement.Read.Directory", "to refuse users who hold an admin role"),
    ("UserAuthenticationMethod.Read.All", "to refuse users who already have sign-in methods"),
    ("Policy.Read.AuthenticationMethod", "to check the rows against the pass policy first"),
    ("User.Read.All", "to find people (validate --online; input.match_by mail or employeeId)"),
)


# Graph's own texts for refusals, as Microsoft documents them (the create page, the Temporary
# Access Pass how-to, and threads quoting Graph's answers). The simulator answers with these.
GUEST_REFUSAL = "Temporary Access Pass cannot be added to an external guest user."
GUEST_MARKER = "#EXT#"  # in the UPN of an invited (external) guest
POLICY_REFUSAL = (
    "Converged UserCredentialPolicy does not allow creating or updating this authentication "
    "method. AuthMethodType [TemporaryAccessPass]."
)
LIFETIME_REFUSAL = "Invalid LifetimeInMinutes specified. The valid range between {low} and {high}."
START_IN_PAST_REFUSAL = "Invalid StartDateTime specified. It can not be a time in the past."


GUESTS_ADVICE = "Guests sign in with their home organisation's credentials."


def explain(exc: GraphError, user: str, attempts: int) -> tuple[Reason, str]:
    """A short reason and what the admin should do, for one Graph error: by the error's kind
    and status first; Graph's own message is shown, and picks the advice only where Graph
    answers with a generic status (see _DOCUMENTED)."""
    message = exc.message
    status = exc.status
    if isinstance(exc, ProtocolError):
        return (
            Reason.UNREADABLE_ANSWER,
            f"{message} (HTTP {status}). Nothing is wrong with the row: Graph, or something "
            "between it and this machine, sent an answer far larger than any Graph sends. If "
            "Graph had accepted the create, the user holds a pass whose value nobody has: "
            "run again with --reissue-user for this user to replace it.",
        )
    if isinstance(exc, (ThrottledError, TransientError)):
        what = f"HTTP {status}" if status else message
        return (
            Reason.GAVE_UP,
            f"Graph kept failing ({what}) for {attempts} attempts; nothing is wrong with the "
            "row: run it again later. If an attempt created a pass whose answer was lost, it "
            "cannot be read back; the new pass replaces it.",
        )
    if status == 404:
        return (
            Reason.USER_NOT_FOUND,
            f"No user '{user}' in the tenant: check the spelling in the sheet, or wait until the "
            "account has been created, then run again for this row.",
        )
    if status == 409:
        return (
            Reason.PASS_EXISTS,
            f"Graph says this user already holds a Temporary Access Pass ({message}). Delete it "
            "in the Entra admin center or wait until it expires, then run again for this row.",
        )
    for text, statuses, reason, advice in _DOCUMENTED:
        if status in statuses and message.startswith(text):
            return reason, f"{message} {advice}"
    if status in (401, 403):
        return (
            Reason.PERMISSION_DENIED,
            f"Graph refused ({exc.code or 'accessDenied'}: {message}). The app needs "
            f"{PERMISSIONS} with admin consent.",
        )
    code = f", {exc.code}" if exc.code else ""
    return (
        Reason.REFUSED,
        f"Refused by Graph: {message} (HTTP {status}{code}). No pass was created: fix what "
        "Graph names, then run this row again.",
    )


# Refusals Graph answers with a generic status (400, or one not recorded: 400 or 403), told
# apart only by their documented text. Matching it picks the advice shown to a person, never
# what is retried; an undocumented text falls through to "Refused by Graph" with the message.
_DOCUMENTED: tuple[tuple[str, frozenset[int | None], Reason, str], ...] = (
    (
        LIFETIME_REFUSAL.partition("{")[0],
        frozenset({400}),
        Reason.LIFETIME_OUTSIDE_POLICY,
        "Use a lifetime inside that range in the sheet (or pass.lifetime_minutes), or widen the "
        f"range in the Temporary Access Pass policy ({POLICY_IN_PORTAL}).",
    ),
    (
        START_IN_PAST_REFUSAL,
        frozenset({400}),
        Reason.START_IN_PAST,
        "Check the start date and pass.timezone; a start already past is sent as usable at "
        "once, so the clock of this machine may be wrong.",
    ),
    (GUEST_REFUSAL, frozenset({400, 403}), Reason.EXTERNAL_GUEST, GUESTS_ADVICE),
    (
        # Documented: creating needs the policy on. Reported in practice for users outside
        # its target groups too, where Graph now creates a pass that says DisabledByPolicy.
        POLICY_REFUSAL,
        frozenset({400, 403}),
        Reason.OUTSIDE_POLICY,
        "Graph refused to create the pass: the tenant's Temporary Access Pass policy is turned "
        "off (or, in a tenant that refuses rather than creating an unusable pass, this user is "
        f"not in its target groups). In the {POLICY_IN_PORTAL}: enable it and include a group "
        "this user belongs to, then run again for this row.",
    ),
)


def unusable_pass(created: CreatedPass, user: str) -> tuple[Reason, str]:
    """The reason and what to do for a pass Graph created but says cannot be used."""
    revoke = (
        f"Graph holds it (method id {created.method_id}): delete it in the Entra admin "
        f"center, or DELETE .../users/{user}/{TAP_PATH}/{created.method_id}."
    )
    if created.usability == DISABLED_BY_POLICY:
        return (
            Reason.OUTSIDE_POLICY,
            "Outside the pass policy's groups: the pass cannot be used. Graph created it, but "
            f"{user} is not in a group the Temporary Access Pass policy targets (or is in one it "
            f"excludes), so nobody can sign in with it (DisabledByPolicy). In the "
            f"{POLICY_IN_PORTAL}: add a group this user belongs to to the policy's targets, then "
            f"run again with --reissue-user {user} (a new pass replaces this one). {revoke}",
        )
    said = created.usability or "isUsable: false"
    return (
        Reason.NOT_USABLE,
        f"Graph created a pass but says it cannot be used ({said}). Run again with "
        f"--reissue-user {user} for a new one (it replaces this one). {revoke}",
    )
