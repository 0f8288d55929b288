"""Real msal and the real Graph client against the simulator served over HTTPS on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from conftest import CLIENT_ID, SCOPE, certificate_of, make_certificate, provider, users

from onboard.auth import Credential, MsalTokenProvider, load_credential
from onboard.config import AuthSettings, Secret
from onboard.errors import AuthError, ConfigError, GraphError
from onboard.graph import GraphClient, user_path
from onboard.outcomes import Origin, PassRequest
from onboard.simulator import SimulatorState
from onboard.tls import make_ssl_context


def pass_request(user: str, row: int = 2) -> PassRequest:
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    return PassRequest(Origin("t.csv", row), user, None, start, 120, True)


async def create_two(url: str, ca_file: Path, state: SimulatorState,
                     tokens: MsalTokenProvider) -> list[str]:
    context = make_ssl_context(ca_file)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        client = GraphClient(session, url, tokens)
        first = await client.create_pass(pass_request("ada@contoso.com"))
        state.revoke_tokens()  # the next request is answered 401
        second = await client.create_pass(pass_request("alan@contoso.com", 3))
    return [first.value, second.value]


def test_401_gets_one_fresh_token_through_msal(serve_simulator) -> None:
    """A 401 makes msal fetch a new token (bypassing its cache) and the request is retried once."""
    state = SimulatorState(users("ada@contoso.com", "alan@contoso.com"))
    sim = serve_simulator(state)
    tokens = provider(sim.url, sim.ca_file)
    values = asyncio.run(create_two(sim.url, sim.ca_file, state, tokens))
    assert values == [state.current_pass("ada@contoso.com"), state.current_pass("alan@contoso.com")]
    assert state.counts["token_requests"] == 2
    assert state.counts["401"] == 1
    assert tokens.acquired == 2


def test_token_is_shared_and_cached_across_requests(serve_simulator) -> None:
    """Many requests, one token request: msal's cache and ours serve the whole pool."""
    state = SimulatorState(users(*(f"u{n}@contoso.com" for n in range(10))))
    sim = serve_simulator(state)
    tokens = provider(sim.url, sim.ca_file)

    async def main() -> None:
        context = make_ssl_context(sim.ca_file)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
            client = GraphClient(s, sim.url, tokens)
            await asyncio.gather(*(client.create_pass(pass_request(f"u{n}@contoso.com", n))
                                   for n in range(10)))

    asyncio.run(main())
    assert state.counts["token_requests"] == 1
    assert state.counts["201"] == 10


def test_wrong_secret_is_an_auth_error_without_the_secret(serve_simulator) -> None:
    """A refused secret raises AuthError with advice; the secret is not in the message."""
    sim = serve_simulator(SimulatorState())
    tokens = provider(sim.url, sim.ca_file, material="Wr0ng-S3cret-value")
    with pytest.raises(AuthError) as caught:
        asyncio.run(tokens.token())
    assert caught.value.error == "invalid_client"
    assert "secret" in str(caught.value) and "Wr0ng-S3cret-value" not in str(caught.value)


def test_untrusted_certificate_is_refused(serve_simulator) -> None:
    """TLS is verified: without the simulator's CA, sign-in fails instead of going on."""
    sim = serve_simulator(SimulatorState())
    with pytest.raises(AuthError, match=r"is not trusted; if a proxy inspects TLS, set graph\.ca"):
        asyncio.run(provider(sim.url, None).token())


@pytest.mark.parametrize("kind", ["pem", "pfx"])
def test_certificate_credentials_sign_in_through_msal(serve_simulator, tmp_path: Path,
                                                      kind: str) -> None:
    """A PEM or PFX certificate (with its password from the environment) gets a token."""
    pem, pfx = make_certificate(tmp_path, b"pfx-pass-123")
    settings = AuthSettings(client_id=CLIENT_ID, method="certificate",
                            certificate_path=pem if kind == "pem" else pfx,
                            certificate_password=Secret("auth.certificate_password",
                                                        env="CERT_PASSWORD"))
    credential = load_credential(settings, {"CERT_PASSWORD": "pfx-pass-123"})
    assert "pfx-pass-123" not in repr(credential)
    state = SimulatorState(certificates=[certificate_of(pem)])
    sim = serve_simulator(state)
    token = asyncio.run(provider(sim.url, sim.ca_file, credential.material).token())
    assert token in state.tokens


def test_missing_secret_variable_is_a_config_error() -> None:
    """No secret in the environment: a ConfigError naming the variable, before any network."""
    with pytest.raises(ConfigError,
                       match=r"ONBOARD_CLIENT_SECRET \(auth.client_secret_env\), which is not set"):
        load_credential(AuthSettings(client_id=CLIENT_ID), {})


def test_managed_identity_uses_msal_managed_identity_client() -> None:
    """managed_identity asks msal's ManagedIdentityClient (here against a fake IMDS endpoint)."""
    class FakeResponse:
        status_code = 200
        headers: ClassVar[dict[str, str]] = {}
        text = ('{"access_token": "mi-token", "expires_in": "3599", "token_type": "Bearer", '
                '"resource": "https://graph.microsoft.com"}')

        def raise_for_status(self) -> None:
            pass

    class FakeHttp:
        def __init__(self) -> None:
            self.urls: list[str] = []

        def get(self, url: str, **kwargs: object) -> FakeResponse:
            self.urls.append(url)
            return FakeResponse()

        post = get

        def close(self) -> None:
            pass

    http = FakeHttp()
    tokens = MsalTokenProvider(method="managed_identity", credential=Credential(None, None),
                               authority="https://login.microsoftonline.com/x", scope=SCOPE,
                               http_client=http)  # type: ignore[arg-type]
    assert asyncio.run(tokens.token()) == "mi-token"
    assert http.urls and "169.254.169.254" in http.urls[0]


@pytest.mark.parametrize(
    ("user", "path"),
    [("ada@contoso.com", "users/ada@contoso.com"),
     ("o'neil#1@contoso.com", "users/o%27neil%231@contoso.com"),
     ("a/../b@contoso.com", "users/a%2F..%2Fb@contoso.com"),
     ("$admin@contoso.com", "users('%24admin@contoso.com')"),
     ("$o'neil@contoso.com", "users('%24o''neil@contoso.com')")],
)
def test_user_path_is_percent_encoded(user: str, path: str) -> None:
    """UPNs are percent-encoded ('#' as %23, no '/' survives) and '$' uses the users('') form,
    an OData literal: an apostrophe in it is doubled."""
    assert user_path(user) == path


def test_graph_errors_keep_status_code_and_request_id(serve_simulator) -> None:
    """A 404 from Graph raises GraphError carrying status, code and request id as attributes."""
    state = SimulatorState()
    sim = serve_simulator(state)

    async def main() -> GraphError:
        context = make_ssl_context(sim.ca_file)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
            client = GraphClient(s, sim.url, provider(sim.url, sim.ca_file))
            try:
                await client.create_pass(pass_request("ghost@contoso.com"))
            except GraphError as exc:
                return exc
        raise AssertionError("no error")

    error = asyncio.run(main())
    assert (error.status, error.code) == (404, "Request_ResourceNotFound")
    assert error.request_id and len(error.request_id) == 36
