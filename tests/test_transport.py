"""Transport: no redirect from Graph or the sign-in service is followed, msal's session speaks
plain http only to this machine or link-local hosts, every Graph answer is read only up to its
cap, and error lines are never cut mid-word."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from conftest import CLIENT_ID, TENANT

from onboard.auth import Credential, MsalTokenProvider
from onboard.errors import (
    FIRST_LINE_LIMIT,
    AuthError,
    PlainHttpRefused,
    ProtocolError,
    RedirectRefused,
    first_line,
)
from onboard.graph import ANSWER_LIMIT, MB, PAGE_LIMIT, GraphClient, explain
from onboard.outcomes import Origin, PassRequest
from onboard.simulator import make_certificates
from onboard.tls import make_ssl_context, plain_http_allowed, requests_session

SCOPE = "https://graph.microsoft.com/.default"
SECRET = "Client-Secret-Value-5512~xyz"
TOKEN = {"access_token": "tok", "token_type": "Bearer", "expires_in": 3600}
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serving(handler: Handler, context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve `handler` for every path on a free loopback port; yields its base URL."""
    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class Recorder:
    """A host that notes every request it receives (method, path, body) and answers `answer`."""

    answer: dict[str, Any]
    status: int = 200
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def __call__(self, request: web.BaseRequest) -> web.Response:
        self.seen.append((request.method, request.path_qs, await request.read()))
        return web.json_response(self.answer, status=self.status)


def host_of(url: str) -> str:
    return url.split("://", 1)[1]


def sign_in_app(on_token: Callable[[str], web.Response]) -> Handler:
    """A sign-in host: its OpenID configuration, and `on_token` for the token POST."""

    async def handle(request: web.BaseRequest) -> web.Response:
        base = f"https://{request.host}/{TENANT}"
        if request.path.endswith("/.well-known/openid-configuration"):
            return web.json_response({
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
            })
        return on_token(await request.text())

    return handle


def secret_provider(authority: str, ca_file: Path | None,
                    tenant: str = TENANT) -> MsalTokenProvider:
    return MsalTokenProvider(
        method="client_secret", credential=Credential(CLIENT_ID, SECRET),
        authority=f"{authority}/{tenant}", scope=SCOPE,
        http_client=requests_session(make_ssl_context(ca_file)),
    )


# --- redirects from the sign-in service ------------------------------------------------------

def test_sign_in_redirect_is_refused_and_the_secret_goes_nowhere(tmp_path: Path) -> None:
    """A 307 from the sign-in host's token endpoint to a plain-http host is never followed: msal
    gets a RedirectRefused (an AuthError naming both hosts) and the other host receives nothing."""
    certs = make_certificates(tmp_path / "certs")
    thief = Recorder(TOKEN)

    async def main() -> tuple[str, str, RedirectRefused]:
        async with serving(thief) as elsewhere:
            redirect = web.Response(status=307, headers={"Location": f"{elsewhere}/steal"})
            app = sign_in_app(lambda body: redirect)
            async with serving(app, certs.server_context()) as authority:
                tokens = secret_provider(authority, certs.ca_file)
                with pytest.raises(RedirectRefused) as caught:
                    await tokens.token()
        return authority, elsewhere, caught.value

    authority, elsewhere, error = asyncio.run(main())
    assert thief.seen == []
    assert (error.from_host, error.to_host) == (host_of(authority), host_of(elsewhere))
    assert host_of(authority) in str(error) and host_of(elsewhere) in str(error)
    assert SECRET not in str(error)


def test_sign_in_redirect_on_discovery_is_refused(tmp_path: Path) -> None:
    """A redirect on the OpenID configuration GET (msal's first call) is refused the same way."""
    certs = make_certificates(tmp_path / "certs")
    other = Recorder({})

    async def main() -> RedirectRefused:
        async with serving(other) as elsewhere:

            async def redirect(request: web.BaseRequest) -> web.Response:
                return web.Response(status=302, headers={"Location": f"{elsewhere}/x"})

            async with serving(redirect, certs.server_context()) as authority:
                with pytest.raises(RedirectRefused) as caught:
                    await secret_provider(authority, certs.ca_file).token()
        return caught.value

    error = asyncio.run(main())
    assert other.seen == [] and error.to_host is not None and error.from_host != error.to_host


def proxy_everything(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    """Route every plain-http request through `proxy`: a loopback recorder stands in for any
    host, so nothing leaves this machine even if a request were sent."""
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def app_service_identity(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> MsalTokenProvider:
    """A managed-identity provider that msal sends to App Service's endpoint at `endpoint`."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", "header-value")
    return MsalTokenProvider(
        method="managed_identity", credential=Credential(None, None),
        authority="https://login.microsoftonline.com/x", scope=SCOPE,
        http_client=requests_session(make_ssl_context(None)),
    )


MSI_TOKEN = {"access_token": "mi-token", "expires_on": "4102444800", "token_type": "Bearer",
             "resource": "https://graph.microsoft.com"}


def test_plain_http_to_another_host_is_never_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A managed-identity endpoint on plain http that is not this machine or link-local: the
    session refuses before sending (PlainHttpRefused, an AuthError naming the host)."""
    proxy = Recorder(MSI_TOKEN)

    async def main() -> PlainHttpRefused:
        async with serving(proxy) as url:
            proxy_everything(monkeypatch, url)
            tokens = app_service_identity(monkeypatch, "http://192.0.2.10/msi/token")
            with pytest.raises(PlainHttpRefused) as caught:
                await tokens.token()
        return caught.value

    error = asyncio.run(main())
    assert proxy.seen == []
    assert error.host == "192.0.2.10" and "http://192.0.2.10" in str(error)


def test_plain_http_to_this_machine_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service's managed identity answers on http://127.0.0.1:port by design: that works."""
    identity = Recorder(MSI_TOKEN)

    async def main() -> str:
        async with serving(identity) as url:
            return await app_service_identity(monkeypatch, f"{url}/msi/token").token()

    assert asyncio.run(main()) == "mi-token"
    assert [path.split("?")[0] for _, path, _ in identity.seen] == ["/msi/token"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True),
     ("169.254.169.254", True), ("fe80::1", True), ("10.0.0.5", False), ("192.0.2.10", False),
     ("login.example.com", False), ("::ffff:8.8.8.8", False), (None, False)],
)
def test_plain_http_only_to_loopback_or_link_local(host: str | None, allowed: bool) -> None:
    """Plain http is allowed to loopback and link-local addresses (Azure's managed-identity
    endpoints), to nothing else."""
    assert plain_http_allowed(host) is allowed


def test_session_refuses_a_redirect_whatever_allow_redirects_says() -> None:
    """requests' own get and post (which default to following) raise on a 3xx instead."""
    other = Recorder({})

    async def main() -> list[RedirectRefused]:
        async with serving(other) as elsewhere:

            async def redirect(request: web.BaseRequest) -> web.Response:
                return web.Response(status=308, headers={"Location": f"{elsewhere}/x"})

            async with serving(redirect) as url:
                session = requests_session(make_ssl_context(None))
                calls: list[Callable[[], requests.Response]] = [
                    lambda: session.get(f"{url}/a"),
                    lambda: session.post(f"{url}/a", data={"client_secret": SECRET}),
                    lambda: session.post(f"{url}/a", allow_redirects=True),
                ]
                errors = []
                for call in calls:
                    with pytest.raises(RedirectRefused) as caught:
                        await asyncio.to_thread(call)
                    errors.append(caught.value)
        return errors

    errors = asyncio.run(main())
    assert other.seen == [] and len(errors) == 3


# --- redirects from Graph --------------------------------------------------------------------

class Tokens:
    async def token(self) -> str:
        return "t"

    async def refresh(self, rejected: str) -> str:
        return "t"


def pass_request(user: str = "ada@contoso.com", row: int = 2) -> PassRequest:
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    return PassRequest(Origin("t.csv", row), user, None, start, 120, True)


PASS_BODY = {"id": "m1", "temporaryAccessPass": "Elsewhere-Pass-1", "lifetimeInMinutes": 120,
             "isUsableOnce": True, "createdDateTime": "2027-01-04T08:00:00Z",
             "startDateTime": "2027-01-04T08:00:00Z"}
Operation = Callable[[GraphClient], Awaitable[object]]
OPERATIONS: dict[str, Operation] = {
    "create": lambda c: c.create_pass(pass_request()),
    "batch": lambda c: c.create_passes([pass_request(), pass_request("alan@contoso.com", 3)]),
    "listing": lambda c: c.current_pass("ada@contoso.com"),
    "lookup": lambda c: c.find_users("mail", ["ada@contoso.com"]),
    "policy": lambda c: c.get_policy(),
}


async def elsewhere_answer(request: web.BaseRequest) -> web.Response:
    """What the other host would answer: a pass for a create, a batch of passes, a page."""
    if request.path.endswith("$batch"):
        items = (await request.json())["requests"]
        return web.json_response(
            {"responses": [{"id": i["id"], "status": 201, "body": PASS_BODY} for i in items]})
    if request.method == "POST":
        return web.json_response(PASS_BODY, status=201)
    return web.json_response({"value": []})


@pytest.mark.parametrize(
    ("operation", "status"),
    [("create", 307), ("batch", 308), ("listing", 302), ("lookup", 301), ("policy", 303)],
)
def test_graph_redirect_is_refused_never_followed(operation: str, status: int) -> None:
    """A 3xx from Graph to another host serving a 201 is refused (RedirectRefused, naming both
    hosts): the other host sees no request, no pass comes from its answer."""
    seen: list[str] = []

    async def other(request: web.BaseRequest) -> web.Response:
        seen.append(request.path)
        return await elsewhere_answer(request)

    async def main() -> tuple[str, str, RedirectRefused]:
        async with serving(other) as elsewhere:

            async def graph(request: web.BaseRequest) -> web.Response:
                await request.read()
                location = f"{elsewhere}{request.path_qs}"
                return web.Response(status=status, headers={"Location": location})

            async with serving(graph) as url, aiohttp.ClientSession() as session:
                client = GraphClient(session, url, Tokens())
                with pytest.raises(RedirectRefused) as caught:
                    await OPERATIONS[operation](client)
        return url, elsewhere, caught.value

    url, elsewhere, error = asyncio.run(main())
    assert seen == []
    assert (error.from_host, error.to_host) == (host_of(url), host_of(elsewhere))
    assert isinstance(error, AuthError)  # the pool stops the run on it; the CLI exits 3


# --- answer size -----------------------------------------------------------------------------

@dataclass
class Flood:
    """A Graph that answers every request with `total` bytes, 64 kB at a time, declaring the
    length or not; notes how many bytes it managed to send and whether it sent them all."""

    total: int
    declare: bool
    sent: int = 0
    finished: bool = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        status = 201 if request.method == "POST" and not request.path.endswith("$batch") else 200
        response = web.StreamResponse(status=status, headers={"request-id": "rid-1"})
        response.content_type = "application/json"
        if self.declare:
            response.content_length = self.total
        await response.prepare(request)
        chunk = b" " * (64 * 1024)
        with contextlib.suppress(ConnectionError):
            while self.sent < self.total:
                await response.write(chunk)
                self.sent += len(chunk)
            await response.write_eof()
            self.finished = True
        return response


FLOOD = 64 * MB


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("operation", "limit"),
    [("create", ANSWER_LIMIT), ("lookup", PAGE_LIMIT), ("batch", PAGE_LIMIT)],
)
def test_oversized_answer_is_not_read(operation: str, limit: int, declare: bool) -> None:
    """An answer over its cap (1 MB for a pass, 4 MB for a page or a batch) fails that request
    with a non-retryable ProtocolError, and the client stops reading: the server cannot send
    it all."""
    flood = Flood(FLOOD, declare)

    async def main() -> ProtocolError:
        async with serving(flood) as url, aiohttp.ClientSession() as session:
            client = GraphClient(session, url, Tokens())
            with pytest.raises(ProtocolError) as caught:
                await OPERATIONS[operation](client)
        return caught.value

    error = asyncio.run(main())
    assert (error.status, error.request_id) == (201 if operation == "create" else 200, "rid-1")
    assert error.message == f"Graph's answer was larger than {limit // MB} MB: not read"
    assert not flood.finished and flood.sent < FLOOD // 2  # socket buffers hold a few MB
    assert explain(error, "ada@contoso.com", 1)[0] == "Unreadable answer from Graph"


def test_a_large_page_within_its_cap_is_read() -> None:
    """A 2 MB lookup page (over a single answer's cap, within a page's) is read whole."""
    padding = "x" * 1000
    page = {"value": [{"id": f"id-{n}", "userPrincipalName": f"u{n}@contoso.com",
                       "mail": "ada@contoso.com", "department": padding} for n in range(2000)]}
    body = json.dumps(page).encode()
    assert ANSWER_LIMIT < len(body) < PAGE_LIMIT

    async def graph(request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def main() -> list[dict[str, Any]]:
        async with serving(graph) as url, aiohttp.ClientSession() as session:
            return await GraphClient(session, url, Tokens()).find_users("mail", ["ada@contoso.com"])

    assert len(asyncio.run(main())) == 2000


# --- error lines -----------------------------------------------------------------------------

LIBRARY_LINE = (
    "HTTPSConnectionPool(host='login.microsoftonline.com', port=443): Max retries exceeded with "
    "url: /0b5b7a3e-6f0c-4b5e-9d53-2d3d2a1c9f10/v2.0/.well-known/openid-configuration (Caused by "
    "NameResolutionError(\"<urllib3.connection.HTTPSConnection object at 0x7f2a5c1e3d90>: Failed "
    "to resolve 'login.microsoftonline.com' ([Errno -2] Name or service not known)\"))"
)


def test_first_line_keeps_a_long_library_line_whole() -> None:
    """A library's 350-character first line is kept whole, the lines after it dropped."""
    assert first_line(OSError(LIBRARY_LINE + "\nsecond line")) == LIBRARY_LINE


def test_first_line_cuts_an_overlong_line_between_words() -> None:
    """A line over the limit is cut at a word boundary and ends with " …"."""
    line = " ".join(f"word{n}" for n in range(1000))
    short = first_line(ValueError(line))
    kept = short.removesuffix(" …")
    assert short.endswith(" …") and len(short) <= FIRST_LINE_LIMIT
    assert line.startswith(kept) and line[len(kept)] == " "


def test_first_line_cuts_a_single_endless_word() -> None:
    """A line with no space to cut at is cut at the limit (it is not a word anyone reads)."""
    assert first_line(ValueError("x" * 5000)) == "x" * (FIRST_LINE_LIMIT - 2) + " …"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_long_sign_in_failure_is_reported_whole() -> None:
    """Sign-in that cannot connect: the AuthError holds the library's whole first line (it ends
    in the reason), not the first 300 characters of it."""
    authority = f"https://127.0.0.1:{closed_port()}"
    tenant = "0b5b7a3e-6f0c-4b5e-9d53-2d3d2a1c9f10"  # tenant ids are GUIDs
    tenant_url = f"{authority}/{tenant}/v2.0/.well-known/openid-configuration"
    with pytest.raises(requests.ConnectionError) as library:
        requests_session(make_ssl_context(None)).get(tenant_url)
    line = str(library.value).splitlines()[0]
    assert len(line) > 300
    with pytest.raises(AuthError) as caught:
        asyncio.run(secret_provider(authority, None, tenant).token())
    assert str(caught.value).endswith(line)


def test_an_overlong_sign_in_error_description_is_cut_between_words(tmp_path: Path) -> None:
    """A sign-in service's error_description longer than the limit is cut at a word boundary,
    ending with " …"; the error code and advice stay."""
    certs = make_certificates(tmp_path / "certs")
    description = "AADSTS7000215: " + " ".join(f"reason{n}" for n in range(1000))

    def refuse(body: str) -> web.Response:
        return web.json_response(
            {"error": "invalid_client", "error_description": description}, status=401)

    async def main() -> AuthError:
        async with serving(sign_in_app(refuse), certs.server_context()) as authority:
            with pytest.raises(AuthError) as caught:
                await secret_provider(authority, certs.ca_file).token()
        return caught.value

    error = asyncio.run(main())
    message = str(error)
    assert error.error == "invalid_client" and message.endswith(" …)")
    kept = message.split("(invalid_client: ", 1)[1].removesuffix(" …)")
    assert description.startswith(kept) and description[len(kept)] == " "


@pytest.mark.parametrize(
    "body",
    [
        {**PASS_BODY, "temporaryAccessPass": None},
        {**PASS_BODY, "temporaryAccessPass": ""},
        {**PASS_BODY, "id": None},
        {**PASS_BODY, "lifetimeInMinutes": "120"},
    ],
)
def test_a_201_without_a_usable_pass_is_never_a_pass(body: dict[str, Any]) -> None:
    """A success whose pass is null, empty, without an id (or with an odd lifetime): not an
    issued pass "None" but an answer to retry (the pass may exist; a retry replaces it)."""
    from onboard.errors import TransientError

    async def graph(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.json_response(body, status=201)

    async def main() -> None:
        async with serving(graph) as url, aiohttp.ClientSession() as session:
            client = GraphClient(session, url, Tokens())
            with pytest.raises(TransientError, match="no readable pass"):
                await client.create_pass(pass_request())

    asyncio.run(main())


@pytest.mark.parametrize("value", [{"id": "m1"}, "m1", [None], [{"name": "x"}], None])
def test_a_list_of_passes_of_another_shape_is_not_read_as_none(value: object) -> None:
    """A 200 listing whose `value` is not Graph's list of pass objects: whether the user holds
    a pass cannot be told, so it is an error, never "holds none" (which would replace one)."""

    async def graph(request: web.BaseRequest) -> web.Response:
        return web.json_response({"value": value} if value is not None else {})

    async def main() -> None:
        async with serving(graph) as url, aiohttp.ClientSession() as session:
            client = GraphClient(session, url, Tokens())
            with pytest.raises(ProtocolError):
                await client.current_pass("ada@contoso.com")

    asyncio.run(main())


def test_a_huge_sign_in_answer_is_not_read_whole(tmp_path: Path) -> None:
    """A token endpoint answering with an endless body: the sign-in fails as an AuthError after
    at most the cap, instead of filling the memory."""
    from onboard.tls import SIGN_IN_ANSWER_LIMIT

    sent = {"bytes": 0}

    async def endless(request: web.BaseRequest, answer: web.StreamResponse) -> None:
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError, RuntimeError):
            while sent["bytes"] < 64 * MB:
                if request.transport is None or request.transport.is_closing():
                    return  # the client hung up
                await answer.write(chunk)
                sent["bytes"] += len(chunk)

    certs = make_certificates(tmp_path / "certs")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path.endswith("/.well-known/openid-configuration"):
            base = f"https://{request.host}/{TENANT}"
            return web.json_response({"issuer": f"{base}/v2.0",
                                      "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                                      "token_endpoint": f"{base}/oauth2/v2.0/token"})  # fmt: skip
        await request.read()
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        await answer.prepare(request)
        await endless(request, answer)
        return answer

    async def main() -> None:
        async with serving(handle, certs.server_context()) as url:
            tokens = secret_provider(url, certs.ca_file)
            with pytest.raises(AuthError, match="answered with more than"):
                await tokens.token()

    asyncio.run(main())
    assert sent["bytes"] > SIGN_IN_ANSWER_LIMIT  # the answer really was larger than the cap


@pytest.mark.parametrize("body", [{}, {"value": None}, {"value": {"displayName": "x"}},
                                  {"value": ["Global Administrator"]}])  # fmt: skip
def test_a_listing_of_another_shape_is_never_read_as_empty(body: dict[str, Any]) -> None:
    """A user's roles (or methods, or a lookup) answered 200 with no list: unreadable, an
    error, never "no roles" (which would let an admin's row through)."""

    async def graph(request: web.BaseRequest) -> web.Response:
        return web.json_response(body)

    async def main() -> None:
        async with serving(graph) as url, aiohttp.ClientSession() as session:
            client = GraphClient(session, url, Tokens())
            with pytest.raises(ProtocolError):
                await client.directory_roles("ada@contoso.com")
            with pytest.raises(ProtocolError):
                await client.methods("ada@contoso.com")

    asyncio.run(main())


def test_the_identity_endpoints_redirect_names_it_not_the_authority() -> None:
    """A managed identity's session says what redirected: the identity endpoint, not "the
    sign-in service ... auth.authority" (which a managed identity does not use)."""
    from onboard.tls import IDENTITY_ENDPOINT

    async def main() -> str:
        async def redirecting(request: web.BaseRequest) -> web.Response:
            return web.Response(status=307, headers={"Location": "http://169.254.1.1/x"})

        async with serving(redirecting) as url:
            session = requests_session(make_ssl_context(None), service=IDENTITY_ENDPOINT)
            try:
                await asyncio.to_thread(session.get, f"{url}/metadata/identity")
            except RedirectRefused as exc:
                return str(exc)
            return "not refused"

    said = asyncio.run(main())
    assert said.startswith("the managed identity endpoint") and "auth.authority" not in said
