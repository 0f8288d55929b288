"""After the run: `onboard status` (each pass's state at Graph) and `onboard revoke` (take a
run's passes back), against the simulator; the journal's records of them; the simulator's
controls for a pass's life."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sqlite3
import ssl
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from conftest import (
    LATER,
    LONG,
    PAST,
    SHORT,
    issue,
    json_out,
    read_audit,
    revoke_process,
    users,
    wait_for_deletes,
    write_sheet,
)

from onboard.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_ROWS_FAILED, EXIT_TERMINATED, main
from onboard.graph import GraphClient, HeldPass, RegisteredMethod
from onboard.journal import SCHEMA, Journal, RevokeState
from onboard.lifecycle import PassState, pass_state, registered_since
from onboard.simulator import SimulatorState

ROOT = Path(__file__).resolve().parent.parent


def status(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["status", *args, "-c", str(config), "--json"])
    return code, json_out(capsys)


def revoke(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["revoke", *args, "-c", str(config), "--json"])
    return code, json_out(capsys)


def by_user(items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return {item["user"]: item[key] for item in items}


def test_status_reports_every_state_and_the_methods_registered_since(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Used, expired, replaced, removed, not yet valid, usable: each reported, with methods."""
    names = ["usable", "used", "expired", "later", "replaced", "removed", "onboarded"]
    hires = [f"{n}@contoso.com" for n in names]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    rows = [
        (h, LATER if h.startswith("later") else PAST, SHORT if h.startswith("expired") else LONG)
        for h in hires
    ]
    config, run_id = issue(sim, tmp_path, rows, capsys)
    assert state.sign_in_with("used@contoso.com")
    state.advance(2 * 3600)  # the one-hour pass is over, the eight-hour ones are not
    state.give_pass("replaced@contoso.com")  # another admin issues a new one
    assert state.remove_pass("removed@contoso.com")
    state.register_method("onboarded@contoso.com", "microsoftAuthenticator")
    state.register_method("onboarded@contoso.com", "phone")

    code, passes = status(config, capsys, run_id)
    assert by_user(passes, "state") == {
        "usable@contoso.com": "usable",
        "used@contoso.com": "used",
        "expired@contoso.com": "expired",
        "later@contoso.com": "not yet valid",
        "replaced@contoso.com": "replaced",
        "removed@contoso.com": "removed",
        "onboarded@contoso.com": "usable",
    }
    assert by_user(passes, "registered")["onboarded@contoso.com"] == [
        "Microsoft Authenticator",
        "phone (SMS or call)",
    ]
    assert by_user(passes, "needs_attention") == {
        "usable@contoso.com": False,
        "used@contoso.com": True,  # started, spent its pass, registered nothing
        "expired@contoso.com": True,
        "later@contoso.com": False,  # not started yet
        "replaced@contoso.com": False,  # holds the usable pass issued since
        "removed@contoso.com": True,
        "onboarded@contoso.com": False,
    }
    assert code == EXIT_ROWS_FAILED
    assert all(p["run_id"] == run_id for p in passes)
    workbook = tmp_path / "audit" / f"onboard-status-{run_id}.xlsx"
    assert stat.S_IMODE(workbook.stat().st_mode) == 0o600
    sheet = read_audit(workbook)["Status"]
    assert {r["User"]: r["State"] for r in sheet} == by_user(passes, "state")
    values = {p.value for p in state.issued}
    cells = {str(v) for r in sheet for v in r.values()}
    assert not values & cells  # no pass value in the workbook


def test_status_exit_code_is_1_only_for_a_started_hire_with_no_way_in(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 while a started hire has spent their pass and has no method; 0 once they do."""
    state = SimulatorState(users("started@contoso.com", "later@contoso.com"))
    sim = serve_simulator(state)
    config, _ = issue(
        sim,
        tmp_path,
        [("started@contoso.com", PAST, LONG), ("later@contoso.com", LATER, LONG)],
        capsys,
    )
    assert status(config, capsys)[0] == EXIT_OK  # usable, and not yet valid (not started)
    state.sign_in_with("started@contoso.com")
    code, passes = status(config, capsys)
    assert code == EXIT_ROWS_FAILED
    assert [p["user"] for p in passes if p["needs_attention"]] == ["started@contoso.com"]
    state.register_method("started@contoso.com", "fido2")
    code, passes = status(config, capsys)
    assert code == EXIT_OK
    assert by_user(passes, "registered")["started@contoso.com"] == ["FIDO2 security key or passkey"]


def test_status_of_a_pass_the_policy_now_disables_needs_attention(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user moved out of the policy's groups: their pass is flagged, and nobody can use it."""
    state = SimulatorState(users("moved@contoso.com"))
    sim = serve_simulator(state)
    config, _ = issue(sim, tmp_path, [("moved@contoso.com", PAST, LONG)], capsys)
    state.users["moved@contoso.com"].in_pass_policy = False
    code, (row,) = status(config, capsys)
    assert (row["state"], row["disabled_by_policy"], row["needs_attention"]) == (
        "usable",
        True,
        True,
    )
    assert code == EXIT_ROWS_FAILED
    main(["status", "-c", str(config)])
    assert "disabled by the pass policy" in capsys.readouterr().out


def test_status_prints_a_table_and_names_the_run_a_replacing_pass_came_from(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without RUN_ID: the latest run that issued a pass; a pass from a later run is named."""
    state = SimulatorState(users("a@contoso.com", "b@contoso.com"))
    sim = serve_simulator(state)
    config, first = issue(
        sim, tmp_path, [("a@contoso.com", PAST, LONG), ("b@contoso.com", PAST, LONG)], capsys
    )
    again = write_sheet(tmp_path / "again.csv", [("a@contoso.com", PAST, LONG)])
    assert main(["run", str(again), "-c", str(config), "--reissue", "--json"]) == EXIT_OK
    second = json_out(capsys)["run_id"]
    _, latest = status(config, capsys)
    assert {p["run_id"] for p in latest} == {second}
    _, passes = status(config, capsys, first)
    assert by_user(passes, "replaced_by") == {"a@contoso.com": second, "b@contoso.com": None}
    assert main(["status", first, "-c", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"onboard status of run {first}: 2 passes: 1 replaced, 1 usable" in out
    assert f"replaced by run {second} (usable)" in out
    assert "status workbook: " in out


def test_a_user_deleted_since_is_no_alert_and_their_pass_is_gone(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cancelled hire's account deleted (Graph answers 404): removed, not an alert; revoke
    has nothing to delete and says why."""
    state = SimulatorState(users("kept@contoso.com", "cancelled@contoso.com"))
    sim = serve_simulator(state)
    config, run_id = issue(
        sim,
        tmp_path,
        [("kept@contoso.com", PAST, LONG), ("cancelled@contoso.com", PAST, LONG)],
        capsys,
    )
    gone = state.users.pop("cancelled@contoso.com")
    del state.users[gone.id.casefold()]
    code, passes = status(config, capsys, run_id)
    assert code == EXIT_OK
    row = {p["user"]: p for p in passes}["cancelled@contoso.com"]
    assert (row["state"], row["needs_attention"], row["error"]) == ("removed", False, None)
    code, done = revoke(config, capsys, run_id, "--yes")
    assert code == EXIT_OK
    assert by_user(done["passes"], "action") == {
        "kept@contoso.com": "deleted",
        "cancelled@contoso.com": "gone",
    }
    assert (
        "no longer in the directory" in by_user(done["passes"], "detail")["cancelled@contoso.com"]
    )


def test_status_and_revoke_refuse_a_run_of_another_tenant(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run recorded for another tenant (Graph root) is refused, nothing read or deleted."""
    state = SimulatorState(users("a@contoso.com"))
    _, run_id = issue(serve_simulator(state), tmp_path, [("a@contoso.com", PAST, LONG)], capsys)
    other = serve_simulator(SimulatorState(users("a@contoso.com")))
    elsewhere = other.config(tmp_path / "other.yaml")  # the same journal, another tenant
    for command in (["status", run_id], ["revoke", run_id, "--yes"]):
        assert main([*command, "-c", str(elsewhere)]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert f"run {run_id} issued its passes in the tenant" in err
    assert other.state.delete_requests == {} and state.delete_requests == {}
    assert status(elsewhere, capsys)[0] == EXIT_BAD_INPUT  # no run of that tenant issued one


def test_status_and_revoke_refuse_the_built_in_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The built-in simulator keeps no pass between commands: said, exit 2, no traceback."""
    config = tmp_path / "c.yaml"
    config.write_text(f"graph:\n  endpoint: simulator\nstate:\n  path: {tmp_path / 'j.sqlite'}\n")
    for command in (["status"], ["revoke", "20260101-000000-abcdef", "--yes"]):
        assert main([*command, "-c", str(config)]) == EXIT_BAD_INPUT
        assert "onboard simulate" in capsys.readouterr().err


def test_revoke_never_deletes_a_pass_issued_since(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another admin's newer pass is kept (no DELETE sent for it); the run's own are deleted."""
    hires = ["a@contoso.com", "b@contoso.com", "c@contoso.com"]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    config, run_id = issue(sim, tmp_path, [(h, PAST, LONG) for h in hires], capsys)
    issued = {
        state.users[h].id: p.id
        for p in state.issued
        for h in hires
        if state.users[h].id == p.user_id
    }
    newer = state.give_pass("b@contoso.com")
    code, done = revoke(config, capsys, run_id, "--yes")
    assert code == EXIT_OK
    assert by_user(done["passes"], "action") == {
        "a@contoso.com": "deleted",
        "b@contoso.com": "kept: replaced",
        "c@contoso.com": "deleted",
    }
    assert state.passes[state.users["b@contoso.com"].id] is newer
    assert newer.id not in state.delete_requests
    assert set(state.deleted) == {issued[state.users[h].id] for h in (hires[0], hires[2])}
    assert done["counts"] == {"deleted": 2, "kept: replaced": 1}
    workbook = Path(done["workbook"])
    assert stat.S_IMODE(workbook.stat().st_mode) == 0o600
    assert [r["Action"] for r in read_audit(workbook)["Revoke"]] == [
        "deleted",
        "kept: replaced",
        "deleted",
    ]


def test_revoke_unused_leaves_used_and_expired_passes_alone(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """--unused deletes usable and not-yet-valid passes; a used or expired one gets no DELETE."""
    hires = ["used@contoso.com", "expired@contoso.com", "usable@contoso.com", "later@contoso.com"]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    rows = [
        (hires[0], PAST, LONG),
        (hires[1], PAST, SHORT),
        (hires[2], PAST, LONG),
        (hires[3], LATER, LONG),
    ]
    config, run_id = issue(sim, tmp_path, rows, capsys)
    state.sign_in_with("used@contoso.com")
    state.advance(2 * 3600)
    spent = {state.passes[state.users[h].id].id for h in hires[:2]}
    code, done = revoke(config, capsys, run_id, "--unused", "--yes")
    assert code == EXIT_OK
    assert by_user(done["passes"], "action") == {
        "used@contoso.com": "kept: used",
        "expired@contoso.com": "kept: expired",
        "usable@contoso.com": "deleted",
        "later@contoso.com": "deleted",
    }
    assert not spent & set(state.delete_requests)
    assert len(state.deleted) == 2
    # Without --unused, a later revoke takes the spent ones too.
    code, done = revoke(config, capsys, run_id, "--yes")
    assert by_user(done["passes"], "action") == {
        "used@contoso.com": "deleted",
        "expired@contoso.com": "deleted",
        "usable@contoso.com": "already revoked",
        "later@contoso.com": "already revoked",
    }
    assert len(state.deleted) == 4 and all(n == 1 for n in state.delete_requests.values())


def test_revoke_asks_on_a_terminal_and_needs_yes_without_one(
    tmp_path: Path,
    serve_simulator,
    secret_env,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No terminal, no --yes: exit 2, nothing sent. On one: the list, then no keeps, yes goes."""
    state = SimulatorState(users("a@contoso.com", "b@contoso.com"))
    sim = serve_simulator(state)
    config, run_id = issue(
        sim, tmp_path, [("a@contoso.com", PAST, LONG), ("b@contoso.com", PAST, LONG)], capsys
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    assert main(["revoke", run_id, "-c", str(config)]) == EXIT_BAD_INPUT
    assert "--yes" in capsys.readouterr().err
    assert state.delete_requests == {}

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["revoke", run_id, "--user", "a@contoso.com", "-c", str(config), "--json"]) == 0
    said = capsys.readouterr()
    assert "delete this pass? [y/N]" in said.err  # the list and the question: on stderr
    done = json.loads(said.out)  # stdout: the JSON value alone
    assert done["declined"] is True
    assert by_user(done["passes"], "action") == {"a@contoso.com": "not done"}
    assert state.delete_requests == {}
    monkeypatch.setattr(sys, "stdin", Terminal("yes\n"))
    assert main(["revoke", run_id, "-c", str(config), "--json"]) == EXIT_OK
    said = capsys.readouterr()
    assert "delete these 2 passes? [y/N]" in said.err and "b@contoso.com" in said.err
    done = json.loads(said.out)
    assert by_user(done["passes"], "action") == {
        "a@contoso.com": "deleted",
        "b@contoso.com": "deleted",
    }
    assert len(state.deleted) == 2


def test_revoke_dry_run_and_user_choose_without_deleting_others(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run deletes nothing; --user deletes that pass only; an unknown --user is exit 2."""
    state = SimulatorState(users("a@contoso.com", "b@contoso.com"))
    sim = serve_simulator(state)
    config, run_id = issue(
        sim, tmp_path, [("a@contoso.com", PAST, LONG), ("b@contoso.com", PAST, LONG)], capsys
    )
    code, done = revoke(config, capsys, run_id, "--dry-run")
    assert code == EXIT_OK and done["dry_run"] is True
    assert done["counts"] == {"would delete": 2}
    assert state.delete_requests == {}
    assert (
        main(["revoke", run_id, "--user", "nobody@contoso.com", "--yes", "-c", str(config)])
        == EXIT_BAD_INPUT
    )
    assert "issued no pass for nobody@contoso.com" in capsys.readouterr().err
    code, done = revoke(config, capsys, run_id, "--user", "B@contoso.com", "--yes")
    assert by_user(done["passes"], "action") == {"b@contoso.com": "deleted"}
    assert state.current_pass("a@contoso.com") is not None
    assert state.current_pass("b@contoso.com") is None


def test_the_journal_keeps_what_status_needs_but_no_value_and_runs_counts_revoked(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the run: method id, start and expiry of every pass kept, no value; `runs` counts
    the passes revoke deleted."""
    hires = ["a@contoso.com", "b@contoso.com"]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    config, run_id = issue(sim, tmp_path, [(h, PAST, LONG) for h in hires], capsys)
    path = tmp_path / "state" / "journal.sqlite"
    with Journal(path).open(lock=False) as journal:
        kept = journal.passes(run_id)
    assert {p.method_id for p in kept} == {p.id for p in state.issued}
    assert all(
        p.starts and p.expires and p.expires - p.starts == timedelta(minutes=LONG) for p in kept
    )
    with sqlite3.connect(path) as db:
        held = db.execute("SELECT count(*) FROM rows WHERE pass_value IS NOT NULL").fetchone()
    assert held == (0,)
    revoke(config, capsys, run_id, "--user", "a@contoso.com", "--yes")
    assert main(["runs", "-c", str(config), "--json"]) == EXIT_OK
    (run,) = json_out(capsys)
    assert (run["run_id"], run["counts"]["issued"], run["counts"]["revoked"]) == (run_id, 2, 1)
    assert main(["runs", "-c", str(config)]) == EXIT_OK
    assert "revoked" in capsys.readouterr().out.splitlines()[0]


def test_a_journal_from_before_revoke_is_read_without_being_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal with no revocations table: `runs --json` counts none revoked, writes nothing."""
    path = tmp_path / "state" / "journal.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS revocations")[0])
        db.execute(
            "INSERT INTO runs (run_id, started, status, input_key, meta) VALUES ('old-run', "
            "'2026-01-02T03:04:05+00:00', 'completed', '[]', '{}')"
        )
    db.close()
    before = path.read_bytes()
    config = tmp_path / "c.yaml"
    config.write_text(f"graph:\n  endpoint: simulator\nstate:\n  path: {path}\n")
    assert main(["runs", "-c", str(config), "--json"]) == EXIT_OK
    (run,) = json_out(capsys)
    assert (run["run_id"], run["counts"]["revoked"]) == ("old-run", 0)
    assert path.read_bytes() == before


def test_kill_during_revoke_then_a_rerun_deletes_nothing_twice(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL part-way through a revoke; run it again: every pass gone, none DELETEd twice."""
    hires = [f"hire{n:02d}@contoso.com" for n in range(30)]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    config, run_id = issue(sim, tmp_path, [(h, PAST, LONG) for h in hires], capsys)
    state.faults.latency_ms = 60  # slow enough to be killed part-way
    proc = revoke_process(config, run_id)
    wait_for_deletes(state, proc, 8)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    state.faults.latency_ms = 0
    before = dict(state.delete_requests)
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as db:
        recorded = dict(db.execute("SELECT method_id, state FROM revocations").fetchall())
    deleted_then = {m for m, s in recorded.items() if s == "deleted"}
    # Deleted, and maybe some DELETEs in flight (recorded "deleting"): the kill landed part-way.
    assert deleted_then and set(recorded.values()) <= {"deleted", "deleting"}
    assert len(recorded) < len(hires)

    code, done = revoke(config, capsys, run_id, "--yes")
    assert code == EXIT_OK
    assert state.passes == {}  # every pass the run issued is gone
    assert all(state.delete_requests[m] == before[m] == 1 for m in deleted_then)
    assert sorted(state.deleted) == sorted(p.id for p in state.issued)  # each deleted once
    actions = {p["method_id"]: p["action"] for p in done["passes"]}
    assert {m for m, a in actions.items() if a == "already revoked"} == deleted_then
    assert set(actions.values()) <= {"already revoked", "deleted"}
    assert main(["runs", "-c", str(config), "--json"]) == EXIT_OK
    assert json_out(capsys)[0]["counts"]["revoked"] == len(hires)


def test_a_delete_left_in_flight_is_asked_about_not_sent_blindly(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Journaled "deleting" (killed before the answer): if Graph no longer holds the pass,
    it counts as deleted and no DELETE is sent again; if it still does, it is deleted now."""
    hires = ["landed@contoso.com", "lost@contoso.com"]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    config, run_id = issue(sim, tmp_path, [(h, PAST, LONG) for h in hires], capsys)
    with Journal(tmp_path / "state" / "journal.sqlite").open() as journal:
        tenant = journal.run(run_id).tenant  # type: ignore[union-attr]
        for recorded in journal.passes(run_id):
            journal.revoking(tenant, run_id, recorded, RevokeState.DELETING, "killed")
    state.remove_pass("landed@contoso.com")  # that DELETE reached Graph; the other did not
    code, done = revoke(config, capsys, run_id, "--yes")
    assert code == EXIT_OK
    assert by_user(done["passes"], "action") == {
        "landed@contoso.com": "deleted",
        "lost@contoso.com": "deleted",
    }
    assert "earlier revoke" in by_user(done["passes"], "detail")["landed@contoso.com"]
    assert list(state.delete_requests.values()) == [1]  # only the lost one was sent
    assert main(["runs", "-c", str(config), "--json"]) == EXIT_OK
    assert json_out(capsys)[0]["counts"]["revoked"] == 2


def test_sigterm_during_revoke_finishes_the_deletes_in_flight_and_writes_the_workbook(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM: no new pass started, those in flight finished and journaled, the workbook and
    JSON say what was not done; exit 143; the same command finishes the rest."""
    hires = [f"hire{n:02d}@contoso.com" for n in range(30)]
    state = SimulatorState(users(*hires))
    sim = serve_simulator(state)
    config, run_id = issue(sim, tmp_path, [(h, PAST, LONG) for h in hires], capsys)
    state.faults.latency_ms = 60
    proc = revoke_process(config, run_id, "--json")
    wait_for_deletes(state, proc, 5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED, err
    done = json.loads(out)
    assert done["stopped"] is True
    actions = by_user(done["passes"], "action")
    assert set(actions.values()) == {"deleted", "not done"}
    assert Path(done["workbook"]).is_file()
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as db:
        states = {s for (s,) in db.execute("SELECT state FROM revocations")}
    assert states == {"deleted"}  # nothing left in flight
    state.faults.latency_ms = 0
    code, again = revoke(config, capsys, run_id, "--yes")
    assert code == EXIT_OK and state.passes == {}
    assert {p["user"] for p in again["passes"] if p["action"] == "deleted"} == {
        user for user, action in actions.items() if action == "not done"
    }
    assert all(n == 1 for n in state.delete_requests.values())


def test_the_simulators_controls_drive_a_pass_through_its_life(
    tmp_path: Path, serve_simulator
) -> None:
    """POST /_simulator/...: sign in, register, replace, remove, advance; DELETE 204 then 404."""
    state = SimulatorState(users("a@contoso.com", "b@contoso.com"))
    sim = serve_simulator(state)
    made = state.give_pass("a@contoso.com", lifetime_minutes=60)

    def control(what: str, **body: Any) -> requests.Response:
        return requests.post(
            f"{sim.url}/_simulator/{what}", json=body, verify=str(sim.ca_file), timeout=10
        )

    assert control("sign-in", user="a@contoso.com", value="wrong").json() == {"accepted": False}
    assert control("sign-in", user="a@contoso.com", value=made.value).json() == {"accepted": True}
    assert made.used  # a one-time pass, now used
    assert control("register", user="a@contoso.com", method="fido2").json() == {
        "methods": ["fido2"]
    }
    new_id = control("replace", user="a@contoso.com").json()["id"]
    assert state.passes[state.users["a@contoso.com"].id].id == new_id != made.id
    before = state.now()
    moved = datetime.fromisoformat(control("advance", seconds=7200).json()["now"])
    assert moved - before >= timedelta(hours=2)
    assert control("remove", user="a@contoso.com").json() == {"removed": True}
    assert control("remove", user="a@contoso.com").json() == {"removed": False}
    assert control("sign-in", user="ghost@contoso.com").status_code == 404
    assert control("advance", seconds=-1).status_code == 400
    assert control("nothing", user="a@contoso.com").status_code == 404


def test_delete_pass_is_204_then_404_and_never_reaches_another_pass(
    tmp_path: Path, serve_simulator
) -> None:
    """GraphClient.delete_pass: True for the held pass (204); False for it again, or for an id
    the user no longer holds (404), which leaves the pass they do hold in place."""
    state = SimulatorState(users("a@contoso.com", "b@contoso.com"))
    sim = serve_simulator(state)
    state.tokens[TOKEN] = float("inf")
    first = state.give_pass("a@contoso.com")
    old = state.give_pass("b@contoso.com")
    newer = state.give_pass("b@contoso.com")  # replaces `old`

    async def main() -> tuple[list[bool], tuple[int, int]]:
        context = ssl.create_default_context(cafile=str(sim.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            client = GraphClient(http, sim.url, Tokens())  # type: ignore[arg-type]
            answers = [
                await client.delete_pass("a@contoso.com", first.id),
                await client.delete_pass("a@contoso.com", first.id),
                await client.delete_pass("b@contoso.com", old.id),
            ]
            return answers, (client.pacing.writes.requests, client.pacing.reads.requests)

    answers, (writes, reads) = asyncio.run(main())
    assert answers == [True, False, False]
    assert (writes, reads) == (3, 0)  # paced as writes, like creates
    assert state.passes == {state.users["b@contoso.com"].id: newer}
    assert state.delete_requests == {first.id: 2, old.id: 1}


TOKEN = "lifecycle-test-token"


class Tokens:
    async def token(self) -> str:
        return TOKEN

    async def refresh(self, rejected: str) -> str:
        return TOKEN


def test_pass_state_and_methods_since_from_graphs_answers() -> None:
    """Gone after its expiry: expired, before: removed; another id: replaced; methods dated
    before the pass do not count, undated ones do."""
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    ends = now - timedelta(hours=1)
    assert pass_state("m1", ends, None, now) is PassState.EXPIRED
    assert pass_state("m1", now + timedelta(hours=1), None, now) is PassState.REMOVED
    other = HeldPass("m2", now, now, 60, "EnabledByPolicy")
    assert pass_state("m1", ends, other, now) is PassState.REPLACED
    disabled = HeldPass("m1", now, now - timedelta(hours=9), 480, "DisabledByPolicy")
    assert pass_state("m1", None, disabled, now) is PassState.EXPIRED  # by its own window
    made = now - timedelta(days=1)
    methods = [
        RegisteredMethod("#microsoft.graph.passwordAuthenticationMethod", None),
        RegisteredMethod("#microsoft.graph.fido2AuthenticationMethod", made - timedelta(days=9)),
        RegisteredMethod("#microsoft.graph.phoneAuthenticationMethod", None),
        RegisteredMethod("#microsoft.graph.microsoftAuthenticatorAuthenticationMethod", now),
    ]
    assert registered_since(methods, made) == ["Microsoft Authenticator", "phone (SMS or call)"]
