"""Credentials that work or say why: certificates (PEM and PFX) checked locally and signed as
Entra ID expects, against a token endpoint that checks them as Entra ID does; managed identity
endpoints that hang, refuse, or keep their key from this user."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import msal.managed_identity
import pytest
import requests
from aiohttp import web
from conftest import CLIENT_ID, TENANT, users
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

import onboard
from onboard.auth import (
    CERTIFICATE_EXPIRY_WARNING_DAYS,
    Credential,
    MsalTokenProvider,
    load_credential,
)
from onboard.cli import EXIT_BAD_INPUT, EXIT_TERMINATED, main
from onboard.config import AuthSettings, Secret
from onboard.errors import AuthError, ConfigError
from onboard.simulator import CLIENT_ASSERTION_TYPE, SimulatorState
from onboard.tls import make_ssl_context, requests_session

SCOPE = "https://graph.microsoft.com/.default"
PASSWORD = "Cert-Pass-7781"
PASSWORD_ENV = {"CERT_PW": PASSWORD}
NOW = dt.datetime.now(dt.UTC)
# What `openssl pkcs12 -nodes` writes for a friendlyName "Zürich Büro ☃": each character's low
# byte (Latin-1 for ü, 0x03 for the snowman), so the file is neither ASCII nor UTF-8.
OPENSSL_BAG = (
    b"Bag Attributes\n    localKeyID: 88 62 9C 14 \n    friendlyName: Z\xfcrich B\xfcro "
    b"\x03\nsubject=CN = onboard app\nissuer=CN = onboard CA\n"
)


@contextlib.asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[str]:
    """Serve `handler` for every path on a free loopback port (plain http, as Azure's
    identity endpoints); yields its base URL."""
    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# --- certificates ------------------------------------------------------------------------------


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(
    key: Any,
    name: str = "onboard app",
    *,
    issuer: tuple[Any, str] | None = None,
    days: float = 365,
    starts: float = -1,
) -> x509.Certificate:
    """A certificate for `key`, signed by `issuer` (key, name) or by itself."""
    signer, issuer_name = issuer or (key, name)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=starts))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .sign(signer, hashes.SHA256())
    )


def pem_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any, password: str | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def settings(path: Path, password_env: str | None = "CERT_PW") -> AuthSettings:
    return AuthSettings(
        client_id=CLIENT_ID,
        method="certificate",
        certificate_path=path,
        certificate_password=Secret("auth.certificate_password", env=password_env),
    )


def provider(url: str, ca_file: Path, material: object) -> MsalTokenProvider:
    return MsalTokenProvider(
        method="certificate",
        credential=Credential(CLIENT_ID, material),
        authority=f"{url}/{TENANT}",
        scope=SCOPE,
        http_client=requests_session(make_ssl_context(ca_file)),
    )


def thumbprint_of(header_value: str) -> bytes:
    """A JWT header's thumbprint as bytes (base64url, padded or not: msal pads it)."""
    return base64.urlsafe_b64decode(header_value + "=" * (-len(header_value) % 4))


# The kinds of certificate file an administrator brings, each with the certificate it signs
# with: (file bytes, password, suffix) built from a leaf key, its certificate and a CA.
def credential_files() -> dict[
    str, Callable[[Any, x509.Certificate, x509.Certificate], tuple[bytes, str | None, str]]
]:
    legacy = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(PASSWORD.encode())
    )
    return {
        "pem": lambda k, c, ca: (key_pem(k) + pem_of(c), None, ".pem"),
        "pem encrypted": lambda k, c, ca: (key_pem(k, PASSWORD) + pem_of(c), PASSWORD, ".pem"),
        "pem chain, CA first": lambda k, c, ca: (pem_of(ca) + pem_of(c) + key_pem(k), None, ".pem"),
        "pem from openssl -nodes, non-ASCII friendlyName": lambda k, c, ca: (
            OPENSSL_BAG
            + pem_of(c)
            + OPENSSL_BAG.replace(b"subject", b"Key Attributes: <No Attributes>\nx")
            + key_pem(k),
            None,
            ".pem",
        ),
        "pfx with password": lambda k, c, ca: (
            pkcs12.serialize_key_and_certificates(
                b"app", k, c, [ca], serialization.BestAvailableEncryption(PASSWORD.encode())
            ),
            PASSWORD,
            ".pfx",
        ),
        "pfx without password": lambda k, c, ca: (
            pkcs12.serialize_key_and_certificates(b"app", k, c, None, serialization.NoEncryption()),
            None,
            ".p12",
        ),
        "legacy pfx (3DES, SHA-1 MAC)": lambda k, c, ca: (
            pkcs12.serialize_key_and_certificates(b"app", k, c, None, legacy),
            PASSWORD,
            ".pfx",
        ),
    }


@pytest.fixture(scope="module")
def app_certificate() -> tuple[rsa.RSAPrivateKey, x509.Certificate, x509.Certificate]:
    """An app key, its certificate issued by a CA, and that CA's certificate (made once per
    module: keys and certificates are immutable)."""
    ca_key = rsa_key()
    ca = certificate(ca_key, "onboard CA")
    key = rsa_key()
    return key, certificate(key, "onboard app", issuer=(ca_key, "onboard CA")), ca


@pytest.mark.parametrize("kind", list(credential_files()))
def test_certificate_files_sign_in_with_a_sha256_thumbprint(
    serve_simulator,
    tmp_path: Path,
    app_certificate: Any,
    kind: str,
) -> None:
    """Every kind of certificate file signs in against a token endpoint that checks the
    thumbprint and signature: PS256 with the app certificate's SHA-256 thumbprint, the
    certificate itself in x5c, whatever order the file keeps its chain in."""
    key, cert, ca = app_certificate
    data, password, suffix = credential_files()[kind](key, cert, ca)
    path = write(tmp_path / f"app{suffix}", data)
    credential = load_credential(settings(path, "CERT_PW" if password else None), PASSWORD_ENV)
    state = SimulatorState(certificates=[cert])
    sim = serve_simulator(state)
    token = asyncio.run(provider(sim.url, sim.ca_file, credential.material).token())
    assert token in state.tokens
    [header] = state.assertion_headers
    assert header["alg"] == "PS256" and "x5t" not in header
    assert thumbprint_of(header["x5t#S256"]) == cert.fingerprint(hashes.SHA256())
    # x5c: the app's own certificate first (msal wraps its base64 in lines, as PEM does)
    assert base64.b64decode(header["x5c"][0]) == cert.public_bytes(serialization.Encoding.DER)


# --- the token endpoint checks what Entra ID checks -------------------------------------------


def assertion(
    key: Any,
    cert: x509.Certificate,
    audience: str,
    *,
    alg: str = "PS256",
    thumbprint: str = "x5t#S256",
    issuer: str = CLIENT_ID,
    lifetime: float = 600,
    issued: float = 0,
) -> str:
    """A client assertion as msal builds one, with each part open to change."""
    now = time.time() + issued
    name = {"x5t#S256": hashes.SHA256(), "x5t": hashes.SHA1()}[thumbprint]
    headers = {thumbprint: base64.urlsafe_b64encode(cert.fingerprint(name)).rstrip(b"=").decode()}
    claims = {
        "aud": audience,
        "iss": issuer,
        "sub": issuer,
        "jti": str(uuid.uuid4()),
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + lifetime),
    }
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


@pytest.mark.parametrize(
    ("case", "error", "code"),
    [
        ("registered, SHA-256 thumbprint, PS256", None, None),
        ("registered, SHA-1 thumbprint, RS256", None, None),
        ("unknown certificate", "invalid_client", 700027),
        ("signed by another key", "invalid_client", 700027),
        ("expired", "invalid_client", 700024),
        ("not yet valid", "invalid_client", 700024),
        ("another audience", "invalid_client", 50012),
        ("issuer is not the client", "invalid_client", 700021),
        ("ES256", "invalid_client", 5002738),
        ("wrong secret", "invalid_client", 7000215),
    ],
)
def test_token_endpoint_checks_credentials_as_entra_does(
    serve_simulator,
    app_certificate: Any,
    case: str,
    error: str | None,
    code: int | None,
) -> None:
    """The simulator's token endpoint accepts an assertion only when a registered
    certificate's thumbprint names it, its signature verifies, its audience is the token
    endpoint, its issuer the client, and it is within its time; a wrong secret is refused."""
    key, cert, _ca = app_certificate
    other = rsa_key()
    sim = serve_simulator(SimulatorState(certificates=[cert]))
    endpoint = f"{sim.url}/{TENANT}/oauth2/v2.0/token"
    made = {
        "registered, SHA-256 thumbprint, PS256": lambda: assertion(key, cert, endpoint),
        "registered, SHA-1 thumbprint, RS256": lambda: assertion(
            key, cert, endpoint, alg="RS256", thumbprint="x5t"
        ),
        "unknown certificate": lambda: assertion(other, certificate(other), endpoint),
        "signed by another key": lambda: assertion(other, cert, endpoint),
        "expired": lambda: assertion(key, cert, endpoint, issued=-3600),
        "not yet valid": lambda: assertion(key, cert, endpoint, issued=3600),
        "another audience": lambda: assertion(key, cert, f"{sim.url}/other/oauth2/v2.0/token"),
        "issuer is not the client": lambda: assertion(
            key, cert, endpoint, issuer=str(uuid.uuid4())
        ),
        "ES256": lambda: assertion(
            ec.generate_private_key(ec.SECP256R1()), cert, endpoint, alg="ES256"
        ),
    }
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "scope": SCOPE}
    if case in made:
        form |= {"client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": made[case]()}
    else:
        form["client_secret"] = "Wr0ng-S3cret"
    answer = requests.post(endpoint, data=form, verify=str(sim.ca_file), timeout=10).json()
    assert (answer.get("error"), (answer.get("error_codes") or [None])[0]) == (error, code)
    assert ("access_token" in answer) is (error is None)


# --- certificates checked before anything is sent ---------------------------------------------


def pem_file(tmp_path: Path, data: bytes) -> Path:
    return write(tmp_path / "app.pem", data)


def pfx_file(tmp_path: Path, key: Any, cert: x509.Certificate, password: str | None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return write(
        tmp_path / "app.pfx",
        pkcs12.serialize_key_and_certificates(b"app", key, cert, None, encryption),
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "pfx, wrong password",
            r"app\.pfx: wrong password \(read from the environment variable CERT_PW "
            r"\(auth\.certificate_password_env\)\)",
        ),
        (
            "pfx, no password set",
            r"app\.pfx cannot be opened without a password \(auth\.certificate_password_env or "
            r"auth\.certificate_password_file \(neither is set\)\)",
        ),
        (
            "pfx without password, password set",
            r"app\.pfx has no password, but one is set in the environment variable CERT_PW",
        ),
        (
            "pem, wrong password",
            r"app\.pem: wrong password for the private key \(read from the environment variable "
            r"CERT_PW",
        ),
        (
            "pem unencrypted, password set",
            r"app\.pem: the private key is not encrypted, but a password is set in the environment "
            r"variable CERT_PW \(auth\.certificate_password_env\): remove that setting",
        ),
        (
            "pem encrypted, no password set",
            r"app\.pem: the private key is encrypted and no password is set: name the variable "
            r"holding it in auth\.certificate_password_env",
        ),
        (
            "pem, key of another certificate",
            r"app\.pem: the private key matches none of its 1 certificate\(s\) \(CN=onboard app\)",
        ),
        (
            "pem, expired",
            r"app\.pem: the certificate expired \(valid from \d{4}-\d\d-\d\d \d\d:\d\d "
            r"to \d{4}-\d\d-\d\d \d\d:\d\d UTC\)",
        ),
        ("pem, not valid yet", r"app\.pem: the certificate is not valid yet \(valid from"),
        (
            "pem, EC key",
            r"app\.pem holds a key that is not RSA \(.*\): Entra ID signs app sign-ins with RSA",
        ),
        ("pem, no certificate", r"app\.pem holds no PEM certificate"),
        ("missing file", r"cannot read auth\.certificate_path .*app\.pem: No such file"),
    ],
)
def test_certificate_mistakes_are_config_errors_naming_file_and_setting(
    tmp_path: Path,
    case: str,
    message: str,
) -> None:
    """A certificate that cannot sign in is refused before any request (ConfigError: exit 2),
    saying which file and which setting, and telling a wrong password from a needless one."""
    key = rsa_key()
    cert = certificate(key)
    env = PASSWORD_ENV
    ec_key = ec.generate_private_key(ec.SECP256R1())
    files: dict[str, Callable[[], Path]] = {
        "pfx, wrong password": lambda: pfx_file(tmp_path, key, cert, "another-one"),
        "pfx, no password set": lambda: pfx_file(tmp_path, key, cert, PASSWORD),
        "pfx without password, password set": lambda: pfx_file(tmp_path, key, cert, None),
        "pem, wrong password": lambda: pem_file(tmp_path, key_pem(key, "another") + pem_of(cert)),
        "pem unencrypted, password set": lambda: pem_file(tmp_path, key_pem(key) + pem_of(cert)),
        "pem encrypted, no password set": lambda: pem_file(
            tmp_path, key_pem(key, PASSWORD) + pem_of(cert)
        ),
        "pem, key of another certificate": lambda: pem_file(
            tmp_path, key_pem(rsa_key()) + pem_of(cert)
        ),
        "pem, expired": lambda: pem_file(
            tmp_path, key_pem(key) + pem_of(certificate(key, days=-1, starts=-30))
        ),
        "pem, not valid yet": lambda: pem_file(
            tmp_path, key_pem(key) + pem_of(certificate(key, starts=2))
        ),
        "pem, EC key": lambda: pem_file(tmp_path, key_pem(ec_key) + pem_of(certificate(ec_key))),
        "pem, no certificate": lambda: pem_file(tmp_path, key_pem(key)),
        "missing file": lambda: tmp_path / "app.pem",
    }
    password_set = case in (
        "pfx, wrong password",
        "pfx without password, password set",
        "pem, wrong password",
        "pem unencrypted, password set",
    )
    with pytest.raises(ConfigError, match=message):
        load_credential(settings(files[case](), "CERT_PW" if password_set else None), env)


def test_certificate_password_error_exits_2_not_3(
    tmp_path: Path,
    serve_simulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A PFX with a wrong password stops `run` with exit 2 (configuration) before any token
    request, naming the file and the password setting."""
    key = rsa_key()
    cert = certificate(key)
    path = pfx_file(tmp_path, key, cert, PASSWORD)
    state = SimulatorState(users("ada@contoso.com"), certificates=[cert])
    sim = serve_simulator(state)
    config = sim.config(
        tmp_path / "c.yaml",
        auth={
            "method": "certificate",
            "certificate_path": str(path),
            "certificate_password_env": "CERT_PW",
        },
    )
    hires = tmp_path / "hires.csv"
    hires.write_text("Work Email,Start Date\nada@contoso.com,2030-01-07\n", encoding="utf-8")
    monkeypatch.setenv("CERT_PW", "not-the-password")
    assert main(["run", str(hires), "-c", str(config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "app.pfx: wrong password" in err and "auth.certificate_password_env" in err
    assert state.counts.get("token_requests", 0) == 0


def test_certificate_expiring_soon_or_readable_by_others_warns(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A certificate within CERTIFICATE_EXPIRY_WARNING_DAYS of its end, in a key file other
    users can read, still loads, with a warning for each (cron's log hears of it)."""
    key = rsa_key()
    path = pem_file(
        tmp_path, key_pem(key) + pem_of(certificate(key, days=CERTIFICATE_EXPIRY_WARNING_DAYS - 20))
    )
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="onboard.auth"):
        load_credential(settings(path, None), {})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "can be read by other users (mode 0644): chmod 600" in warnings[0]
    assert "expires in 9 day(s)" in warnings[1] and "upload a new one" in warnings[1]


def test_certificate_far_from_expiry_in_a_private_file_loads_quietly(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An owner-only key file whose certificate has months to run: no warning at all."""
    key = rsa_key()
    path = pem_file(tmp_path, key_pem(key) + pem_of(certificate(key)))
    with caplog.at_level(logging.WARNING, logger="onboard.auth"):
        load_credential(settings(path, None), {})
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- managed identity ------------------------------------------------------------------------


@pytest.fixture
def silent_endpoint() -> Iterator[socket.socket]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener
    listener.close()


def app_service(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The environment App Service gives its apps, which msal reads to find the endpoint."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", "identity-header-value")


def identity(
    client_id: str | None = None,
    *,
    timeout: tuple[float, float] = (10.0, 30.0),
    deadline: float = 120.0,
) -> MsalTokenProvider:
    return MsalTokenProvider(
        method="managed_identity",
        credential=Credential(client_id, None),
        authority="https://login.microsoftonline.com/x",
        scope=SCOPE,
        http_client=requests_session(make_ssl_context(None), timeout=timeout),
        deadline_seconds=deadline,
    )


def test_identity_endpoint_that_never_answers_times_out(
    monkeypatch: pytest.MonkeyPatch,
    silent_endpoint: socket.socket,
) -> None:
    """An identity endpoint that accepts and never answers: each request's read timeout ends
    the sign-in with an AuthError naming the endpoint (not the authority msal never asks)."""
    port = silent_endpoint.getsockname()[1]
    app_service(monkeypatch, f"http://127.0.0.1:{port}/msi/token")
    started = time.monotonic()
    with pytest.raises(AuthError) as caught:
        asyncio.run(identity(timeout=(1.0, 0.3)).token())
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        f"the App Service identity endpoint http://127.0.0.1:{port}/msi/"
        "token (IDENTITY_ENDPOINT) did not answer in time"
    )


def test_sign_in_deadline_ends_the_wait_and_leaves_no_thread_to_wait_for(
    monkeypatch: pytest.MonkeyPatch,
    silent_endpoint: socket.socket,
) -> None:
    """However long each request may take, a whole token request ends at its deadline, and
    asyncio.run returns at once: the blocked sign-in thread is not waited for."""
    app_service(monkeypatch, f"http://127.0.0.1:{silent_endpoint.getsockname()[1]}/msi/token")
    started = time.monotonic()
    with pytest.raises(AuthError, match=r"\(IDENTITY_ENDPOINT\) did not answer within 0\.5 sec"):
        asyncio.run(identity(deadline=0.5).token())
    assert time.monotonic() - started < 5


def test_hung_identity_endpoint_does_not_outlive_a_second_sigterm(
    tmp_path: Path,
    serve_simulator,
    silent_endpoint: socket.socket,
) -> None:
    """`onboard run` waiting on an identity endpoint that never answers ends promptly after
    two SIGTERMs (exit 143): its sign-in thread keeps neither the process nor the lock."""
    sim = serve_simulator(SimulatorState(users("ada@contoso.com")))
    config = sim.config(tmp_path / "c.yaml", auth={"method": "managed_identity", "client_id": None})
    hires = tmp_path / "hires.csv"
    hires.write_text("Work Email,Start Date\nada@contoso.com,2030-01-07\n", encoding="utf-8")
    port = silent_endpoint.getsockname()[1]
    env = {
        **os.environ,
        "IDENTITY_ENDPOINT": f"http://127.0.0.1:{port}/msi/token",
        "IDENTITY_HEADER": "h",
        "PYTHONPATH": str(Path(onboard.__file__).parent.parent),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "onboard", "run", str(hires), "-c", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        silent_endpoint.settimeout(60)
        connection, _ = silent_endpoint.accept()  # the run is now waiting for its token
        child.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # let the first signal be handled before the second
        child.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _out, err = child.communicate(timeout=25)
        connection.close()
    finally:
        child.kill()
    assert time.monotonic() - started < 10, err
    assert child.returncode == EXIT_TERMINATED, err


@pytest.mark.parametrize("client_id", [CLIENT_ID, None])
def test_identity_refusal_names_what_to_fix(
    monkeypatch: pytest.MonkeyPatch, client_id: str | None
) -> None:
    """An identity endpoint's refusal (App Service calls every one invalid_scope) says, with
    a client_id, that it selects a user-assigned identity and must be that identity's own;
    without one, that the system-assigned identity must be on. Never "check graph.cloud"
    alone."""

    async def refuse(request: web.BaseRequest) -> web.Response:
        return web.json_response(
            {"statusCode": 400, "message": "Unable to load the proper Managed Identity."},
            status=400,
        )

    async def main_() -> AuthError:
        async with serving(refuse) as url:
            app_service(monkeypatch, f"{url}/msi/token")
            with pytest.raises(AuthError) as caught:
                await identity(client_id).token()
            return caught.value

    message = str(asyncio.run(main_()))
    if client_id:
        assert (
            f"refused auth.client_id {client_id}: with a managed identity, auth.client_id "
            "selects a user-assigned identity and must be that identity's client id (not "
            "the app registration's)"
        ) in message
    else:
        assert "has a system-assigned managed identity turned on" in message
    assert "login.microsoftonline.com" not in message


@pytest.mark.parametrize(
    "answer", [b"[]", b"<html>Bad gateway</html>", b'{"access_token": "t", "expires_on": "soon"}']
)
def test_identity_endpoint_odd_answers_are_auth_errors(
    monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    """Whatever an identity endpoint answers (not an object, not JSON, a bad expiry), sign-in
    ends with an AuthError naming the endpoint, never a traceback."""

    async def odd(request: web.BaseRequest) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    async def main_() -> AuthError:
        async with serving(odd) as url:
            app_service(monkeypatch, f"{url}/msi/token")
            with pytest.raises(AuthError) as caught:
                await identity().token()
            return caught.value

    assert "the App Service identity endpoint http://127.0.0.1:" in str(asyncio.run(main_()))


def arc(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The environment of an Azure Arc-enabled server, as msal detects it."""
    monkeypatch.delenv("IDENTITY_HEADER", raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint)
    monkeypatch.setenv("IMDS_ENDPOINT", "http://127.0.0.1:1")


def test_arc_refuses_a_client_id_before_signing_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Azure Arc (system-assigned identities only) auth.client_id is a ConfigError that
    says so, rather than msal's failure naming login.microsoftonline.com."""
    arc(monkeypatch, "http://127.0.0.1:1/metadata/identity/oauth2/token")
    with pytest.raises(
        ConfigError,
        match=r"auth\.client_id .* Azure Arc-enabled server, whose "
        r"managed identity is system-assigned only: remove",
    ):
        load_credential(AuthSettings(client_id=CLIENT_ID, method="managed_identity"), {})


async def arc_challenge(request: web.BaseRequest) -> web.Response:
    """The Arc agent's first answer: 401, naming the key file that proves local access."""
    if "Authorization" in request.headers:
        return web.json_response({"access_token": "arc-token", "expires_in": "3599"})
    return web.Response(
        status=401, headers={"WWW-Authenticate": "Basic realm=/var/opt/azcmagent/tokens/0b1c2d.key"}
    )


def test_arc_key_that_cannot_be_read_is_an_auth_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Arc key file msal cannot open (here a directory where the key should be: unreadable
    even for root) ends the sign-in with an AuthError naming it, not a traceback."""
    tokens = tmp_path / "tokens"
    (tokens / "0b1c2d.key").mkdir(parents=True)
    monkeypatch.setitem(
        msal.managed_identity._supported_arc_platforms_and_their_prefixes, sys.platform, str(tokens)
    )

    async def main_() -> AuthError:
        async with serving(arc_challenge) as url:
            arc(monkeypatch, f"{url}/metadata/identity/oauth2/token")
            with pytest.raises(AuthError) as caught:
                await identity().token()
            return caught.value

    message = str(asyncio.run(main_()))
    assert message.startswith("the Azure Arc agent's identity endpoint http://127.0.0.1:")
    assert "0b1c2d.key" in message


# Run where the key's folder (chmod 000) may not be read, the Arc flow meets the PermissionError
# a user outside himds meets. Root reads anything, so as root the child runs without any
# capability (setpriv): still uid 0, so it can run this Python, but bound by file modes.
ARC_CHILD = """
import asyncio, sys
import msal.managed_identity
msal.managed_identity._supported_arc_platforms_and_their_prefixes[sys.platform] = sys.argv[1]
from onboard.auth import Credential, MsalTokenProvider
from onboard.errors import AuthError
from onboard.tls import make_ssl_context, requests_session
tokens = MsalTokenProvider(method="managed_identity", credential=Credential(None, None),
    authority="https://login.microsoftonline.com/x", scope="https://graph.microsoft.com/.default",
    http_client=requests_session(make_ssl_context(None)))
try:
    asyncio.run(tokens.token())
except AuthError as exc:
    print(exc)
    sys.exit(3)
"""


def test_arc_key_kept_from_this_user_names_the_himds_group(tmp_path: Path) -> None:
    """A user outside the himds group gets exit-3 advice to join it (was a PermissionError
    traceback, exit 4). The key's folder is chmod 000; as root the check runs without
    capabilities."""
    command = [sys.executable, "-c", ARC_CHILD]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: nothing here can be kept from root")
        command = [setpriv, "--bounding-set", "-all", "--inh-caps", "-all", "--", *command]
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "0b1c2d.key").write_text("key-material", encoding="utf-8")
    tokens.chmod(0o000)

    async def main_() -> tuple[int, str]:
        async with serving(arc_challenge) as url:
            env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(tmp_path),
                "PYTHONPATH": str(Path(onboard.__file__).parent.parent),
                "IDENTITY_ENDPOINT": f"{url}/metadata/identity/oauth2/token",
                "IMDS_ENDPOINT": "http://127.0.0.1:1",
            }
            child = await asyncio.create_subprocess_exec(
                *command,
                str(tokens),
                env=env,
                cwd="/",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(child.communicate(), 60)
            assert child.returncode is not None
            return child.returncode, (out + err).decode()

    try:
        code, printed = asyncio.run(main_())
    finally:
        tokens.chmod(0o700)
    assert code == 3, printed
    assert f"the Azure Arc agent's token key {tokens / '0b1c2d.key'} may not be read by" in printed
    assert "add it to the himds group (sudo usermod -aG himds USER" in printed


def test_a_certificate_about_to_expire_makes_the_run_exit_1_saying_so(
    tmp_path: Path, serve_simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every pass issued, but the certificate expires within 30 days: the printed result says
    so and the run exits 1, so a cron job's mail goes out before sign-in stops."""
    key = rsa_key()
    cert = certificate(key, days=10)
    path = pem_file(tmp_path, key_pem(key) + pem_of(cert))
    state = SimulatorState(users("ada@contoso.com"), certificates=[cert])
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", auth={"method": "certificate",
                                                   "certificate_path": str(path)})  # fmt: skip
    hires = tmp_path / "hires.csv"
    start = (dt.date.today() + dt.timedelta(days=5)).isoformat()
    hires.write_text(f"Work Email,Start Date\nada@contoso.com,{start}\n", encoding="utf-8")
    assert main(["run", str(hires), "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "1 issued, 0 failed" in out
    assert "needs attention: the app's certificate (thumbprint " in out and "expires in 9" in out


def test_a_key_too_short_for_entra_is_a_config_error(tmp_path: Path) -> None:
    """A 1024-bit RSA key: exit 2 naming the file (Entra needs 2048 bits), not a sign-in error
    from deep inside the signing."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = pem_file(tmp_path, key_pem(key) + pem_of(certificate(key)))
    with pytest.raises(ConfigError, match="1024-bit RSA key: Entra ID needs at least 2048"):
        load_credential(settings(path, None), {})


def test_a_certificate_path_that_is_a_fifo_or_a_device_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """A FIFO as auth.certificate_path would block the run for ever (holding its locks), and
    /dev/zero would fill the memory: both are refused before anything is read."""
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    for odd in (fifo, Path("/dev/zero")):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_credential(settings(odd, None), {})
