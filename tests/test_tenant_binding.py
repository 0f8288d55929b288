"""A run belongs to one tenant: journal records carry it, locks keep runs of one journal or one
tenant apart, simulated runs say so, and a pass nobody here issued is never a success."""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import TENANT, users
from openpyxl import load_workbook

from onboard.cli import EXIT_LOCKED, EXIT_OK, EXIT_ROWS_FAILED, main
from onboard.errors import JournalLocked
from onboard.journal import Journal
from onboard.simulator import SIMULATED_TENANT_ID, SimulatorState
from onboard.tenant import Tenant, TenantLock, tenant_of, token_claims

SOON = (date.today() + timedelta(days=5)).isoformat()
HIRES = ["ada@contoso.com", "bo@contoso.com", "cy@contoso.com"]
OTHER_TENANT = "11111111-0000-4000-8000-0000000000bb"


def sheet(tmp_path: Path, names: list[str] = HIRES, name: str = "hires.csv") -> Path:
    path = tmp_path / name
    path.write_text("UPN,Start Date\n" + "".join(f"{u},{SOON}\n" for u in names), "utf-8")
    return path


def book(path: Path) -> dict[str, list[dict[str, object]]]:
    """Every sheet of a workbook as rows of {header: value}; the Issued sheet by its prefix."""
    loaded = load_workbook(path)
    out = {}
    for ws in loaded.worksheets:
        rows = list(ws.iter_rows(values_only=True))
        name = ws.title.split(" (")[0]
        out[name] = [dict(zip(rows[0], row, strict=False)) for row in rows[1:]] if rows else []
    return out


def audit_of(stdout: str) -> Path:
    line = next(x for x in stdout.splitlines() if x.startswith("audit workbook: "))
    return Path(line.removeprefix("audit workbook: "))


def test_a_sheet_rehearsed_in_one_tenant_is_issued_again_in_another(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same folder, same journal, same sheet: a run in another tenant (another tid) issues
    every pass again instead of calling them "already issued"; the first tenant still skips."""
    first = serve_simulator(SimulatorState(users(*HIRES)))
    second_state = SimulatorState(users(*HIRES))
    second_state.tenant_id = OTHER_TENANT
    second = serve_simulator(second_state)
    path = sheet(tmp_path)
    config_a = first.config(tmp_path / "a.yaml")
    config_b = second.config(tmp_path / "b.yaml")  # same journal and audit folder
    assert main(["run", str(path), "-c", str(config_a)]) == EXIT_OK
    capsys.readouterr()
    assert main(["run", str(path), "-c", str(config_b)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "3 issued" in out and OTHER_TENANT in out
    assert len(second_state.issued) == 3
    # Back in the first tenant, its own earlier run still speaks for the hires.
    assert main(["run", str(path), "-c", str(config_a)]) == EXIT_OK
    assert "0 issued, 0 failed, 3 skipped" in capsys.readouterr().out


def test_the_tenant_id_comes_from_the_token_not_the_configured_name(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same Graph URL and the same auth.tenant_id, but the token's tid changed: another
    tenant, so nothing is taken as already issued."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    path = sheet(tmp_path)
    config = sim.config(tmp_path / "c.yaml")
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    state.tenant_id = OTHER_TENANT
    state.passes.clear()
    capsys.readouterr()
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    assert "3 issued" in capsys.readouterr().out


def test_runs_before_tenants_were_recorded_are_never_trusted(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal written before this change: its passes are not "already issued"; the run
    says so once, and asks Graph instead (no pass there: issued)."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    path = sheet(tmp_path)
    config = sim.config(tmp_path / "c.yaml")
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    journal = tmp_path / "state" / "journal.sqlite"
    with sqlite3.connect(journal) as db:  # as an older onboard left it: no tenant anywhere
        db.execute("UPDATE runs SET tenant=NULL, tenant_name=NULL")
        db.execute("UPDATE rows SET tenant=NULL")
    state.passes.clear()  # that tenant no longer holds them
    capsys.readouterr()
    assert main(["run", str(path), "-c", str(config)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "3 issued" in out
    assert err.count("before runs were bound to a tenant") == 1


def test_an_older_journal_gains_the_new_columns(tmp_path: Path) -> None:
    """A journal made by the previous schema opens, and its runs read as tenant unknown."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, started TEXT NOT NULL, finished TEXT,"
            " status TEXT NOT NULL, input_key TEXT NOT NULL, meta TEXT NOT NULL, audit_path TEXT);"
            "CREATE TABLE rows (run_id TEXT NOT NULL, source TEXT NOT NULL, row INTEGER NOT NULL,"
            " user_key TEXT NOT NULL, state TEXT NOT NULL, start_key TEXT NOT NULL DEFAULT '',"
            " attempts INTEGER NOT NULL DEFAULT 0, may_have_pass INTEGER NOT NULL DEFAULT 0,"
            " method_id TEXT, record TEXT, pass_value TEXT, issued_at TEXT, updated TEXT NOT NULL,"
            " PRIMARY KEY (run_id, source, row));"
            "INSERT INTO runs VALUES ('r1', '2026-01-01T00:00:00+00:00', NULL, 'completed', 'k',"
            " '{}', NULL);"
        )
    with Journal(path) as journal:
        (run,) = journal.runs()
        assert run.tenant is None and journal.untied_runs() == 1


def test_a_journal_reached_through_a_symlink_is_locked_as_the_same_file(tmp_path: Path) -> None:
    """Two runs that name one journal by different paths (a symlink) exclude each other."""
    real = tmp_path / "state" / "journal.sqlite"
    alias = tmp_path / "alias.sqlite"
    first = Journal(real).open()
    try:
        alias.symlink_to(real)
        with pytest.raises(JournalLocked):
            Journal(alias).open()
    finally:
        first.close()
    Journal(alias).open().close()  # free again once the first let go


def test_a_second_run_for_the_same_tenant_exits_5_naming_the_first(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another run holds the tenant (with its own journal): this one sends nothing, exits 5."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    holder = TenantLock(Tenant(SIMULATED_TENANT_ID, sim.url))
    holder.acquire("journal /elsewhere/journal.sqlite")
    try:
        assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == EXIT_LOCKED
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert "another onboard run is issuing passes in the tenant" in err
    assert "/elsewhere/journal.sqlite" in err
    assert state.issued == []
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == EXIT_OK


def test_a_pass_this_journal_did_not_issue_is_not_a_success(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """After kill -9 and a deleted journal, Graph holds passes nobody can vouch for: they are
    skipped and counted apart, the summary says how to replace them, and the exit is 1."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    state.give_pass("bo@contoso.com", lifetime_minutes=43_200)  # the killed run's, say
    config = sim.config(tmp_path / "c.yaml")
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    assert "2 issued, 0 failed, 0 skipped, 1 hold a pass this journal did not issue" in out
    assert "--reissue-user" in out and "pass.existing: replace" in out
    skipped = book(audit_of(out))["Skipped"]
    assert [r["User"] for r in skipped] == ["bo@contoso.com"]
    assert "that this journal did not issue" in str(skipped[0]["Reason"])
    assert state.passes_created_for("bo@contoso.com") == 0


def test_a_pass_this_journal_issued_is_known_by_its_method_id_under_any_name(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sheet naming people by UPN, then by object id: Graph's pass is the one the first run
    issued (same method id), so the row is "already issued", not a pass held elsewhere."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml")
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == EXIT_OK
    ids = [state.find_user(u).id for u in HIRES]  # type: ignore[union-attr]
    capsys.readouterr()
    by_id = sheet(tmp_path, ids, name="by-id.csv")
    assert main(["run", str(by_id), "-c", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "0 issued, 0 failed, 3 skipped" in out
    assert len(state.issued) == 3
    reasons = [r["Reason"] for r in book(audit_of(out))["Skipped"]]
    assert all("already issued" in str(r) and "confirmed with Graph" in str(r) for r in reasons)


def test_simulated_runs_say_so_everywhere_a_result_is_read(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A simulator reached by URL like a real tenant: the first and last printed lines, the
    tenant line, `runs` and `report` all say SIMULATED."""
    sim = serve_simulator(SimulatorState(users(*HIRES)))
    config = sim.config(tmp_path / "c.yaml")
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == lines[-1] == "SIMULATED: no pass was issued in a tenant"
    run_id = lines[1].split()[2].rstrip(":")
    assert main(["runs", "-c", str(config)]) == EXIT_OK
    listed = capsys.readouterr().out
    assert f"SIMULATED ({TENANT} (" in next(x for x in listed.splitlines() if run_id in x)
    assert main(["report", run_id, "-c", str(config)]) == EXIT_OK
    assert capsys.readouterr().out.startswith("SIMULATED: no pass was issued in a tenant")


def test_runs_shows_the_tenant_of_each_run(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two tenants in one journal: each run's line names its own."""
    first = serve_simulator(SimulatorState(users(*HIRES)))
    other = SimulatorState(users(*HIRES))
    other.tenant_id = OTHER_TENANT
    second = serve_simulator(other)
    path = sheet(tmp_path)
    assert main(["run", str(path), "-c", str(first.config(tmp_path / "a.yaml"))]) == EXIT_OK
    config_b = second.config(tmp_path / "b.yaml", auth={"tenant_id": OTHER_TENANT})
    assert main(["run", str(path), "-c", str(config_b)]) == EXIT_OK
    capsys.readouterr()
    assert main(["runs", "-c", str(config_b)]) == EXIT_OK
    listed = capsys.readouterr().out.splitlines()[1:3]
    assert TENANT in listed[0] and OTHER_TENANT in listed[1]


def test_the_tenant_is_read_from_the_token() -> None:
    """tid from a JWT wins over the configured name; a token that is not a JWT needs a GUID."""
    claims = '{"tid": "AAAAAAAA-0000-4000-8000-000000000001"}'
    import base64

    body = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    token = f"e30.{body}.sig"
    assert token_claims(token) == {"tid": "AAAAAAAA-0000-4000-8000-000000000001"}
    found = tenant_of(token, graph_root="https://graph.microsoft.com",
                      configured="contoso.onmicrosoft.com", simulator=False)  # fmt: skip
    assert found == Tenant("aaaaaaaa-0000-4000-8000-000000000001", "https://graph.microsoft.com",
                           "contoso.onmicrosoft.com", False)  # fmt: skip
    guid = "bbbbbbbb-0000-4000-8000-000000000002"
    opaque = tenant_of("opaque", graph_root="r", configured=guid, simulator=False)
    assert opaque.id == guid
    from onboard.errors import AuthError

    with pytest.raises(AuthError, match=r"auth\.tenant_id"):
        tenant_of("opaque", graph_root="r", configured="contoso.com", simulator=False)
