"""One TLS policy for every connection: always verified, system trust plus an optional extra CA.

The same SSLContext serves aiohttp (Graph) and requests (msal's sign-in calls), so a
TLS-inspecting proxy's CA in ``graph.ca_bundle`` (or SSL_CERT_FILE) works for both. Nothing here
can turn verification off.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import threading
from pathlib import Path
from typing import Any

import certifi
import requests
from requests.adapters import HTTPAdapter

SIGN_IN_TIMEOUT = (10.0, 30.0)  # seconds to connect, seconds to wait for an answer


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


class _ContextAdapter(HTTPAdapter):
    """A requests adapter that always uses our verified context, whatever `verify` says."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
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
        # msal sets no timeout on its own http_client: a sign-in host that never answers must
        # not hang the run.
        return super().send(request, stream, timeout or SIGN_IN_TIMEOUT, verify, cert, proxies)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # REQUESTS_CA_BUNDLE or verify=False must not replace or disable our trust.
        super().cert_verify(conn, url, True, cert)  # type: ignore[no-untyped-call]


def requests_session(context: ssl.SSLContext) -> requests.Session:
    """A requests session (for msal's http_client) that trusts exactly what aiohttp trusts."""
    session = requests.Session()
    session.mount("https://", _ContextAdapter(context))
    return session
