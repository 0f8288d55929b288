"""Talking to Microsoft Graph: create a Temporary Access Pass for one user, read the pass policy.

One aiohttp session per run. Every request carries a fresh `client-request-id`; Graph's
`request-id` comes back on the result or the error. Errors keep Graph's status and code as
attributes; the worker pool decides what is retried (see retrying.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from .auth import TokenProvider
from .errors import AuthError, GraphError, ThrottledError, TransientError
from .outcomes import PassRequest
from .retrying import RETRYABLE_STATUS, parse_retry_after

log = logging.getLogger(__name__)

TAP_PATH = "authentication/temporaryAccessPassMethods"
POLICY_PATH = (
    "policies/authenticationMethodsPolicy/authenticationMethodConfigurations/temporaryAccessPass"
)
# A start closer than this is sent as "usable at once": by the time Graph sees it, it would be
# in the past and refused.
START_MARGIN = timedelta(minutes=2)


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

    @property
    def expires(self) -> datetime:
        return self.starts + timedelta(minutes=self.lifetime_minutes)


def user_path(user: str) -> str:
    """The URL path segment for a user: percent-encoded, and `users('$x@y')` for a leading $."""
    encoded = quote(user, safe="@")
    if user.startswith("$"):
        return f"users('{encoded}')"
    return f"users/{encoded}"


class GraphClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenProvider,
        *,
        api_version: str = "v1.0",
        timeout_seconds: float = 60.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._session = session
        self._root = f"{base_url.rstrip('/')}/{api_version}"
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._now = now

    def __repr__(self) -> str:
        return f"GraphClient({self._root!r})"

    async def create_pass(self, request: PassRequest) -> CreatedPass:
        """POST one pass. Raises GraphError (or a retryable subclass) on any error answer."""
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
        url = f"{self._root}/{user_path(request.user)}/{TAP_PATH}"
        status, data, request_id = await self._send("POST", url, body)
        if not 200 <= status < 300:
            raise _error(status, data, request_id, None)
        try:
            return CreatedPass(
                value=str(data["temporaryAccessPass"]),
                method_id=str(data["id"]),
                created=_parse_time(data.get("createdDateTime")),
                starts=_parse_time(data.get("startDateTime")) or self._now(),
                lifetime_minutes=int(data.get("lifetimeInMinutes", request.lifetime_minutes)),
                usable_once=bool(data.get("isUsableOnce", request.usable_once)),
                request_id=request_id,
                note=note,
            )
        except (KeyError, TypeError, ValueError):
            # The pass may exist but its value is unreadable; a retry replaces it.
            raise TransientError(
                "Graph's answer had no readable pass", status=status, request_id=request_id
            ) from None

    async def current_pass_id(self, user: str) -> str | None:
        """The id of the pass Graph holds for this user now (None if it holds none)."""
        url = f"{self._root}/{user_path(user)}/{TAP_PATH}"
        status, data, request_id = await self._send("GET", url, None)
        if status != 200:
            raise _error(status, data, request_id, None)
        items = data.get("value") or []
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            return None
        return str(items[0].get("id")) if items[0].get("id") else None

    async def get_policy(self) -> dict[str, Any]:
        """The tenant's Temporary Access Pass policy (needs Policy.Read.AuthenticationMethod)."""
        status, data, request_id = await self._send("GET", f"{self._root}/{POLICY_PATH}", None)
        if status != 200:
            raise _error(status, data, request_id, None)
        return data

    async def _send(
        self, method: str, url: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any], str | None]:
        token = await self._tokens.token()
        for attempt in (1, 2):
            client_request_id = str(uuid.uuid4())
            headers = {
                "Authorization": f"Bearer {token}",
                "client-request-id": client_request_id,
                "Accept": "application/json",
            }
            try:
                async with self._session.request(
                    method, url, json=body, headers=headers, timeout=self._timeout
                ) as response:
                    request_id = response.headers.get("request-id")
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    data = await _json(response)
                    status = response.status
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
            return status, data, request_id
        raise AssertionError("unreachable")


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return data if isinstance(data, dict) else {}


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


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


POLICY_REFUSAL_MARKER = "Converged UserCredentialPolicy"
PERMISSIONS = "UserAuthenticationMethod.ReadWrite.All (or UserAuthMethod-TAP.ReadWrite.All)"


def explain(exc: GraphError, user: str, attempts: int) -> tuple[str, str]:
    """A short reason and what the admin should do, for one Graph error.

    Graph asks clients to branch on status and code, not message; but the status and code of
    the policy, lifetime and guest refusals are a generic 400, so the message is matched here,
    only to choose the advice shown to a person, never to decide what is retried.
    """
    message = exc.message
    status = exc.status
    if isinstance(exc, (ThrottledError, TransientError)):
        what = f"HTTP {status}" if status else message
        return (
            "Gave up after retries",
            f"Graph kept failing ({what}) for {attempts} attempts; nothing is wrong with the "
            "row: run it again later. If an attempt created a pass whose answer was lost, it "
            "cannot be read back; the new pass replaces it.",
        )
    if POLICY_REFUSAL_MARKER in message:
        return (
            "Outside the pass policy",
            "The Temporary Access Pass policy is turned off, or this user is not in its target "
            "groups. In the Entra admin center: Protection > Authentication methods > Policies > "
            "Temporary Access Pass: enable it and include a group this user belongs to. "
            f"(Graph: {message})",
        )
    if "LifetimeInMinutes" in message:
        return (
            "Lifetime refused by the pass policy",
            f"{message} Use a lifetime inside that range in the sheet (or pass.lifetime_minutes),"
            " or widen the range in the Temporary Access Pass policy.",
        )
    if "StartDateTime" in message:
        return ("Start refused", f"{message} Check the start date and pass.timezone.")
    if "guest" in message.lower():
        return (
            "External guest user",
            f"{message} Guests sign in with their home organisation's credentials.",
        )
    if "one-time" in message.lower() or "isUsableOnce" in message:
        return (
            "Multi-use pass refused by the pass policy",
            f"{message} Set One-time to yes for this row (or pass.usable_once: true).",
        )
    if status == 404:
        return (
            "User not found",
            f"No user '{user}' in the tenant: check the spelling in the sheet, or wait until the "
            "account has been created, then run again for this row.",
        )
    if status == 403:
        return (
            "Permission denied",
            f"Graph refused ({exc.code or 'accessDenied'}: {message}). The app needs "
            f"{PERMISSIONS} with admin consent; for a user who holds an admin role, only a "
            "Privileged Authentication Administrator may create a pass.",
        )
    if status == 409:
        return (
            "A pass already exists",
            f"Graph says this user already holds a Temporary Access Pass ({message}). Delete it "
            "in the Entra admin center or wait until it expires, then run again for this row.",
        )
    return ("Refused by Graph", f"HTTP {status} {exc.code or ''}: {message}".replace("  ", " "))
