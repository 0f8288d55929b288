"""One TLS policy for every connection: always verified, system trust plus an optional extra CA.

The same SSLContext serves aiohttp (Graph) and requests (msal's sign-in calls), so a
TLS-inspecting proxy's CA in ``graph.ca_bundle`` (or SSL_CERT_FILE) works for both. Nothing here
can turn verification off.

msal's requests session also never follows a redirect (the sign-in service never redirects an
API call, and requests would re-POST the client secret to wherever it points) and sends nothing
over plain http except to this machine or a link-local address, where Azure's managed-identity
endpoints answer (http://169.254.169.254, App Service's http://127.0.0.1:port) by design.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import requests
from requests.adapters import HTTPAdapter
from yarl import URL

from .config import is_loopback
from .errors import AuthError, PlainHttpRefused, RedirectRefused
from .redact import printable

# Seconds to connect, and to wait for each read, on every sign-in request (the authority's, or
# a managed-identity endpoint's, http or https): msal sets none itself.
SIGN_IN_TIMEOUT = (10.0, 30.0)


@functools.lru_cache(maxsize=8)
def make_ssl_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """System trust store (honours SSL_CERT_FILE/SSL_CERT_DIR), certifi's roots, and ca_bundle.

    Loading the trust stores takes a noticeable fraction of a second; one context per CA file
    serves the whole process, and `warm` can load it while the spreadsheet is being read.
    """
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def warm(ca_bundle: Path | None) -> None:
    """Start loading the TLS context in the background (a daemon thread: never holds up exit)."""
    threading.Thread(target=_warm, args=(ca_bundle,), daemon=True).start()


def _warm(ca_bundle: Path | None) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):  # _connect reports these, when it runs
        make_ssl_context(ca_bundle)


def plain_http_allowed(host: str | None) -> bool:
    """Whether a request may go to `host` over plain http: this machine or link-local only."""
    if is_loopback(host):
        return True
    try:
        return ipaddress.ip_address(host or "").is_link_local
    except ValueError:
        return False


def redirect_refused(service: str, url: str, location: str | None, setting: str) -> RedirectRefused:
    """The error for a redirect from `service` (asked at `url`) to `location`: never followed,
    as neither Graph nor the sign-in service ever redirects an API call."""
    asked = URL(url)
    to: str | None = None
    if location:
        try:
            to = asked.join(URL(location)).host_port_subcomponent or printable(location)
        except ValueError:  # not a URL at all: show it as sent (escaped: it is the server's)
            to = printable(location)
    where = f"to {to}" if to else "(no Location)"
    return RedirectRefused(
        f"{service} at {asked.host_port_subcomponent} answered with a redirect {where}: onboard "
        f"never follows one, as {service} never redirects these requests. Check {setting} and "
        "any proxy between this machine and it",
        from_host=asked.host_port_subcomponent or "",
        to_host=to,
    )


class _ContextAdapter(HTTPAdapter):
    """A requests adapter that always uses our verified context, whatever `verify` says, and
    sees every hop (requests follows redirects by calling it again): so it refuses them here,
    for every msal call, whatever `allow_redirects` msal passes."""

    def __init__(
        self, context: ssl.SSLContext, timeout: tuple[float, float], service: SignIn
    ) -> None:
        self._context = context
        self._timeout = timeout
        self._service = service
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(proxy, **kwargs)

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> Any:
        host, pool = super().build_connection_pool_key_attributes(request, True, cert)
        pool["ssl_context"] = self._context
        pool["cert_reqs"] = "CERT_REQUIRED"
        return host, pool

    def send(
        self,
        request: Any,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Any:
        url = URL(request.url)
        if url.scheme != "https" and not plain_http_allowed(url.host):
            raise PlainHttpRefused(
                f"refused to send a sign-in request to {url.scheme}://{url.host_port_subcomponent}"
                ": only https is allowed, except to this machine or a link-local address",
                host=url.host or "",
            )
        # msal sets no timeout on its own http_client: a sign-in host (or identity endpoint)
        # that accepts the connection and never answers must not hang the run.
        response = super().send(request, True, timeout or self._timeout, verify, cert, proxies)
        if 300 <= response.status_code < 400:
            response.close()
            location = response.headers.get("Location")
            raise redirect_refused(self._service.name, request.url, location, self._service.setting)
        # Read here, at most SIGN_IN_ANSWER_LIMIT: a sign-in answer is a few KB, and one of
        # hundreds of MB must not fill the memory (requests would read it whole).
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > SIGN_IN_ANSWER_LIMIT:
            response.close()
            raise _too_large(request.url, self._service)
        body = bytearray()
        for chunk in response.iter_content(64 * 1024):
            body += chunk
            if len(body) > SIGN_IN_ANSWER_LIMIT:
                response.close()
                raise _too_large(request.url, self._service)
        response._content = bytes(body)
        response._content_consumed = True  # type: ignore[attr-defined]
        return response

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # REQUESTS_CA_BUNDLE or verify=False must not replace or disable our trust.
        super().cert_verify(conn, url, True, cert)  # type: ignore[no-untyped-call]


SIGN_IN_ANSWER_LIMIT = 1024 * 1024  # a token or discovery answer is a few KB


@dataclass(frozen=True, slots=True)
class SignIn:
    """Who a session's requests go to, for messages: its name and the setting that names it."""

    name: str
    setting: str


SIGN_IN_SERVICE = SignIn("the sign-in service", "auth.authority")
IDENTITY_ENDPOINT = SignIn(
    "the managed identity endpoint", "the machine's identity endpoint (IDENTITY_ENDPOINT)"
)


def _too_large(url: str, service: SignIn) -> AuthError:
    host = URL(url).host_port_subcomponent
    return AuthError(
        f"{service.name} at {host} answered with more than {SIGN_IN_ANSWER_LIMIT // 1024} KB: "
        f"not read (check {service.setting})"
    )


def requests_session(
    context: ssl.SSLContext,
    *,
    timeout: tuple[float, float] = SIGN_IN_TIMEOUT,
    service: SignIn = SIGN_IN_SERVICE,
) -> requests.Session:
    """A requests session (for msal's http_client) that trusts exactly what aiohttp trusts,
    never follows a redirect, uses plain http only to this machine or link-local hosts, and
    gives every request `timeout` (seconds to connect, to wait for each read) unless the
    caller sets its own."""
    session = requests.Session()
    # Also copied into the session msal derives for Service Fabric's managed identity, which
    # mounts its own adapter: there a redirect raises TooManyRedirects instead of being sent.
    session.max_redirects = 0
    adapter = _ContextAdapter(context, timeout, service)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
