"""Graph as Microsoft documents it: guests, passes outside the policy's groups, refusals by
their documented texts, every methodUsabilityReason, and OData's users('$...') literal.

The documented texts are written out here, not imported: the simulator and the client must
both match Microsoft's words."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import SOON, TENANT, audit_rows, latest_audit, provider, run_pool, users

from onboard.cli import EXIT_ROWS_FAILED, main
from onboard.config import load_config
from onboard.errors import GraphError
from onboard.graph import CreatedPass, GraphClient, HeldPass, explain, user_path
from onboard.job import run as run_job
from onboard.outcomes import Failed, Issued, Origin, PassRequest
from onboard.simulator import DEFAULT_CLIENT_SECRET, SimulatorState, SimUser, make_app
from onboard.tls import make_ssl_context

T = TypeVar("T")
GUEST_TEXT = "Temporary Access Pass cannot be added to an external guest user."
POLICY_TEXT = (
    "Converged UserCredentialPolicy does not allow creating or updating this authentication "
    "method. AuthMethodType [TemporaryAccessPass]."
)
LIFETIME_TEXT = "Invalid LifetimeInMinutes specified. The valid range between 60 and 480."
PAST_TEXT = "Invalid StartDateTime specified. It can not be a time in the past."
TAP_TYPE = "#microsoft.graph.temporaryAccessPassAuthenticationMethod"
TAIL = "authentication/temporaryAccessPassMethods"


def pass_request(user: str, *, start: dt.datetime | None = None, lifetime: int = 120,
                 once: bool = True, row: int = 2) -> PassRequest:  # fmt: skip
    return PassRequest(Origin("t.csv", row), user, None, start, lifetime, once)


def with_client(sim: Any, use: Callable[[GraphClient], Awaitable[T]], **options: Any) -> T:
    """Run `use` with the real Graph client against a served simulator."""

    async def main() -> T:
        context = make_ssl_context(sim.ca_file)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            tokens = provider(sim.url, sim.ca_file)
            return await use(GraphClient(session, sim.url, tokens, **options))

    return asyncio.run(main())


async def refusal(call: Awaitable[object]) -> GraphError:
    try:
        await call
    except GraphError as exc:
        return exc
    raise AssertionError("Graph did not refuse")


def raw(state: SimulatorState, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """One request to the simulator app as sent, with a token it issued (no client code)."""

    async def main() -> tuple[int, Any]:
        async with TestClient(TestServer(make_app(state))) as http:
            form = {"grant_type": "client_credentials", "client_id": "app",
                    "client_secret": DEFAULT_CLIENT_SECRET}  # fmt: skip
            token = (await (await http.post(f"/{TENANT}/oauth2/v2.0/token", data=form)).json())
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            answer = await http.request(method, path, json=body, headers=headers)
            return answer.status, await answer.json()

    return asyncio.run(main())


# --- 1. guests ------------------------------------------------------------------------------


def test_internal_guest_gets_a_pass_and_an_external_one_gets_graphs_refusal(
    serve_simulator,
) -> None:
    """An internal guest (userType Guest, never invited) gets a usable pass; an invited guest
    (creationType Invitation, no #EXT# in the UPN) gets Graph's documented 400, explained."""
    state = SimulatorState([
        SimUser("i-1", "intern@contoso.com", user_type="Guest"),
        SimUser("e-1", "visitor@contoso.com", user_type="Guest", creation_type="Invitation",
                external_user_state="PendingAcceptance"),
    ])  # fmt: skip
    sim = serve_simulator(state)

    async def both(client: GraphClient) -> tuple[CreatedPass, GraphError]:
        made = await client.create_pass(pass_request("intern@contoso.com"))
        return made, await refusal(client.create_pass(pass_request("visitor@contoso.com")))

    made, refused = with_client(sim, both)
    assert (made.usability, made.unusable) == ("EnabledByPolicy", False)
    assert made.value == state.current_pass("intern@contoso.com")
    assert (refused.status, refused.message) == (400, GUEST_TEXT)
    assert explain(refused, "visitor@contoso.com", 1)[0] == "External guest user"
    assert state.current_pass("visitor@contoso.com") is None


def test_lookup_refuses_only_external_guests(tmp_path: Path, serve_simulator, secret_env) -> None:
    """match_by mail: an internal guest is found and issued; a guest whose invitation is
    pending (externalUserState, no #EXT#) fails before any create."""
    state = SimulatorState([
        SimUser("i-1", "intern@contoso.com", user_type="Guest", mail="intern@contoso.com"),
        SimUser("e-1", "pending@contoso.com", user_type="Guest", mail="pending@fabrikam.com",
                external_user_state="PendingAcceptance"),
    ])  # fmt: skip
    sim = serve_simulator(state)
    path = tmp_path / "hires.csv"
    path.write_text(f"Email,Start Date\nintern@contoso.com,{SOON[0]}\n"
                    f"pending@fabrikam.com,{SOON[0]}\n", encoding="utf-8")  # fmt: skip
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "mail"})
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ROWS_FAILED
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [r["User"] for r in rows["Issued"]] == ["intern@contoso.com"]
    assert [(r["User"], r["Reason"]) for r in rows["Failed"]] == [
        ("pending@contoso.com", "External guest user")
    ]
    assert state.create_attempts.get("e-1") is None


# --- 2. a pass outside the policy's groups ----------------------------------------------------


def test_outside_the_policys_groups_graph_creates_a_pass_that_cannot_be_used(
    serve_simulator,
) -> None:
    """A user in a group the policy excludes gets a 201 saying isUsable false,
    DisabledByPolicy; only a policy turned off is refused, with Graph's documented text."""
    state = SimulatorState(
        [SimUser("c-1", "pat@contoso.com", groups=["contractors"]),
         SimUser("a-1", "ada@contoso.com")],
        policy={"excludeTargets": [{"targetType": "group", "id": "contractors"}]},
    )  # fmt: skip
    sim = serve_simulator(state)

    async def create(client: GraphClient) -> tuple[CreatedPass, CreatedPass, GraphError]:
        outside = await client.create_pass(pass_request("pat@contoso.com"))
        inside = await client.create_pass(pass_request("ada@contoso.com"))
        state.policy["state"] = "disabled"
        return outside, inside, await refusal(client.create_pass(pass_request("ada@contoso.com")))

    outside, inside, off = with_client(sim, create)
    assert (outside.usable, outside.usability) == (False, "DisabledByPolicy")
    assert (inside.usable, inside.usability) == (True, "EnabledByPolicy")
    assert (outside.unusable, inside.unusable) == (True, False)
    assert (off.status, off.message) == (400, POLICY_TEXT)
    assert explain(off, "ada@contoso.com", 1)[0] == "Outside the pass policy"


def test_an_unusable_pass_fails_its_row_keeping_its_method_id(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """A run: the row whose 201 says DisabledByPolicy fails with what to do and the pass's
    method id (its value is never kept); the other row is issued."""
    state = SimulatorState(users("ada@contoso.com", "pat@contoso.com",
                                 pat={"in_pass_policy": False}))  # fmt: skip
    sim = serve_simulator(state)
    path = tmp_path / "hires.csv"
    path.write_text(f"UPN,Start Date\nada@contoso.com,{SOON[0]}\npat@contoso.com,{SOON[0]}\n",
                    encoding="utf-8")  # fmt: skip
    config = load_config(sim.config(tmp_path / "c.yaml"), secret_env)
    report = asyncio.run(run_job(config, [path], env=secret_env))
    assert [i.request.user for i in report.issued] == ["ada@contoso.com"]
    (failed,) = report.failed
    held = state.passes[state.find_user("pat@contoso.com").id]  # type: ignore[union-attr]
    assert (failed.reason, failed.method_id, failed.http_status) == (
        "Outside the pass policy", held.id, 201)
    assert failed.detail.startswith(
        "Outside the pass policy's groups: the pass cannot be used.")
    assert "--reissue-user pat@contoso.com" in failed.detail and held.id in failed.detail
    assert held.value not in failed.detail and held.value not in repr(failed)
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [(r["User"], r["Reason"]) for r in rows["Failed"]] == [
        ("pat@contoso.com", "Outside the pass policy")
    ]
    assert all(held.value not in str(v) for r in rows["Failed"] for v in r.values())


def test_pool_fails_an_unusable_201_single_and_batched() -> None:
    """The pool: a created pass saying DisabledByPolicy, Expired or OneTimeUsed is a Failed
    row carrying its method id; NotYetValid is issued."""
    start = dt.datetime(2027, 1, 4, 8, tzinfo=dt.UTC)
    said = {"user2@contoso.com": "DisabledByPolicy", "user3@contoso.com": "OneTimeUsed",
            "user4@contoso.com": "NotYetValid"}  # fmt: skip

    def made(req: PassRequest) -> CreatedPass:
        reason = said[req.user]
        return CreatedPass("+Secret1", f"m-{req.origin.row}", start, start, 480, True, "req",
                           usable=False, usability=reason)  # fmt: skip

    async def create(req: PassRequest) -> CreatedPass:
        return made(req)

    async def create_batch(reqs: list[PassRequest]) -> list[CreatedPass | GraphError]:
        return [made(r) for r in reqs]

    requests = [pass_request(u, row=n + 2) for n, u in enumerate(said)]
    for kwargs in ({}, {"create_batch": create_batch, "batch_size": 3}):
        outcomes = {o.origin.row: o for o in run_pool(requests, create, **kwargs).outcomes}
        assert isinstance(outcomes[2], Failed) and isinstance(outcomes[3], Failed)
        assert (outcomes[2].reason, outcomes[2].method_id) == ("Outside the pass policy", "m-2")
        assert (outcomes[3].reason, outcomes[3].method_id) == ("Pass not usable", "m-3")
        assert "OneTimeUsed" in outcomes[3].detail
        assert isinstance(outcomes[4], Issued)


def test_is_usable_false_without_a_reason_is_judged_by_the_start() -> None:
    """isUsable false with no methodUsabilityReason: a pass that starts later is merely not
    yet valid (issued, in force); one that should be usable now is not."""
    created = dt.datetime(2027, 1, 4, 8, tzinfo=dt.UTC)
    later = created + dt.timedelta(days=3)

    def made(starts: dt.datetime) -> CreatedPass:
        return CreatedPass("+Secret1", "m", created, starts, 60, True, None, usable=False)

    assert (made(later).unusable, made(created).unusable) == (False, True)
    held = HeldPass("m", created, later, 60, None, usable=False)
    assert (held.in_force(created), held.in_force(later + dt.timedelta(minutes=1))) == (
        True, False)


# --- 3. reasons by status and code, documented texts only where the status is generic --------


@pytest.mark.parametrize(
    ("status", "code", "message", "reason"),
    [
        (400, "badRequest", LIFETIME_TEXT, "Lifetime outside the pass policy"),
        (400, "badRequest", PAST_TEXT, "Start in the past"),
        (400, "badRequest", GUEST_TEXT, "External guest user"),
        (403, "accessDenied", POLICY_TEXT, "Outside the pass policy"),
        (403, "accessDenied", f"{LIFETIME_TEXT} guest one-time", "Permission denied"),
        (404, "Request_ResourceNotFound", GUEST_TEXT, "User not found"),
        (409, "conflict", POLICY_TEXT, "A pass already exists"),
        (400, "badRequest", "A guest may not get a one-time isUsableOnce pass", "Refused by Graph"),
        (422, None, "Converged UserCredentialPolicy, StartDateTime", "Refused by Graph"),
    ],
)
def test_explain_branches_on_status_and_reads_only_documented_texts(
    status: int, code: str | None, message: str, reason: str
) -> None:
    """Status first; a documented text picks the advice only for Graph's generic refusals;
    anything else is "Refused by Graph" with Graph's own message."""
    error = GraphError(message, status=status, code=code)
    got, detail = explain(error, "ada@contoso.com", 1)
    assert got == reason
    if reason == "Refused by Graph":
        assert detail.startswith(f"Refused by Graph: {message} (HTTP {status}")


def test_simulator_refuses_with_the_documented_texts(serve_simulator) -> None:
    """A lifetime outside 60..480 and a start in the past get Graph's words, exactly."""
    state = SimulatorState(users("ada@contoso.com"))
    sim = serve_simulator(state)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)

    async def refused(client: GraphClient) -> list[tuple[int | None, str, str]]:
        answers = []
        for req in (pass_request("ada@contoso.com", lifetime=1440),
                    pass_request("ada@contoso.com", start=past)):  # fmt: skip
            error = await refusal(client.create_pass(req))
            answers.append((error.status, error.message, explain(error, req.user, 1)[0]))
        return answers

    # The client's clock runs a day late, so it sends the past start rather than "at once".
    late = past - dt.timedelta(hours=1)
    assert with_client(sim, refused, now=lambda: late) == [
        (400, LIFETIME_TEXT, "Lifetime outside the pass policy"),
        (400, PAST_TEXT, "Start in the past"),
    ]


# --- 4. the simulator answers as the service does ----------------------------------------------


def test_created_and_listed_passes_carry_odata_type_and_the_versions_context() -> None:
    """@odata.type on the pass, in the 201 and in the listing; @odata.context names the
    version asked for (beta as well as v1.0); the listing never shows the value."""
    state = SimulatorState(users("ada@contoso.com"))
    for version in ("v1.0", "beta"):
        status, made = raw(state, "POST", f"/{version}/users/ada@contoso.com/{TAIL}", {})
        assert status == 201 and made["@odata.type"] == TAP_TYPE
        assert f"/{version}/$metadata#users('" in made["@odata.context"]
        assert made["@odata.context"].endswith(f"/{TAIL}/$entity")
        status, listed = raw(state, "GET", f"/{version}/users/ada@contoso.com/{TAIL}")
        assert status == 200 and f"/{version}/$metadata#users('" in listed["@odata.context"]
        (item,) = listed["value"]
        assert (item["@odata.type"], item["id"], item["temporaryAccessPass"]) == (
            TAP_TYPE, made["id"], None)


def test_a_start_without_an_offset_is_read_as_utc() -> None:
    """As Microsoft's PowerShell example sends it ('2022-05-23 06:00:00'): a pass starting
    then, UTC, not yet valid; a value that is no date at all is OData's 400."""
    state = SimulatorState(users("ada@contoso.com"))
    year = dt.date.today().year + 1
    status, made = raw(state, "POST", f"/v1.0/users/ada@contoso.com/{TAIL}",
                       {"startDateTime": f"{year}-05-23 06:00:00", "isUsableOnce": True})
    assert status == 201, made
    assert made["startDateTime"].startswith(f"{year}-05-23T06:00:00")
    assert made["startDateTime"].endswith("Z")
    assert (made["isUsable"], made["methodUsabilityReason"]) == (False, "NotYetValid")
    status, refused = raw(state, "POST", f"/v1.0/users/ada@contoso.com/{TAIL}",
                          {"startDateTime": "next Monday"})
    assert status == 400
    assert refused["error"]["message"] == (
        "Cannot convert the literal 'next Monday' to the expected type 'Edm.DateTimeOffset'.")


def test_listings_show_every_usability_reason(serve_simulator) -> None:
    """The client reads each state the service lists: EnabledByPolicy and NotYetValid are in
    force; Expired, OneTimeUsed (after a sign-in with a one-time pass) and DisabledByPolicy
    are not."""
    now = dt.datetime.now(dt.UTC)
    state = SimulatorState(users("on@contoso.com", "later@contoso.com", "old@contoso.com",
                                 "used@contoso.com", "out@contoso.com",
                                 out={"in_pass_policy": False}))  # fmt: skip
    state.give_pass("on@contoso.com", start=now - dt.timedelta(minutes=5))
    state.give_pass("later@contoso.com", start=now + dt.timedelta(days=2))
    state.give_pass("old@contoso.com", start=now - dt.timedelta(days=2), lifetime_minutes=60)
    state.give_pass("used@contoso.com", start=now - dt.timedelta(minutes=5))
    state.give_pass("out@contoso.com", start=now - dt.timedelta(minutes=5))
    assert state.sign_in_with("used@contoso.com", "wrong") is False
    assert state.sign_in_with("used@contoso.com") is True
    assert state.sign_in_with("used@contoso.com") is False  # one-time: used up
    assert state.sign_in_with("out@contoso.com") is False  # outside the policy
    sim = serve_simulator(state)
    names = ["on", "later", "old", "used", "out"]

    async def listed(client: GraphClient) -> list[HeldPass | None]:
        return [await client.current_pass(f"{n}@contoso.com") for n in names]

    held = with_client(sim, listed)
    assert [(h.usability, h.usable, h.in_force(now)) for h in held if h is not None] == [
        ("EnabledByPolicy", True, True),
        ("NotYetValid", False, True),
        ("Expired", False, False),
        ("OneTimeUsed", False, False),
        ("DisabledByPolicy", False, False),
    ]


def test_a_used_one_time_pass_is_replaced_not_kept(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """pass.existing skip keeps a pass that may have been handed out, but not one already used
    up (OneTimeUsed): the row is issued a new pass."""
    state = SimulatorState(users("ada@contoso.com", "bo@contoso.com"))
    now = dt.datetime.now(dt.UTC)
    for user in ("ada@contoso.com", "bo@contoso.com"):
        state.give_pass(user, start=now - dt.timedelta(minutes=5), lifetime_minutes=43_200)
    assert state.sign_in_with("ada@contoso.com")
    sim = serve_simulator(state)
    start = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    path = tmp_path / "hires.csv"
    path.write_text(f"UPN,Start Date\nada@contoso.com,{start}\nbo@contoso.com,{start}\n",
                    encoding="utf-8")  # fmt: skip
    # Exit 1: bo's pass, kept, is one this journal did not issue (never counted a success).
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [r["User"] for r in rows["Issued"]] == ["ada@contoso.com"]
    assert rows["Issued"][0]["Temporary Access Pass"] == state.current_pass("ada@contoso.com")
    assert [r["User"] for r in rows["Skipped"]] == ["bo@contoso.com"]
    assert state.current_pass("bo@contoso.com") == "handed-out"


# --- 5. users('$...'): an OData literal ------------------------------------------------------


def test_dollar_upn_with_an_apostrophe_is_an_odata_literal() -> None:
    """OData doubles an apostrophe inside users('...'); percent-encoding it is not escaping."""
    assert user_path("$o'neil@contoso.com") == "users('%24o''neil@contoso.com')"
    assert user_path("$a')b@contoso.com") == "users('%24a''%29b@contoso.com')"


@pytest.mark.parametrize("upn", ["$o'neil@contoso.com", "$a')b@contoso.com", "$x''@contoso.com"])
def test_simulator_reads_users_literals_as_odata_does(upn: str) -> None:
    """The simulator unescapes '' in users('...') (after percent-decoding), so the pass lands
    on the user the client named; a single stray apostrophe is not a user."""
    state = SimulatorState(users(upn))
    status, made = raw(state, "POST", f"/v1.0/{user_path(upn)}/{TAIL}", {})
    assert status == 201, made
    assert state.current_pass(upn) == made["temporaryAccessPass"]
    literal = upn.replace("'", "''")
    status, _ = raw(state, "GET", f"/v1.0/users('{literal}')/{TAIL}")
    assert status == 200
    status, _ = raw(state, "GET", f"/v1.0/users('{upn}')/{TAIL}")
    assert status in (400, 404)


def test_dollar_upn_with_an_apostrophe_gets_a_pass_singly_and_in_a_batch(
    serve_simulator,
) -> None:
    """The real client, one request and a $batch, for $o'neil@contoso.com."""
    upn = "$o'neil@contoso.com"
    state = SimulatorState(users(upn))
    sim = serve_simulator(state)

    async def both(client: GraphClient) -> list[str]:
        one = await client.create_pass(pass_request(upn))
        (batched,) = await client.create_passes([pass_request(upn)])
        assert isinstance(batched, CreatedPass), batched
        return [one.value, batched.value]

    values = with_client(sim, both)
    assert state.passes_created_for(upn) == 2
    assert values[1] == state.current_pass(upn)


def test_once_the_user_is_in_the_policy_the_unusable_pass_is_replaced_not_held(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """The pass made while the user was outside the policy's groups becomes usable once they
    are added, but its value was never kept: the next run replaces it (a note says why), and
    never calls it a pass this journal did not issue."""
    state = SimulatorState(users("pat@contoso.com", pat={"in_pass_policy": False}))
    sim = serve_simulator(state)
    path = tmp_path / "hires.csv"
    path.write_text(f"UPN,Start Date\npat@contoso.com,{SOON[0]}\n", encoding="utf-8")
    config = load_config(sim.config(tmp_path / "c.yaml"), secret_env)
    first = asyncio.run(run_job(config, [path], env=secret_env))
    (failed,) = first.failed
    pat = state.find_user("pat@contoso.com")
    assert pat is not None
    pat.in_pass_policy = True  # the admin adds pat's group to the policy's targets
    second = asyncio.run(run_job(config, [path], env=secret_env))
    assert second.held_elsewhere == []
    (issued,) = second.issued
    assert "created while it could not be used" in issued.note
    assert issued.method_id != failed.method_id
    assert issued.temporary_access_pass == state.current_pass("pat@contoso.com")
