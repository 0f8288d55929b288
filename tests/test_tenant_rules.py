"""The tenant's rules, against the simulator: people found by mail or employee id, guests, the
pass policy read before anything is created, passes that already exist, and a 409."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from conftest import (
    SOON,
    audit_path_from,
    audit_rows,
    kill_after_creates,
    latest_audit,
    read_audit,
    users,
)
from openpyxl import Workbook

from onboard.checks import on_conflict
from onboard.cli import EXIT_ABORTED, EXIT_OK, EXIT_ROWS_FAILED, main
from onboard.outcomes import Failed, Origin, PassRequest, Reason, Skipped
from onboard.simulator import Faults, SimulatorState, SimUser

GUEST_UPN = "guest_fabrikam.com#EXT#@contoso.onmicrosoft.com"


def write(tmp_path: Path, *lines: str, name: str = "hires.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def creates(state: SimulatorState, upn: str) -> int:
    found = state.find_user(upn)
    return 0 if found is None else state.create_attempts.get(found.id, 0)


def test_people_found_by_mail(tmp_path: Path, serve_simulator, secret_env) -> None:
    """match_by mail: one lookup for five addresses; the audit shows what HR wrote and the UPN
    found; no match, two matches and a guest fail before any create; two addresses of one
    person are one pass."""
    state = SimulatorState([
        *users("ada@contoso.com", "bo@contoso.com", "twin1@contoso.com", "twin2@contoso.com",
               ada={"mail": "a.lovelace@contoso.com"}, bo={"mail": "bo@contoso.com"},
               twin1={"mail": "shared@contoso.com"}, twin2={"mail": "shared@contoso.com"}),
        SimUser("guest-id", GUEST_UPN, user_type="Guest", mail="guest@fabrikam.com",
                creation_type="Invitation", external_user_state="Accepted"),
    ])  # fmt: skip
    sim = serve_simulator(state)
    path = write(
        tmp_path, "Name,Email,Start Date",
        f"Ada,A.Lovelace@contoso.com,{SOON[0]}", f"Bo,bo@contoso.com,{SOON[0]}",
        f"Twin,shared@contoso.com,{SOON[0]}", f"Guest,guest@fabrikam.com,{SOON[0]}",
        f"Nobody,nobody@contoso.com,{SOON[0]}", f"Bo again,BO@CONTOSO.COM,{SOON[0]}",
    )  # fmt: skip
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "mail"})
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ROWS_FAILED
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [(r["Row"], r["User"], r["Found by (sheet value)"]) for r in rows["Issued"]] == [
        (2, "ada@contoso.com", "A.Lovelace@contoso.com"),
        (3, "bo@contoso.com", "bo@contoso.com"),
    ]
    failed = {r["Row"]: r for r in rows["Failed"]}
    assert {row: r["Reason"] for row, r in failed.items()} == {
        4: "Several users with this mail",
        5: "External guest user",
        6: "No user with this mail",
    }
    assert "twin1@contoso.com, twin2@contoso.com" in str(failed[4]["Detail"])
    assert "cannot be added to an external guest user" in str(failed[5]["Detail"])
    assert [(r["Row"], r["Reason"]) for r in rows["Skipped"]] == [(7, "same as row 3")]
    assert state.counts["user_lookups"] == 1
    assert [creates(state, u) for u in ("twin1@contoso.com", GUEST_UPN)] == [0, 0]
    for row in rows["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))


def test_people_found_by_employee_id_in_batches_of_15(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """match_by employeeId from number cells: 40 people take 3 lookups (Graph's 15-value
    limit for `in`); an id nobody has fails."""
    names = [f"hire{n}@contoso.com" for n in range(40)]
    flags = {f"hire{n}": {"employee_id": str(1000 + n)} for n in range(40)}
    state = SimulatorState(users(*names, **flags))
    sim = serve_simulator(state)
    book = Workbook()
    sheet = book.active
    sheet.append(["Employee ID", "Start Date"])
    for n in range(41):
        sheet.append([1000 + n, dt.date.fromisoformat(SOON[0])])
    book.save(tmp_path / "hires.xlsx")
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "employeeId"})
    assert main(["run", str(tmp_path / "hires.xlsx"), "-c", str(config)]) == EXIT_ROWS_FAILED
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert sorted(str(r["User"]) for r in rows["Issued"]) == sorted(names)
    assert {r["Found by (sheet value)"] for r in rows["Issued"]} == {
        str(1000 + n) for n in range(40)
    }
    assert [(r["Row"], r["User"], r["Reason"]) for r in rows["Failed"]] == [
        (42, "1040", "No user with this employee id")
    ]
    assert state.counts["user_lookups"] == 3


def test_external_guests_fail_and_internal_guests_get_a_pass(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """An #EXT# UPN fails in the reader; an invited guest without #EXT# gets Microsoft's
    refusal, translated, and no pass; an internal guest (userType Guest, never invited) gets
    a pass, as Graph allows."""
    state = SimulatorState(users(
        "ada@contoso.com", "visitor@contoso.com", "intern@contoso.com",
        visitor={"user_type": "Guest", "creation_type": "Invitation",
                 "external_user_state": "Accepted"},
        intern={"user_type": "Guest"},
    ))  # fmt: skip
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date", f"ada@contoso.com,{SOON[0]}",
                 f"{GUEST_UPN},{SOON[0]}", f"visitor@contoso.com,{SOON[0]}",
                 f"intern@contoso.com,{SOON[0]}")  # fmt: skip
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [(r["Row"], r["Reason"]) for r in rows["Failed"]] == [
        (3, "External guest user"),
        (4, "External guest user"),
    ]
    assert str(rows["Failed"][1]["Detail"]).startswith(
        "Temporary Access Pass cannot be added to an external guest user. Guests sign in"
    )
    assert state.current_pass("visitor@contoso.com") is None
    assert [r["User"] for r in rows["Issued"]] == ["ada@contoso.com", "intern@contoso.com"]
    assert rows["Issued"][1]["Temporary Access Pass"] == state.current_pass("intern@contoso.com")


def test_policy_turned_off_stops_before_the_first_create(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3 with where to turn it on; nothing created; once it is on, the same command runs."""
    state = SimulatorState(users("ada@contoso.com"), policy={"state": "disabled"})
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date", f"ada@contoso.com,{SOON[0]}")
    config = sim.config(tmp_path / "c.yaml")
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ABORTED
    err = capsys.readouterr().err
    assert "Temporary Access Pass policy is turned off" in err
    assert "Authentication methods > Policies > Temporary Access Pass" in err
    assert state.issued == [] and not state.create_attempts
    state.policy["state"] = "enabled"
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    assert state.current_pass("ada@contoso.com") is not None


def test_rows_outside_the_policy_fail_before_sending(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """Policy 60..240 minutes, one-time only: a 480-minute row and a multi-use row fail naming
    the policy, and are never sent; the others are issued."""
    state = SimulatorState(
        users("ada@contoso.com", "bo@contoso.com", "cy@contoso.com"),
        policy={"minimumLifetimeInMinutes": 60, "maximumLifetimeInMinutes": 240,
                "isUsableOnce": True},
    )  # fmt: skip
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date,Lifetime,One-time",
                 f"ada@contoso.com,{SOON[0]},120,yes", f"bo@contoso.com,{SOON[0]},480,yes",
                 f"cy@contoso.com,{SOON[0]},120,no")  # fmt: skip
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [r["User"] for r in rows["Issued"]] == ["ada@contoso.com"]
    failed = {r["User"]: r for r in rows["Failed"]}
    assert failed["bo@contoso.com"]["Reason"] == "Lifetime outside the pass policy"
    assert "allows 60..240 minutes" in str(failed["bo@contoso.com"]["Detail"])
    assert failed["cy@contoso.com"]["Reason"] == "Multi-use pass refused by the pass policy"
    assert creates(state, "bo@contoso.com") == creates(state, "cy@contoso.com") == 0
    summary = {
        r[0].value: r[1].value
        for r in __import__("openpyxl").load_workbook(latest_audit(tmp_path / "audit"))["Summary"]
    }
    assert summary["Pass policy"] == "enabled; lifetime 60..240 minutes; one-time only: yes"


def test_policy_not_readable_warns_and_relies_on_graph(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without Policy.Read.AuthenticationMethod: a warning, the rows are sent, and Graph's own
    refusal of a lifetime is what the row shows."""
    state = SimulatorState(users("ada@contoso.com", "bo@contoso.com"))
    state.policy_forbidden = True
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date,Lifetime", f"ada@contoso.com,{SOON[0]},120",
                 f"bo@contoso.com,{SOON[0]},1440")  # fmt: skip
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    assert "lacks Policy.Read.AuthenticationMethod" in capsys.readouterr().err
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [r["User"] for r in rows["Issued"]] == ["ada@contoso.com"]
    assert [(r["User"], r["Reason"]) for r in rows["Failed"]] == [
        ("bo@contoso.com", "Lifetime outside the pass policy")
    ]
    assert creates(state, "bo@contoso.com") == 1


def test_existing_passes_are_kept_by_default(tmp_path: Path, serve_simulator, secret_env) -> None:
    """pass.existing skip (the default): a usable pass and a not-yet-valid one are kept (the
    rows skipped with when they were created and start); an expired one is replaced; then
    --reissue-user replaces a kept one on purpose."""
    state = SimulatorState(users("ada@contoso.com", "bo@contoso.com", "cy@contoso.com",
                                 "di@contoso.com"))  # fmt: skip
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    month = 43_200  # minutes: the longest pass, still valid when the hires start
    state.give_pass("ada@contoso.com", created=now - dt.timedelta(hours=1),
                    start=now - dt.timedelta(hours=1), lifetime_minutes=month)  # fmt: skip
    state.give_pass("bo@contoso.com", start=now + dt.timedelta(days=3), lifetime_minutes=month)
    state.give_pass("cy@contoso.com", start=now - dt.timedelta(days=2), lifetime_minutes=60)
    sim = serve_simulator(state)
    start = (dt.date.today() + dt.timedelta(days=10)).isoformat()  # within both passes
    path = write(tmp_path, "UPN,Start Date",
                 *(f"{u}@contoso.com,{start}" for u in ("ada", "bo", "cy", "di")))  # fmt: skip
    config = sim.config(tmp_path / "c.yaml")
    # Nobody here can vouch those passes were handed out: not a success (exit 1).
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ROWS_FAILED
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert sorted(str(r["User"]) for r in rows["Issued"]) == ["cy@contoso.com", "di@contoso.com"]
    skipped = {r["User"]: r for r in rows["Skipped"]}
    assert set(skipped) == {"ada@contoso.com", "bo@contoso.com"}
    ada = str(skipped["ada@contoso.com"]["Reason"])
    assert ada.startswith(
        f"holds a pass created {now - dt.timedelta(hours=1):%Y-%m-%d %H:%M} UTC that this "
        "journal did not issue (usable now, ends "
    )
    assert "(not yet valid, " in str(skipped["bo@contoso.com"]["Reason"])
    assert skipped["ada@contoso.com"]["Issued at"] == (now - dt.timedelta(hours=1)).replace(
        tzinfo=None
    )
    assert state.current_pass("ada@contoso.com") == "handed-out"
    assert state.current_pass("bo@contoso.com") == "handed-out"
    for folder in (tmp_path / "audit",):
        for old in folder.glob("*.xlsx"):
            old.unlink()
    args = ["run", str(path), "-c", str(config), "--reissue-user", "ada@contoso.com"]
    assert main(args) == EXIT_ROWS_FAILED  # bo's pass is still one nobody here issued
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    issued = {r["User"]: r for r in rows["Issued"]}
    assert (
        issued["ada@contoso.com"]["Temporary Access Pass"]
        == state.current_pass("ada@contoso.com")
        != "handed-out"
    )
    assert state.current_pass("bo@contoso.com") == "handed-out"


def test_existing_replace_issues_over_a_usable_pass(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """pass.existing replace: no listing, the new pass replaces the one held."""
    state = SimulatorState(users("ada@contoso.com"))
    state.give_pass("ada@contoso.com")
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date", f"ada@contoso.com,{SOON[0]}")
    config = sim.config(tmp_path / "c.yaml", **{"pass": {"existing": "replace",
                                                          "timezone": "UTC"}})  # fmt: skip
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    (row,) = audit_rows(latest_audit(tmp_path / "audit"))["Issued"]
    assert row["Temporary Access Pass"] == state.current_pass("ada@contoso.com") != "handed-out"


def test_a_409_is_a_pass_that_exists_never_a_crash(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """A tenant answering 409 while a pass exists (older behaviour): with replace the row fails
    saying how to clear it; the run finishes, and the other rows are issued."""
    state = SimulatorState(users("ada@contoso.com", "bo@contoso.com"),
                           faults=Faults(conflict_on_existing=True))  # fmt: skip
    state.give_pass("ada@contoso.com")
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date", f"ada@contoso.com,{SOON[0]}",
                 f"bo@contoso.com,{SOON[0]}")  # fmt: skip
    config = sim.config(tmp_path / "c.yaml", **{"pass": {"existing": "replace",
                                                          "timezone": "UTC"}})  # fmt: skip
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ROWS_FAILED
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert [(r["User"], r["Reason"], r["HTTP status"]) for r in rows["Failed"]] == [
        ("ada@contoso.com", "A pass already exists", 409)
    ]
    assert [r["User"] for r in rows["Issued"]] == ["bo@contoso.com"]
    assert state.current_pass("ada@contoso.com") == "handed-out"


def test_a_409_for_a_row_checked_under_skip_is_skipped() -> None:
    """Under skip, a pass that appeared after the listing (a 409 at create) is kept: skipped;
    a row meant to replace (--reissue-user) still fails."""
    origin = Origin("a.csv", 2)
    refused = Failed(origin, "ada@contoso.com", Reason.PASS_EXISTS, "...", http_status=409)
    checked = PassRequest(origin, "ada@contoso.com", None, None, 60, True, ask_existing=True)
    kept = on_conflict(refused, checked)
    assert isinstance(kept, Skipped) and "409 conflict" in kept.detail
    assert (
        on_conflict(refused, PassRequest(origin, "ada@contoso.com", None, None, 60, True))
        is refused
    )
    other = Failed(origin, "ada@contoso.com", Reason.USER_NOT_FOUND, "...", http_status=404)
    assert on_conflict(other, checked) is other


def test_validate_online_checks_policy_and_people_and_sends_nothing(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate --online: the policy is read, every user is looked up (by UPN, or by object
    id); unknown users, guests and out-of-policy rows are problems; nothing is created."""
    state = SimulatorState(users("ada@contoso.com", "visitor@contoso.com", "bo@contoso.com",
                                 "intern@contoso.com",
                                 visitor={"user_type": "Guest", "creation_type": "Invitation"},
                                 intern={"user_type": "Guest"}),
                           policy={"maximumLifetimeInMinutes": 240})  # fmt: skip
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date,Lifetime", f"ada@contoso.com,{SOON[0]},120",
                 f"visitor@contoso.com,{SOON[0]},120", f"ghost@contoso.com,{SOON[0]},120",
                 f"bo@contoso.com,{SOON[0]},480", f"intern@contoso.com,{SOON[0]},120")  # fmt: skip
    config = sim.config(tmp_path / "c.yaml")
    args = ["validate", str(path), "-c", str(config), "--online", "--out", str(tmp_path / "v")]
    assert main(args) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    assert "pass policy: enabled; lifetime 60..240 minutes" in out
    problems = [line.split()[1:] for line in out.splitlines() if line.startswith("hires.csv")]
    assert problems == [
        ["3", "UPN", "visitor@contoso.com", "External", "guest", "user"],
        ["4", "UPN", "ghost@contoso.com", "User", "not", "found"],
        ["5", "Lifetime", "bo@contoso.com", "Lifetime", "outside", "the", "pass", "policy"],
    ]
    assert "2 rows ready to send, 3 with problems, 0 to skip" in out
    assert state.issued == [] and not state.create_attempts
    by_id = write(tmp_path, "UPN,Start Date,Lifetime",
                  f"00000000-0000-0000-0000-000000000000,{SOON[0]},60",
                  f"00000000-0000-0000-0000-0000000000ff,{SOON[0]},60", name="ids.csv")  # fmt: skip
    assert main(["validate", str(by_id), *args[2:]]) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("ids.csv")] == ["3"]
    state.policy["state"] = "disabled"
    assert main(args) == EXIT_ROWS_FAILED
    assert "Pass policy turned off" in capsys.readouterr().out
    assert state.issued == [] and not state.create_attempts


def test_reissue_user_names_people_as_the_sheet_does_under_match_by_mail(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """Found by mail, a user is re-issued by the address the sheet has (not only by UPN)."""
    flags = {"ada": {"mail": "a.lovelace@contoso.com"}, "bo": {"mail": "bo@x.com"}}
    state = SimulatorState(users("ada@contoso.com", "bo@contoso.com", **flags))
    sim = serve_simulator(state)
    path = write(tmp_path, "Email,Start Date", f"a.lovelace@contoso.com,{SOON[0]}",
                 f"bo@x.com,{SOON[0]}")  # fmt: skip
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "mail"})
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    first = state.current_pass("ada@contoso.com"), state.current_pass("bo@contoso.com")
    args = ["run", str(path), "-c", str(config), "--reissue-user", "A.Lovelace@contoso.com"]
    assert main(args) == EXIT_OK
    assert state.current_pass("ada@contoso.com") != first[0]
    assert state.current_pass("bo@contoso.com") == first[1]  # kept: issued by the first run
    assert state.passes_created_for("bo@contoso.com") == 1


def test_a_resumed_run_keeps_what_it_issued_when_the_policy_has_changed(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed part-way (match_by mail), then the policy's maximum drops below the sheet's
    lifetime: the resumed run keeps every pass it issued before the kill (with what HR wrote),
    and fails only the rows still to send, naming the new range."""
    hires = [f"new{n:02d}@contoso.com" for n in range(16)]
    flags = {u.split("@")[0]: {"mail": f"M.{u}"} for u in hires}
    state = SimulatorState(users(*hires, **flags), seed=1)
    sim = serve_simulator(state)
    sheet = write(tmp_path, "Email,Start Date", *(f"M.{u},{SOON[0]}" for u in hires))
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "mail"},
                        run={"concurrency": 2})  # fmt: skip
    kill_after_creates(sim, config, sheet, 8)
    before = {u: state.current_pass(u) for u in hires if state.current_pass(u) is not None}
    assert 8 <= len(before) < len(hires)
    state.policy["maximumLifetimeInMinutes"] = 240  # the sheet's passes are 480 minutes
    assert main(["run", str(sheet), "-c", str(config)]) == EXIT_ROWS_FAILED
    sheets = read_audit(audit_path_from(capsys.readouterr().out))
    issued = {str(r["User"]): r for r in sheets["Issued"]}
    failed = {str(r["User"]): r for r in sheets["Failed"]}
    assert len(before) - len(set(before) & set(issued)) <= 2  # at most the two in flight
    for user in set(before) - set(issued):  # in flight at the kill: its answer never came
        assert "An earlier request for this row (a run that stopped) may have created a pass" \
            in str(failed[user]["Detail"])
    for user, row in issued.items():
        assert row["Temporary Access Pass"] == state.current_pass(user)
        assert row["Found by (sheet value)"] == f"M.{user}"
    assert {r["Reason"] for r in failed.values()} == {"Lifetime outside the pass policy"}
    assert len(issued) + len(failed) == len(hires)


def test_lookups_follow_every_page(
    tmp_path: Path, serve_simulator, secret_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One user per page: a value two people share is still seen twice (the second page), and
    every person on later pages is found."""
    monkeypatch.setattr("onboard.graph.USER_PAGE", 1)
    names = ["ada@contoso.com", "bo@contoso.com", "twin1@contoso.com", "twin2@contoso.com"]
    flags = {n.split("@")[0]: {"mail": f"x.{n}"} for n in names[:2]}
    flags |= {"twin1": {"mail": "shared@contoso.com"}, "twin2": {"mail": "shared@contoso.com"}}
    state = SimulatorState(users(*names, **flags))
    sim = serve_simulator(state)
    path = write(tmp_path, "Email,Start Date", f"x.ada@contoso.com,{SOON[0]}",
                 f"x.bo@contoso.com,{SOON[0]}", f"shared@contoso.com,{SOON[0]}")  # fmt: skip
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "mail"})
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ROWS_FAILED
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert sorted(str(r["User"]) for r in rows["Issued"]) == names[:2]
    assert [r["Reason"] for r in rows["Failed"]] == ["Several users with this mail"]
    assert state.counts["user_lookups"] == 4  # one filter, four pages of one


def test_a_409_after_a_lost_answer_fails_the_row_never_skips_it(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """Under skip, a 409 to a retry whose first create's answer was lost is this run's own
    pass with its value lost: the row fails (may hold a pass), it is never "kept"."""
    faults = Faults(conflict_on_existing=True, lost_response_rate=1.0)
    state = SimulatorState(users("ada@contoso.com"), faults=faults)
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date", f"ada@contoso.com,{SOON[0]}")
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert rows["Skipped"] == [] and rows["Issued"] == []
    (failed,) = rows["Failed"]
    assert (failed["Reason"], failed["HTTP status"]) == ("A pass already exists", 409)
    assert "an earlier request for this row may have created it" in str(failed["Detail"])
    assert len(state.issued) == 1  # the pass whose answer was lost


def test_a_pass_that_ends_before_the_start_is_not_kept_silently(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under skip, a helpdesk pass valid now but ending before the hire starts fails the row
    (it is no use on day one, and replacing it could break whoever uses it now); the row is
    logged like every decided row."""
    state = SimulatorState(users("ada@contoso.com"))
    state.give_pass("ada@contoso.com", lifetime_minutes=480)
    sim = serve_simulator(state)
    path = write(tmp_path, "UPN,Start Date", f"ada@contoso.com,{SOON[2]}")
    assert main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))]) == 1
    (failed,) = audit_rows(latest_audit(tmp_path / "audit"))["Failed"]
    assert failed["Reason"] == "Holds a pass that ends before the start"
    assert "ends " in str(failed["Detail"]) and "--reissue-user" in str(failed["Detail"])
    assert state.current_pass("ada@contoso.com") == "handed-out"
    assert "row 2 ada@contoso.com: Holds a pass that ends before the start" in (
        capsys.readouterr().err)


def test_reissue_user_by_the_upn_found_under_match_by_mail(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """The audit names people by UPN, so --reissue-user takes the UPN the lookup found; a
    name that is neither is refused (exit 2) and nothing is sent."""
    state = SimulatorState(users("ada@contoso.com", ada={"mail": "a.lovelace@contoso.com"}))
    sim = serve_simulator(state)
    path = write(tmp_path, "Email,Start Date", f"a.lovelace@contoso.com,{SOON[0]}")
    config = sim.config(tmp_path / "c.yaml", input={"match_by": "mail"})
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    first = state.current_pass("ada@contoso.com")
    assert main(["run", str(path), "-c", str(config), "--reissue-user", "ADA@contoso.com"]) == 0
    assert state.current_pass("ada@contoso.com") != first
    assert main(["run", str(path), "-c", str(config), "--reissue-user", "bo@contoso.com"]) == 2
    assert state.passes_created_for("ada@contoso.com") == 2
