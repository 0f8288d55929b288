"""Access tokens for Graph through msal: client secret, certificate (PEM or PFX), managed identity.

msal is blocking, so every call runs in a worker thread, never on the event loop: a daemon
thread, so a sign-in that hangs can never keep the process alive once the run has given up
(`asyncio.to_thread`'s executor would: `asyncio.run` waits for it). Every request has a connect
and a read timeout (`tls.SIGN_IN_TIMEOUT`) and a whole token request, retries and discovery
included, a deadline (`SIGN_IN_DEADLINE_SECONDS`). One token serves the whole pool; msal's cache
refreshes it before expiry, and a 401 from Graph asks for a fresh one (`refresh`), once per
rejected token however many workers saw the 401.

Certificates are opened here before anything is sent, so a wrong password, a key that does not
match its certificate or an expired certificate is a configuration error naming the file and
the setting. Both kinds sign the same way, msal's modern one (msal >= 1.35): PS256, with the
certificate's SHA-256 thumbprint (`x5t#S256`), and the certificate in `x5c` (subject name and
issuer authentication need it). A PEM's certificate is the one whose public key matches the
private key, wherever it stands in the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import msal
import msal.managed_identity
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from . import redact
from .config import CERTIFICATE_FILE_LIMIT, AuthSettings, Secret
from .errors import AuthError, ConfigError, first_line, shorten
from .files import NotAFile, read_small

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
# A whole token request: discovery and the token call (each bounded by tls.SIGN_IN_TIMEOUT),
# or a managed identity's one or two calls. Beyond it the run stops with exit 3.
SIGN_IN_DEADLINE_SECONDS = 120.0
# A certificate that expires sooner than this is warned about on every run (cron's log).
CERTIFICATE_EXPIRY_WARNING_DAYS = 30
MIN_RSA_BITS = 2048  # Entra ID's floor for certificate credentials
PFX_SUFFIXES = (".pfx", ".p12")
# Where msal's Azure Arc flow reads the agent's token key; only members of `himds` may.
ARC_GROUP = "himds"

_T = TypeVar("_T")


class TokenProvider(Protocol):
    async def token(self) -> str: ...

    async def refresh(self, rejected: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Credential:
    """What msal needs to prove who we are. Never printed: repr hides the material."""

    client_id: str | None
    material: Any  # a secret string, or msal's certificate dict; None for managed identity
    # A certificate's last moment of validity, and its SHA-1 thumbprint (as the portal lists
    # it): what the operator must hear about before sign-in stops.
    expires: dt.datetime | None = None
    thumbprint: str | None = None

    def __repr__(self) -> str:
        return f"Credential(client_id={self.client_id!r}, material=<hidden>)"

    def expiring(self, now: dt.datetime) -> str | None:
        """A line for the operator when the certificate expires within
        CERTIFICATE_EXPIRY_WARNING_DAYS; None otherwise."""
        if self.expires is None:
            return None
        left = self.expires - now
        if left >= dt.timedelta(days=CERTIFICATE_EXPIRY_WARNING_DAYS):
            return None
        return (
            f"the app's certificate (thumbprint {self.thumbprint}) expires in {left.days} "
            f"day(s), {self.expires:%Y-%m-%d %H:%M} UTC: upload a new one to the app "
            "registration and point auth.certificate_path at it before then"
        )


def load_credential(
    settings: AuthSettings, env: Mapping[str, str], *, now: dt.datetime | None = None
) -> Credential:
    """Read the secret or open the certificate named by the config, checking it locally
    (`now`: the moment its validity is checked against). Raises ConfigError, naming the file
    and the setting, for anything that would make the sign-in fail."""
    if settings.method == "managed_identity":
        _check_managed_identity(settings)
        return Credential(settings.client_id, None)
    if settings.method == "client_secret":
        return Credential(settings.client_id, settings.client_secret.read(env))
    path = settings.certificate_path
    if path is None:
        raise ConfigError("auth.method certificate needs auth.certificate_path")
    try:
        # Bytes (a PEM's bag attributes may hold any text), of a regular file of a sane size.
        data = read_small(path, CERTIFICATE_FILE_LIMIT)
        mode = stat.S_IMODE(path.stat().st_mode)
    except NotAFile as exc:
        raise ConfigError(f"cannot read auth.certificate_path {path}: it {exc}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read auth.certificate_path {path}: {reason}") from None
    if mode & 0o077 and os.name != "nt":
        log.warning(
            "the certificate's private key %s can be read by other users (mode %04o): chmod 600 it",
            path,
            mode,
        )
    password = settings.certificate_password.read(env)
    secret = settings.certificate_password
    if path.suffix.lower() in PFX_SUFFIXES:
        key, certificate = _open_pfx(path, data, password, secret)
        # public_certificate True: msal sends the certificate (x5c) and signs PS256 with its
        # SHA-256 thumbprint, as for a PEM below.
        material: dict[str, Any] = {"private_key_pfx_path": str(path), "public_certificate": True}
    else:
        key, certificate, chain = _open_pem(path, data, password, secret)
        # No "thumbprint": msal (>= 1.35) then takes the first certificate of
        # public_certificate, computes its SHA-256 thumbprint and signs PS256. A thumbprint
        # given here would be taken as SHA-1 and signed RS256 (msal's legacy path).
        material = {
            "private_key": data,
            "public_certificate": b"".join(
                c.public_bytes(serialization.Encoding.PEM) for c in (certificate, *chain)
            ).decode("ascii"),
        }
    if password is not None:
        material["passphrase"] = password
    _check_certificate(path, key, certificate, now or dt.datetime.now(dt.UTC))
    return Credential(
        settings.client_id,
        material,
        certificate.not_valid_after_utc,
        certificate.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 (the portal's id)
    )


def _password_setting(secret: Secret) -> str:
    """Where the certificate password is read from, or which settings would give one."""
    if secret.configured:
        return secret.where
    return f"{secret.key}_env or {secret.key}_file (neither is set)"


def _open_pem(
    path: Path, data: bytes, password: str | None, secret: Secret
) -> tuple[Any, x509.Certificate, list[x509.Certificate]]:
    """The private key, the certificate whose public key matches it, and the file's other
    certificates (its chain, in file order)."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(
            f"auth.certificate_path {path} holds no PEM certificate; it needs the private key "
            "and the certificate (or give a PFX file)"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:  # a password for a key that has none, or none for one that has
        if password is not None:
            raise ConfigError(
                f"auth.certificate_path {path}: the private key is not encrypted, but a "
                f"password is set in {secret.where}: remove that setting (or point "
                "auth.certificate_path at the encrypted key)"
            ) from None
        raise ConfigError(
            f"auth.certificate_path {path}: the private key is encrypted and no password is "
            f"set: name the variable holding it in {secret.key}_env (or a file in "
            f"{secret.key}_file)"
        ) from None
    except ValueError:
        if password is not None and _pem_key_is_encrypted(data):
            raise ConfigError(
                f"auth.certificate_path {path}: wrong password for the private key (read from "
                f"{secret.where})"
            ) from None
        raise ConfigError(
            f"auth.certificate_path {path} holds no private key it can read (PEM, PKCS#8 or "
            "PKCS#1 RSA); it needs the private key and the certificate"
        ) from None
    wanted = _public_der(key)
    matching = [c for c in certificates if _public_der(c) == wanted]
    if not matching:
        subjects = "; ".join(c.subject.rfc4514_string() or "(no subject)" for c in certificates)
        raise ConfigError(
            f"auth.certificate_path {path}: the private key matches none of its "
            f"{len(certificates)} certificate(s) ({subjects}): put the key and its own "
            "certificate in the file"
        )
    certificate = matching[0]
    return key, certificate, [c for c in certificates if c is not certificate]


def _pem_key_is_encrypted(data: bytes) -> bool:
    """Whether the file holds an encrypted key: opening it without a password says so."""
    try:
        serialization.load_pem_private_key(data, None)
    except TypeError:
        return True
    except ValueError:
        return False
    return False


def _open_pfx(
    path: Path, data: bytes, password: str | None, secret: Secret
) -> tuple[Any, x509.Certificate]:
    """The PFX's key and certificate, opened as msal will open them."""
    try:
        key, certificate, _chain = pkcs12.load_key_and_certificates(
            data, password.encode() if password is not None else None
        )
    except ValueError:
        if password is not None and _pfx_opens_without_password(data):
            raise ConfigError(
                f"auth.certificate_path {path} has no password, but one is set in "
                f"{secret.where}: remove that setting"
            ) from None
        if password is not None:
            raise ConfigError(
                f"auth.certificate_path {path}: wrong password (read from {secret.where}), or "
                "not a PFX/PKCS#12 file"
            ) from None
        raise ConfigError(
            f"auth.certificate_path {path} cannot be opened without a password "
            f"({_password_setting(secret)}): name the variable holding it in "
            f"{secret.key}_env, or check that it is a PFX/PKCS#12 file"
        ) from None
    if key is None or certificate is None:
        raise ConfigError(
            f"auth.certificate_path {path} must hold both the private key and its certificate"
        )
    if _public_der(key) != _public_der(certificate):
        raise ConfigError(
            f"auth.certificate_path {path}: its certificate "
            f"({certificate.subject.rfc4514_string()}) does not match its private key"
        )
    return key, certificate


def _pfx_opens_without_password(data: bytes) -> bool:
    try:
        pkcs12.load_key_and_certificates(data, None)
    except ValueError:
        return False
    return True


def _public_der(holder: Any) -> bytes:
    """A key's or certificate's public key, as comparable bytes."""
    public = holder.public_key()
    return bytes(
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _check_certificate(
    path: Path, key: Any, certificate: x509.Certificate, now: dt.datetime
) -> None:
    """What Entra ID would refuse, said before anything is sent; and a warning in time."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            f"auth.certificate_path {path} holds a key that is not RSA "
            f"({type(key).__name__}): Entra ID signs app sign-ins with RSA keys only (PS256)"
        )
    if key.key_size < MIN_RSA_BITS:
        raise ConfigError(
            f"auth.certificate_path {path} holds a {key.key_size}-bit RSA key: Entra ID needs "
            f"at least {MIN_RSA_BITS} bits; create a new certificate"
        )
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    dates = f"valid from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
    # The portal lists certificates by their SHA-1 thumbprint: name them the same way here
    # (sign-in itself uses the SHA-256 one).
    thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    if end <= now:
        raise ConfigError(
            f"auth.certificate_path {path}: the certificate expired ({dates}): create a new "
            "one, upload it to the app registration and point auth.certificate_path at it"
        )
    if start > now:
        raise ConfigError(
            f"auth.certificate_path {path}: the certificate is not valid yet ({dates}); check "
            "this machine's clock"
        )
    left = end - now
    if left < dt.timedelta(days=CERTIFICATE_EXPIRY_WARNING_DAYS):
        log.warning(
            "the certificate in %s (thumbprint %s) expires in %d day(s) (%s): upload a "
            "new one to the app registration before then, or sign-in will stop",
            path,
            thumbprint,
            left.days,
            dates,
        )
    log.debug(
        "certificate %s: thumbprint %s (SHA-256 %s), %s",
        path,
        thumbprint,
        certificate.fingerprint(hashes.SHA256()).hex().upper(),
        dates,
    )


def _check_managed_identity(settings: AuthSettings) -> None:
    """Azure Arc gives a machine one identity, its system-assigned one: a client_id there is a
    mistake (msal would ask for it and fail with a message about another host)."""
    if settings.client_id and _identity_source() is msal.managed_identity.AZURE_ARC:
        raise ConfigError(
            f"auth.client_id {settings.client_id} is set, but this is an Azure Arc-enabled "
            "server, whose managed identity is system-assigned only: remove auth.client_id"
        )


def _identity_source() -> object:
    """Which managed-identity endpoint msal will ask (msal's own detection, from the
    environment: App Service, Arc, Service Fabric, Machine Learning, else the VM's IMDS)."""
    return msal.managed_identity.get_managed_identity_source()


def _identity_endpoint() -> str:
    """The managed-identity endpoint msal will ask, for messages."""
    source = _identity_source()
    mi = msal.managed_identity
    endpoint = os.environ.get("IDENTITY_ENDPOINT")
    if source is mi.APP_SERVICE:
        return f"the App Service identity endpoint {endpoint} (IDENTITY_ENDPOINT)"
    if source is mi.SERVICE_FABRIC:
        return f"the Service Fabric identity endpoint {endpoint} (IDENTITY_ENDPOINT)"
    if source is mi.MACHINE_LEARNING:
        return f"the Machine Learning identity endpoint {os.environ.get('MSI_ENDPOINT')}"
    if source is mi.AZURE_ARC:
        where = endpoint or "on this machine"  # the agent's default: localhost:40342
        return f"the Azure Arc agent's identity endpoint {where}"
    return "the Azure VM's identity endpoint (IMDS, http://169.254.169.254)"


def _in_daemon_thread(work: Callable[[], _T]) -> asyncio.Future[_T]:
    """`work()` in a daemon thread, as a future of this loop. Unlike asyncio.to_thread, a
    thread stuck in a sign-in neither delays `asyncio.run`'s return nor the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(value: Any, error: Exception | None) -> None:
        if future.done():  # cancelled: the run gave up waiting
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        value: Any = None
        error: Exception | None = None
        try:
            value = work()
        except Exception as exc:  # handed to the awaiting task, which raises it
            error = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name="onboard-sign-in", daemon=True).start()
    return future


class MsalTokenProvider:
    """Tokens for `scope` from a tenant-specific authority, cached for the whole pool.

    `deadline_seconds` bounds one whole token request (tests pass a small one); each HTTP
    request within it is bounded by the session's own timeouts (`tls.requests_session`).
    """

    def __init__(
        self,
        *,
        method: str,
        credential: Credential,
        authority: str,
        scope: str,
        http_client: requests.Session,
        clock: Callable[[], float] = time.time,
        deadline_seconds: float = SIGN_IN_DEADLINE_SECONDS,
    ) -> None:
        self._method = method
        self._credential = credential
        self._authority = authority.rstrip("/")
        self._scope = scope
        self._http = http_client
        self._clock = clock
        self._deadline = deadline_seconds
        self._app: Any = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.acquired = 0

    def __repr__(self) -> str:
        return f"MsalTokenProvider(method={self._method!r}, authority={self._authority!r})"

    @property
    def _managed(self) -> bool:
        return self._method == "managed_identity"

    def _service(self) -> str:
        """Who is asked for tokens, for messages: the sign-in service, or the identity
        endpoint (a managed identity never talks to the authority itself)."""
        if self._managed:
            return _identity_endpoint()
        return f"the sign-in service at {self._authority}"

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
        try:
            result = await asyncio.wait_for(
                _in_daemon_thread(lambda: self._acquire_blocking(fresh)), self._deadline
            )
        except TimeoutError:
            raise AuthError(
                f"{self._service()} did not answer within {self._deadline:g} seconds"
            ) from None
        token = result.get("access_token")
        if not token:
            error = str(result.get("error") or "unknown_error")
            description = str(result.get("error_description") or "").split("\r\n")[0]
            raise AuthError(self._explain(error, description), error=error)
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
            if self._managed:
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
                f"the TLS certificate of {self._service()} is not trusted; if a proxy inspects "
                "TLS, set graph.ca_bundle to its CA file"
            ) from None
        except requests.exceptions.Timeout:
            raise AuthError(f"{self._service()} did not answer in time") from None
        except (ValueError, requests.RequestException, msal.exceptions.MsalError) as exc:
            raise AuthError(f"cannot reach {self._service()}: {first_line(exc)}") from None
        except (KeyError, TypeError, AttributeError) as exc:  # msal reading an odd answer
            raise AuthError(
                f"{self._service()} gave an answer msal cannot read ({type(exc).__name__}: "
                f"{first_line(exc)})"
            ) from None
        except PermissionError as exc:  # (after requests' errors, which are OSErrors too)
            if self._managed:
                raise AuthError(_arc_key_refused(exc)) from None
            raise AuthError(f"sign-in could not read {exc.filename}: {exc.strerror}") from None
        except OSError as exc:
            what = "the Azure Arc agent's token key" if self._managed else "a file"
            raise AuthError(
                f"{self._service()}: cannot read {what} {exc.filename}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        return dict(result or {})

    def _build(self) -> Any:
        if self._managed:
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

    def _explain(self, error: str, description: str) -> str:
        if self._managed:
            return _explain_managed_identity(
                error, description, self._credential.client_id, self._service()
            )
        return _explain(error, description)


def _arc_key_refused(exc: PermissionError) -> str:
    user = "this user"
    with contextlib.suppress(OSError, KeyError):  # no name for this uid
        user = f"the user {getpass.getuser()}"
    return (
        f"the Azure Arc agent's token key {exc.filename} may not be read by {user}: add it to "
        f"the {ARC_GROUP} group (sudo usermod -aG {ARC_GROUP} USER, then start a new session), "
        f"or run onboard as a member of {ARC_GROUP}"
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
    return _with_detail(hint, error, description)


def _explain_managed_identity(
    error: str, description: str, client_id: str | None, service: str
) -> str:
    """A managed identity's refusal: its endpoints answer every problem alike (App Service
    calls each one invalid_scope), so the hint follows the configuration, not the code."""
    if client_id:
        hint = (
            f"{service} refused auth.client_id {client_id}: with a managed identity, "
            "auth.client_id selects a user-assigned identity and must be that identity's client "
            "id (not the app registration's); remove it to use the system-assigned identity"
        )
    else:
        hint = (
            f"{service} refused to issue a token: check that this machine or app has a "
            "system-assigned managed identity turned on, and that graph.cloud is its cloud"
        )
    return _with_detail(hint, error, description)


def _with_detail(hint: str, error: str, description: str) -> str:
    description = shorten(description)
    return f"{hint} ({error}: {description})" if description else f"{hint} ({error})"
