"""The sheet is an attack path: users who hold an admin role, or already sign in with strong
methods, get no pass from it unless an admin says so on purpose."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import read_audit, users

from onboard.cli import EXIT_ABORTED, EXIT_BAD_INPUT, EXIT_OK, EXIT_ROWS_FAILED, main
from onboard.simulator import SimulatorState

SOON = (date.today() + timedelta(days=5)).isoformat()


def sheet(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "hires.csv"
    path.write_text("UPN,Start Date\n" + "".join(f"{u},{SOON}\n" for u in names), "utf-8")
    return path


def tenant() -> SimulatorState:
    return SimulatorState(
        users(
            "new@contoso.com", "boss@contoso.com", "phone@contoso.com", "mailonly@contoso.com",
            boss={"roles": ["Global Administrator"]},
            phone={"methods": ["microsoftAuthenticator", "fido2"]},
            mailonly={"methods": ["email"]},
        )
    )  # fmt: skip


def creates(state: SimulatorState, upn: str) -> int:
    found = state.find_user(upn)
    assert found is not None
    return state.create_attempts.get(found.id, 0)


def audit_in(tmp_path: Path) -> dict[str, list[dict[str, object]]]:
    (path,) = (tmp_path / "audit").glob("onboard-*.xlsx")
    return read_audit(path)


def test_admins_and_people_who_already_sign_in_get_no_pass(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """A Global Administrator and a user with Authenticator and a FIDO2 key are refused before
    any create, saying why and how to make an exception; an email method does not count."""
    state = tenant()
    sim = serve_simulator(state)
    path = sheet(tmp_path, "new@contoso.com", "boss@contoso.com", "phone@contoso.com",
                 "mailonly@contoso.com")  # fmt: skip
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    sheets = audit_in(tmp_path)
    issued = sorted(r["User"] for r in sheets["Issued"])
    assert issued == ["mailonly@contoso.com", "new@contoso.com"]
    failed = {r["User"]: r for r in sheets["Failed"]}
    assert failed["boss@contoso.com"]["Reason"] == "Holds an admin role"
    assert "Global Administrator" in str(failed["boss@contoso.com"]["Detail"])
    assert "--allow-user boss@contoso.com" in str(failed["boss@contoso.com"]["Detail"])
    assert failed["phone@contoso.com"]["Reason"] == "Already has sign-in methods"
    detail = str(failed["phone@contoso.com"]["Detail"])
    assert "Microsoft Authenticator" in detail and "FIDO2" in detail
    assert creates(state, "boss@contoso.com") == creates(state, "phone@contoso.com") == 0
    summary = {r["Item"]: r["Value"] for r in sheets["Summary"]}
    assert str(summary["Admin roles"]).startswith("checked")


def test_allow_user_lets_a_deliberate_exception_through_recorded_in_the_audit(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """--allow-user: the admin's pass is issued, and the audit's note says it was on purpose
    and what the check found."""
    state = tenant()
    sim = serve_simulator(state)
    path = sheet(tmp_path, "boss@contoso.com")
    config = str(sim.config(tmp_path / "c.yaml"))
    assert main(["run", str(path), "-c", config, "--allow-user", "BOSS@contoso.com"]) == EXIT_OK
    (issued,) = audit_in(tmp_path)["Issued"]
    assert "issued on purpose (--allow-user)" in str(issued["Note"])
    assert "Global Administrator" in str(issued["Note"])


def test_allow_user_naming_nobody_is_a_typo_caught_before_anything_is_sent(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --allow-user that is in no row stops the run (exit 2), nothing sent."""
    state = tenant()
    sim = serve_simulator(state)
    path = sheet(tmp_path, "new@contoso.com")
    args = ["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml")), "--allow-user", "x@y.z"]
    assert main(args) == EXIT_BAD_INPUT
    assert "--allow-user names no row of the input: x@y.z" in capsys.readouterr().err
    assert state.issued == []


def test_without_permission_to_read_roles_the_run_says_once_what_it_could_not_check(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """403 on roles and on methods: one warning each, the Summary says so, the rows go on,
    and the run exits 1 (so cron's mail goes out) naming the permissions to grant."""
    state = tenant()
    state.roles_forbidden = state.methods_forbidden = True
    sim = serve_simulator(state)
    path = sheet(tmp_path, "new@contoso.com", "boss@contoso.com")
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    out, err = capsys.readouterr()
    assert "needs attention: users' admin roles were not checked: grant the app" in out
    assert err.count("cannot read users' directory roles") == 1
    assert err.count("cannot list users' authentication methods") == 1
    summary = {r["Item"]: r["Value"] for r in audit_in(tmp_path)["Summary"]}
    assert summary["Admin roles"] == (
        "not checked: the app lacks RoleManagement.Read.Directory (or Directory.Read.All)"
    )
    assert summary["Sign-in methods"] == (
        "not checked: the app lacks UserAuthenticationMethod.Read.All"
    )


def test_the_check_can_be_turned_off_in_the_config(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """pass.allow_existing_accounts: true issues for everybody, and the Summary says the check
    was off."""
    state = tenant()
    sim = serve_simulator(state)
    path = sheet(tmp_path, "boss@contoso.com", "phone@contoso.com")
    allow = {"timezone": "UTC", "allow_existing_accounts": True}
    config = sim.config(tmp_path / "c.yaml", **{"pass": allow})
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    sheets = audit_in(tmp_path)
    assert len(sheets["Issued"]) == 2
    summary = {r["Item"]: r["Value"] for r in sheets["Summary"]}
    assert summary["Existing accounts"] == "not checked (pass.allow_existing_accounts: true)"


def test_validate_online_lists_admins_and_existing_accounts_as_problems(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate --online makes the same check, reading only."""
    state = tenant()
    sim = serve_simulator(state)
    path = sheet(tmp_path, "new@contoso.com", "boss@contoso.com", "phone@contoso.com")
    config = str(sim.config(tmp_path / "c.yaml"))
    args = ["validate", str(path), "-c", config, "--online", "--out", str(tmp_path / "v")]
    assert main(args) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    assert "Holds an admin role" in out and "Already has sign-in methods" in out
    assert "1 row ready to send, 2 with problems" in out
    assert state.issued == []


def test_a_run_with_nothing_due_still_signs_in_and_a_bad_secret_is_exit_3(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day when nothing is due: the run still signs in (one token request), so an expired
    secret is exit 3 from cron at once, not weeks later."""
    state = tenant()
    sim = serve_simulator(state)
    far = (date.today() + timedelta(days=60)).isoformat()
    path = tmp_path / "hires.csv"
    path.write_text(f"UPN,Start Date\nnew@contoso.com,{far}\n", "utf-8")
    config = str(sim.config(tmp_path / "c.yaml"))
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", "simulator-secret")
    assert main(["run", str(path), "-c", config, "--due-within", "7"]) == EXIT_OK
    assert state.counts["token_requests"] == 1
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", "expired")
    assert main(["run", str(path), "-c", config, "--due-within", "7"]) == EXIT_ABORTED


def test_any_method_but_password_email_and_the_pass_counts_as_signing_in(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """A hardware OATH token or a smart-card certificate shows an account in use as much as
    Authenticator does; the list is not only the usual few."""
    state = SimulatorState(users("hw@contoso.com", "card@contoso.com",
                                 hw={"methods": ["hardwareOath"]},
                                 card={"methods": ["x509Certificate"]}))  # fmt: skip
    sim = serve_simulator(state)
    path = sheet(tmp_path, "hw@contoso.com", "card@contoso.com")
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    failed = {r["User"]: r for r in audit_in(tmp_path)["Failed"]}
    assert failed["hw@contoso.com"]["Reason"] == "Already has sign-in methods"
    assert "hardware OATH token" in str(failed["hw@contoso.com"]["Detail"])
    assert "certificate (smart card)" in str(failed["card@contoso.com"]["Detail"])


def test_a_row_sent_again_after_a_check_is_screened_too(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """A user issued a pass earlier, whose pass Graph no longer holds after a request of
    unknown fate, has since become a Global Administrator: the row is sent again only after
    the account check, which refuses it (never a pass for an admin on that path)."""
    import sqlite3

    state = tenant()
    sim = serve_simulator(state)
    config = str(sim.config(tmp_path / "c.yaml"))
    path = sheet(tmp_path, "new@contoso.com")
    assert main(["run", str(path), "-c", config]) == EXIT_OK
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as db:
        # as a later run left it: a request for this user whose answer was lost
        db.execute("INSERT INTO runs (run_id, started, status, input_key, meta, tenant) "
                   "SELECT 'later', started, 'completed', 'k', '{}', tenant FROM runs")  # fmt: skip
        db.execute("INSERT INTO rows (run_id, source, row, user_key, state, may_have_pass, "
                   "updated, tenant, seq) SELECT 'later', source, row, user_key, 'interrupted', "
                   "1, updated, tenant, 99 FROM rows")  # fmt: skip
    state.passes.clear()  # the lost request's pass, if any, is gone too
    new = state.find_user("new@contoso.com")
    assert new is not None
    new.roles = ["Global Administrator"]
    assert main(["run", str(path), "-c", config]) == 1
    failed = {r["User"]: r["Reason"] for r in audit_of_latest(tmp_path)["Failed"]}
    assert failed == {"new@contoso.com": "Holds an admin role"}
    assert state.passes_created_for("new@contoso.com") == 1  # only the first run's


def audit_of_latest(tmp_path: Path) -> dict[str, list[dict[str, object]]]:
    latest = max((tmp_path / "audit").glob("onboard-*.xlsx"), key=lambda p: p.stat().st_mtime)
    return read_audit(latest)


def test_a_refusal_to_show_one_users_roles_fails_that_row(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """Graph shows every user's roles but one's (403): that is about the user, not a missing
    permission; the row fails "Could not check the account" (never issued unchecked)."""
    state = tenant()
    boss = state.find_user("boss@contoso.com")
    assert boss is not None
    state.roles_forbidden_for.add(boss.id)
    sim = serve_simulator(state)
    path = sheet(tmp_path, "new@contoso.com", "boss@contoso.com")
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    failed = {r["User"]: r["Reason"] for r in audit_in(tmp_path)["Failed"]}
    assert failed == {"boss@contoso.com": "Could not check the account"}
    assert state.passes_created_for("boss@contoso.com") == 0
