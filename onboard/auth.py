"""Access tokens for Graph through msal: client secret, certificate (PEM or PFX), managed identity.

msal is blocking, so every call runs in a worker thread, never on the event loop. One token
serves the whole pool; msal's cache refreshes it before expiry, and a 401 from Graph asks for a
fresh one (`refresh`), once per rejected token however many workers saw the 401.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import msal
import requests

from . import redact
from .config import AuthSettings
from .errors import AuthError, ConfigError, first_line, shorten

log = logging.getLogger(__name__)

# Hosts msal already knows; any other authority (a sovereign host it lacks, a test double) is
# used as given, without instance discovery.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.partner.microsoftonline.cn",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    }
)
REFRESH_MARGIN_SECONDS = 300.0


class TokenProvider(Protocol):
    async def token(self) -> str: ...

    async def refresh(self, rejected: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Credential:
    """What msal needs to prove who we are. Never printed: repr hides the material."""

    client_id: str | None
    material: Any  # a secret string, or msal's certificate dict; None for managed identity

    def __repr__(self) -> str:
        return f"Credential(client_id={self.client_id!r}, material=<hidden>)"


def load_credential(settings: AuthSettings, env: Mapping[str, str]) -> Credential:
    """Read the secret or certificate named by the config. Raises ConfigError if missing."""
    if settings.method == "managed_identity":
        return Credential(settings.client_id, None)
    if settings.method == "client_secret":
        return Credential(settings.client_id, settings.client_secret.read(env))
    path = settings.certificate_path
    if path is None or not path.is_file():
        raise ConfigError(f"auth.certificate_path {path} does not exist")
    password = settings.certificate_password.read(env)
    if path.suffix.lower() in (".pfx", ".p12"):
        material: dict[str, Any] = {"private_key_pfx_path": str(path)}
        if password is not None:
            material["passphrase"] = password
        return Credential(settings.client_id, material)
    return Credential(settings.client_id, _pem_credential(path, password))


def _pem_credential(path: Path, password: str | None) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    data = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(
            f"{path} holds no PEM certificate; it needs the private key and the certificate"
        ) from None
    try:
        serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{path}: cannot read the private key (missing, or wrong certificate password)"
        ) from None
    material: dict[str, Any] = {
        "private_key": data.decode("ascii"),
        "thumbprint": cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - what Entra expects
        "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    if password is not None:
        material["passphrase"] = password
    return material


class MsalTokenProvider:
    """Tokens for `scope` from a tenant-specific authority, cached for the whole pool."""

    def __init__(
        self,
        *,
        method: str,
        credential: Credential,
        authority: str,
        scope: str,
        http_client: requests.Session,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._method = method
        self._credential = credential
        self._authority = authority.rstrip("/")
        self._scope = scope
        self._http = http_client
        self._clock = clock
        self._app: Any = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.acquired = 0

    def __repr__(self) -> str:
        return f"MsalTokenProvider(method={self._method!r}, authority={self._authority!r})"

    async def token(self) -> str:
        async with self._lock:
            if self._token and self._clock() < self._expires_at - REFRESH_MARGIN_SECONDS:
                return self._token
            return await self._acquire(fresh=False)

    async def refresh(self, rejected: str) -> str:
        async with self._lock:
            if self._token and self._token != rejected:
                return self._token  # another worker already replaced it
            return await self._acquire(fresh=True)

    async def _acquire(self, *, fresh: bool) -> str:
        result = await asyncio.to_thread(self._acquire_blocking, fresh)
        token = result.get("access_token")
        if not token:
            error = str(result.get("error") or "unknown_error")
            description = str(result.get("error_description") or "").split("\r\n")[0]
            raise AuthError(_explain(error, description), error=error)
        self._token = str(token)
        redact.remember(self._token)
        self._expires_at = self._clock() + float(result.get("expires_in") or 3600)
        self.acquired += 1
        log.debug("access token acquired (expires in %ss)", result.get("expires_in"))
        return self._token

    def _acquire_blocking(self, fresh: bool) -> dict[str, Any]:
        try:
            app = self._app or self._build()
            self._app = app
            if self._method == "managed_identity":
                resource = self._scope.removesuffix("/.default")
                # A claims challenge is msal's documented way past its managed-identity cache.
                challenge = '{"access_token":{}}' if fresh else None
                result = app.acquire_token_for_client(resource=resource, claims_challenge=challenge)
            else:
                if fresh:
                    app.remove_tokens_for_client()
                result = app.acquire_token_for_client(scopes=[self._scope])
        except AuthError:  # e.g. our session refused a redirect: its message says where to
            raise
        except requests.exceptions.SSLError:
            raise AuthError(
                f"the TLS certificate of the sign-in service at {self._authority} is not "
                "trusted; if a proxy inspects TLS, set graph.ca_bundle to its CA file"
            ) from None
        except requests.exceptions.Timeout:
            raise AuthError(f"the sign-in service at {self._authority} did not answer") from None
        except (ValueError, requests.RequestException, msal.exceptions.MsalError) as exc:
            raise AuthError(
                f"cannot reach the sign-in service at {self._authority}: {first_line(exc)}"
            ) from None
        return dict(result or {})

    def _build(self) -> Any:
        if self._method == "managed_identity":
            identity: Any = (
                msal.UserAssignedManagedIdentity(client_id=self._credential.client_id)
                if self._credential.client_id
                else msal.SystemAssignedManagedIdentity()
            )
            return msal.ManagedIdentityClient(identity, http_client=self._http)
        host = urlsplit(self._authority).hostname or ""
        return msal.ConfidentialClientApplication(
            self._credential.client_id,
            client_credential=self._credential.material,
            authority=self._authority,
            http_client=self._http,
            instance_discovery=host in KNOWN_AUTHORITY_HOSTS,
        )


def _explain(error: str, description: str) -> str:
    """Turn the sign-in service's answer into what the admin should check."""
    hints = {
        "invalid_client": "the client secret or certificate was refused: check that "
        "auth.client_id matches the app registration and that the secret (its value, not its "
        "ID) or certificate is current",
        "unauthorized_client": "the app is not registered in this tenant: check auth.client_id "
        "and auth.tenant_id",
        "invalid_request": "the sign-in request was refused: check auth.tenant_id and "
        "auth.client_id",
        "invalid_scope": "the scope was refused: check graph.cloud matches your tenant's cloud",
    }
    hint = hints.get(error, "sign-in failed")
    description = shorten(description)
    return f"{hint} ({error}: {description})" if description else f"{hint} ({error})"
