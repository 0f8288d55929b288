"""The Python API as a library user calls it: onboard.run and onboard.validate against
onboard.testing's fake tenant, asserting on the RunReport."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import inspect
import io
import logging
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from conftest import read_audit, users

import onboard
from onboard import Origin, PassRequest, Reason, RunReport, RunStatus
from onboard.testing import FakeTenant, Faults, SimulatorState, SimUser, fake_tenant

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
GOOD = [f"hire{n:02d}@contoso.com" for n in range(40)]
SOON = [(date.today() + timedelta(days=30 + n)).isoformat() for n in range(5)]
HOUR = timedelta(hours=1)


def config_for(tmp_path: Path, **run: Any) -> onboard.Config:
    """A config whose audit and journal go under tmp_path, with fast retries and settling."""
    settings = {"concurrency": 4, "backoff_seconds": 0.01, "backoff_max_seconds": 0.05,
                "settle_seconds": 0.2, **run}  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "graph": {"endpoint": "simulator"},
        "run": settings,
        "output": {"dir": str(tmp_path / "audit")},
        "state": {"path": str(tmp_path / "state" / "journal.sqlite")},
    }), encoding="utf-8")  # fmt: skip
    return onboard.load_config(path)


def request(row: int, user: str, start: datetime | None = None, source: str = "hr-feed",
            lifetime: int = 480) -> PassRequest:  # fmt: skip
    return PassRequest(Origin(source, row), user, None, start, lifetime, False)


def against(
    tenant: Callable[[], contextlib.AbstractAsyncContextManager[FakeTenant]],
    work: Callable[[FakeTenant], Awaitable[T]],
) -> T:
    """Run `work` with the fake tenant up, on an event loop of its own."""

    async def main() -> T:
        async with tenant() as fake:
            return await work(fake)

    return asyncio.run(main())


def issued_passes(report: RunReport) -> dict[str, str]:
    return {i.request.user: i.temporary_access_pass for i in report.issued}


def test_run_on_requests_reports_each_row_and_graph_holds_the_issued_passes(
    tmp_path: Path,
) -> None:
    """Requests handed in are screened, sent and audited like a sheet's rows, each traceable
    by its Origin; the passes the fake tenant holds are the report's."""
    config = config_for(tmp_path)
    soon = datetime.now(UTC) + timedelta(days=3)
    hires = [
        request(1, "ada@contoso.com", soon),
        request(2, "ghost@contoso.com", soon),
        request(3, "out@contoso.com", soon),
        request(4, "admin@contoso.com", soon),
        request(5, "ada@contoso.com", soon),  # the same again
        request(6, "grace@contoso.com", datetime.now(UTC) - HOUR),  # already past
    ]
    people = [*users("ada@contoso.com", "grace@contoso.com"),
              SimUser("00000000-0000-0000-0000-0000000000f1", "out@contoso.com",
                      in_pass_policy=False),
              SimUser("00000000-0000-0000-0000-0000000000f2", "admin@contoso.com",
                      roles=["Global Administrator"])]  # fmt: skip

    async def work(tenant: FakeTenant) -> tuple[RunReport, dict[str, str]]:
        report = await onboard.run(config, requests=hires, client=tenant)
        return report, tenant.passes()

    report, held = against(lambda: fake_tenant(people), work)
    assert report.status is RunStatus.COMPLETED
    # Graph makes a pass outside the policy's groups too, one nobody can use: it fails, with
    # the pass's method id for revoking it.
    assert held.pop("out@contoso.com")
    assert issued_passes(report) == held
    assert sorted(held) == ["ada@contoso.com", "grace@contoso.com"]
    assert {f.origin: f.reason for f in report.failed} == {
        Origin("hr-feed", 2): Reason.USER_NOT_FOUND,
        Origin("hr-feed", 3): Reason.OUTSIDE_POLICY,
        Origin("hr-feed", 4): Reason.ADMIN_ROLE,
    }
    assert [(s.origin, s.reason, s.detail) for s in report.skipped] == [
        (Origin("hr-feed", 5), Reason.REPEATED, "same as row 1")
    ]
    late = next(i for i in report.issued if i.request.user == "grace@contoso.com")
    assert late.request.start is None and "in the past: pass usable at once" in late.note
    sheets = read_audit(report.audit_path)  # type: ignore[arg-type]
    assert sorted((r["Source file"], r["Row"]) for r in sheets["Issued"]) == [
        ("hr-feed", 1),
        ("hr-feed", 6),
    ]
    inputs = [r for r in sheets["Summary"] if r["Item"] == "Input file"]
    assert [r["Value"] for r in inputs] == ["hr-feed"]
    assert str(inputs[0]["Detail"]).startswith(f"SHA-256 {report.files[0].sha256}")


def test_the_sample_fails_the_rows_it_is_meant_to(tmp_path: Path) -> None:
    """The README's demo as a library call: the shipped config and sample against the
    built-in simulator (its tenant, without the demo's latency and faults: what the demo
    prints under them, test_cli.test_quick_start_demo_prints_what_the_readme_shows); the four
    rows meant to fail fail, each with its reason, in the report and in the audit workbook."""
    config = onboard.load_config(ROOT / "config.yaml", env={
        "ONBOARD_OUTPUT_DIR": str(tmp_path / "audit"),
        "ONBOARD_STATE_PATH": str(tmp_path / "journal.sqlite"),
        "ONBOARD_SIMULATOR_LATENCY_MS": "0",
        "ONBOARD_SIMULATOR_FAULT_RATE": "0",
        "ONBOARD_SIMULATOR_THROTTLE_BURST": "1000",
    })  # fmt: skip
    report = asyncio.run(onboard.run(config, [ROOT / "samples" / "new_hires.xlsx"]))
    assert (len(report.issued), len(report.failed), len(report.skipped)) == (50, 4, 1)
    assert {f.reason for f in report.failed} == {
        Reason.LIFETIME_OUTSIDE_POLICY,
        Reason.INVALID,
        Reason.USER_NOT_FOUND,
        Reason.OUTSIDE_POLICY,
    }
    assert report.audit_path is not None
    assert {r["Reason"] for r in read_audit(report.audit_path)["Failed"]} == {
        "Lifetime outside the pass policy",
        "Invalid Start Date",
        "User not found",
        "Outside the pass policy",
    }


def test_the_same_requests_again_are_skipped_as_already_issued(tmp_path: Path) -> None:
    """Requests are journalled: running them again skips each issued row, naming the run."""
    config = config_for(tmp_path)
    hires = [request(1, "ada@contoso.com"), request(2, "bob@contoso.com")]

    async def work(tenant: FakeTenant) -> tuple[RunReport, RunReport]:
        first = await onboard.run(config, requests=hires, client=tenant)
        again = await onboard.run(config, requests=hires, client=tenant)
        return first, again

    first, again = against(lambda: fake_tenant(["ada@contoso.com", "bob@contoso.com"]), work)
    assert len(first.issued) == 2 and again.issued == [] and again.failed == []
    assert [(s.reason, s.previous_run) for s in again.skipped] == [
        (Reason.ALREADY_ISSUED, first.run_id)
    ] * 2


def test_run_on_a_file_and_requests_together_keeps_one_row_per_user(tmp_path: Path) -> None:
    """A file's rows and requests handed in are one input: a user in both is sent once."""
    config = config_for(tmp_path)
    sheet = tmp_path / "hires.csv"
    sheet.write_text(f"UPN,Start Date\nada@contoso.com,{SOON[0]}\nbob@contoso.com,{SOON[1]}\n")
    # The pass the sheet's row asks for (its start at pass.start_time, the default lifetime).
    pass_ = config.pass_
    start = datetime.combine(date.fromisoformat(SOON[0]), pass_.start_time, UTC)
    same = PassRequest(Origin("hr-feed", 7), "ada@contoso.com", None, start,
                       pass_.lifetime_minutes, pass_.usable_once)  # fmt: skip

    async def work(tenant: FakeTenant) -> RunReport:
        return await onboard.run(config, [sheet], requests=[same], client=tenant)

    report = against(lambda: fake_tenant(["ada@contoso.com", "bob@contoso.com"]), work)
    assert sorted(i.origin for i in report.issued) == [Origin("hires.csv", 2),
                                                       Origin("hires.csv", 3)]  # fmt: skip
    assert [(s.origin, s.reason, s.detail) for s in report.skipped] == [
        (Origin("hr-feed", 7), Reason.REPEATED, "same as hires.csv row 2")
    ]


NAIVE = datetime.now() + timedelta(days=3)


@pytest.mark.parametrize(("hires", "message"), [
    ([request(1, "ada@contoso.com"), request(1, "bob@contoso.com")], "'hr-feed' row 1"),
    ([request(1, "ada@contoso.com", NAIVE)], "a time without a zone"),
    ([request(1, " ")], "names no user"),
    (None, "nothing to run on"),
])  # fmt: skip
def test_requests_no_row_could_become_are_refused_before_anything_is_sent(
    tmp_path: Path, hires: list[PassRequest] | None, message: str
) -> None:
    """Two requests with one Origin, a start without a zone, no user, or nothing at all:
    ValueError saying so, and the tenant saw no request."""
    config = config_for(tmp_path)

    async def work(tenant: FakeTenant) -> dict[str, int]:
        with pytest.raises(ValueError, match=message):
            await onboard.run(config, requests=hires, client=tenant)
        return tenant.state.counts

    assert against(lambda: fake_tenant(["ada@contoso.com"]), work) == {}


def test_validate_checks_requests_online_and_creates_nothing(tmp_path: Path) -> None:
    """validate on requests through the fake tenant: who is ready, who would fail, no pass."""
    config = config_for(tmp_path)
    hires = [request(1, "ada@contoso.com"), request(2, "ghost@contoso.com")]

    async def work(tenant: FakeTenant) -> tuple[onboard.Validation, FakeTenant]:
        found = await onboard.validate(config, requests=hires, online=True, client=tenant)
        return found, tenant

    found, tenant = against(lambda: fake_tenant(["ada@contoso.com"]), work)
    assert [r.origin for r in found.ready] == [Origin("hr-feed", 1)]
    assert [(f.origin, f.reason) for f in found.problems] == [
        (Origin("hr-feed", 2), Reason.USER_NOT_FOUND)
    ]
    assert found.tenant == tenant.tenant and found.policy
    assert tenant.state.issued == []


def test_validate_offline_knows_what_runs_on_the_fake_tenant_issued(tmp_path: Path) -> None:
    """The fake tenant is the built-in simulator's: validate, offline, reads the journal's
    runs on it and would skip the row already issued."""
    config = config_for(tmp_path)
    hires = [request(1, "ada@contoso.com")]

    async def work(tenant: FakeTenant) -> RunReport:
        return await onboard.run(config, requests=hires, client=tenant)

    report = against(lambda: fake_tenant(["ada@contoso.com"]), work)
    found = asyncio.run(onboard.validate(config, requests=hires))
    assert found.ready == [] and [(s.reason, s.previous_run) for s in found.skipped] == [
        (Reason.ALREADY_ISSUED, report.run_id)
    ]
    assert found.journal is not None and found.journal.startswith("checked against the journal")


def test_a_given_client_still_holds_the_tenant_lock(tmp_path: Path) -> None:
    """Two runs in one tenant at once, each with its own journal: the second is refused
    (JournalLocked) before it sends anything, and the first finishes."""
    first_config = config_for(tmp_path / "first")
    second_config = config_for(tmp_path / "second")
    hires = [request(n, upn) for n, upn in enumerate(GOOD[:4], start=1)]

    async def work(tenant: FakeTenant) -> RunReport:
        begun = asyncio.Event()
        first = asyncio.create_task(onboard.run(first_config, requests=hires, client=tenant,
                                                on_start=lambda rows: begun.set()))  # fmt: skip
        await begun.wait()
        with pytest.raises(onboard.JournalLocked, match="issuing passes in the tenant"):
            await onboard.run(second_config, requests=hires, client=tenant)
        return await first

    report = against(lambda: fake_tenant(GOOD[:4], faults=Faults(latency_ms=50)), work)
    assert len(report.issued) == 4


def test_a_stopped_run_sends_no_new_row(tmp_path: Path) -> None:
    """Stop set after the first pass: the run ends STOPPED, every other row is 'not sent',
    and the tenant holds exactly the passes the report lists."""
    config = config_for(tmp_path, concurrency=1)
    hires = [request(n, upn) for n, upn in enumerate(GOOD[:6], start=1)]
    stop = asyncio.Event()

    def seen(outcome: onboard.Outcome) -> None:
        if isinstance(outcome, onboard.Issued):
            stop.set()

    async def work(tenant: FakeTenant) -> tuple[RunReport, dict[str, str]]:
        report = await onboard.run(config, requests=hires, client=tenant, stop=stop,
                                   on_outcome=seen)  # fmt: skip
        return report, tenant.passes()

    report, held = against(lambda: fake_tenant(GOOD[:6]), work)
    assert report.status is RunStatus.STOPPED
    assert len(report.issued) == 1 and issued_passes(report) == held
    assert {f.reason for f in report.failed} == {Reason.NOT_SENT}
    assert len(report.not_sent) == 5 and report.failures == []
    assert report.audit_path is not None and report.audit_path.exists()


def test_the_injected_clock_decides_which_rows_are_due(tmp_path: Path) -> None:
    """A row due in 3 days is 'not yet due' (within 5) by a clock 10 days earlier, and the
    run is stamped by that clock; by the wall clock the same row is sent."""
    config = config_for(tmp_path)
    wall = datetime.now(UTC)
    then = wall - timedelta(days=10)
    hires = [request(1, "ada@contoso.com", wall + timedelta(days=3))]

    async def work(tenant: FakeTenant) -> tuple[RunReport, RunReport]:
        early = await onboard.run(config, requests=hires, client=tenant, due_within_days=5,
                                  now=lambda: then)  # fmt: skip
        today = await onboard.run(config, requests=hires, client=tenant, due_within_days=5)
        return early, today

    early, today = against(lambda: fake_tenant(["ada@contoso.com"]), work)
    assert (early.issued, early.not_yet_due) == ([], 1)
    assert [s.reason for s in early.skipped] == [Reason.NOT_YET_DUE]
    assert early.started == then and early.finished == then
    assert early.run_id.startswith(f"{then:%Y%m%d-%H%M%S}")
    assert [i.origin for i in today.issued] == [Origin("hr-feed", 1)]


def test_a_clock_without_a_zone_is_refused(tmp_path: Path) -> None:
    """now= returning a naive datetime is a ValueError saying so, before anything is sent."""
    config = config_for(tmp_path)

    async def work(tenant: FakeTenant) -> None:
        with pytest.raises(ValueError, match="without a zone"):
            await onboard.run(config, requests=[request(1, "ada@contoso.com")], client=tenant,
                              now=lambda: datetime.now())  # fmt: skip

    against(lambda: fake_tenant(["ada@contoso.com"]), work)


def test_run_with_throttling_and_faults_accounts_for_every_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Throttled, flaky Graph losing answers: every row ends once, each pass is Graph's own,
    and no pass value reaches the log."""
    state = SimulatorState(
        users(*GOOD, "outsider@contoso.com", "admin@contoso.com",
              outsider={"in_pass_policy": False}, admin={"forbidden": True}),
        faults=Faults(latency_ms=2, fault_rate=0.15, lost_response_rate=0.1,
                      throttle_rate=100, throttle_burst=3),
        seed=11,
    )  # fmt: skip
    lines = ["Name,Work Email,Start Date,Lifetime"]
    lines += [f"Hire {n},{upn},{SOON[n % 5]}," for n, upn in enumerate(GOOD)]
    lines += [f"Ghost,ghost@contoso.com,{SOON[0]},", f"Out,outsider@contoso.com,{SOON[0]},",
              f"Admin,admin@contoso.com,{SOON[0]},", "Bad date,baddate@contoso.com,someday,",
              f"Again,{GOOD[3]},{SOON[3]},"]  # fmt: skip
    sheet = tmp_path / "hires.csv"
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # A ceiling well above the budget, so the start is sure to run into 429s.
    config = config_for(tmp_path, max_attempts=20, max_rate=1000)
    caplog.set_level(logging.DEBUG)

    async def work(tenant: FakeTenant) -> RunReport:
        return await onboard.run(config, [sheet], client=tenant)

    report = against(lambda: fake_tenant(state=state, config=config), work)
    assert report.status is RunStatus.COMPLETED and report.failures  # the CLI: exit 1
    seen = [o.origin.row for o in [*report.issued, *report.failed, *report.skipped]]
    assert sorted(seen) == list(range(2, 2 + len(GOOD) + 5))  # every row exactly once
    assert {f.user: (f.reason, f.shown) for f in report.failed} == {
        "ghost@contoso.com": (Reason.USER_NOT_FOUND, "User not found"),
        "outsider@contoso.com": (Reason.OUTSIDE_POLICY, "Outside the pass policy"),
        "admin@contoso.com": (Reason.PERMISSION_DENIED, "Permission denied"),
        "baddate@contoso.com": (Reason.INVALID, "Invalid Start Date"),
    }
    assert [(s.origin.row, s.reason, s.detail) for s in report.skipped] == [
        (46, Reason.REPEATED, "same as row 5")
    ]
    assert len(report.issued) == len(GOOD)
    for issued in report.issued:  # the reported pass is the one Graph holds now
        assert issued.temporary_access_pass == state.current_pass(issued.request.user)
    assert state.counts.get("429", 0) > 0 and state.counts.get("lost", 0) > 0
    assert max(i.attempts for i in report.issued) > 1
    assert "request-id" in caplog.text  # requests really were logged
    for created in state.issued:  # no pass value, current or replaced, was logged
        assert created.value not in caplog.text


def test_late_completing_requests_are_caught_and_issued_again(tmp_path: Path) -> None:
    """A create that times out but completes at Graph after its retry is found and fixed."""
    state = SimulatorState(
        users(*GOOD[:12]), faults=Faults(late_create_rate=0.4, late_create_seconds=0.5), seed=5
    )
    config = config_for(tmp_path, timeout_seconds=0.2, settle_seconds=0.6, max_attempts=10)
    start = datetime.fromisoformat(SOON[0]).replace(hour=8, tzinfo=UTC)
    hires = [request(n, upn, start) for n, upn in enumerate(GOOD[:12], start=2)]

    async def work(tenant: FakeTenant) -> RunReport:
        return await onboard.run(config, requests=hires, client=tenant)

    report = against(lambda: fake_tenant(state=state, config=config), work)
    # What the CLI exits 0 on: completed, nothing failed, nothing needing attention.
    assert report.status is RunStatus.COMPLETED
    assert (report.failed, report.held_elsewhere, report.attention) == ([], [], [])
    assert state.counts.get("late", 0) > 0
    assert len(report.issued) == 12
    for issued in report.issued:
        assert issued.temporary_access_pass == state.current_pass(issued.request.user)
    notes = " ".join(i.note for i in report.issued)
    assert "confirmed with Graph" in notes or "issued again" in notes


def test_internal_error_still_writes_the_audit(tmp_path: Path) -> None:
    """A bug mid-run (here in the caller's progress hook, just before the passes are sent)
    propagates as it is, and the audit holds every row, each "not sent" (none was sent
    before the bug, so none holds a pass)."""
    config = config_for(tmp_path)
    hires = [request(n, upn) for n, upn in enumerate(GOOD, start=2)]

    def phase(doing: str) -> None:
        if doing == "checking and issuing passes":
            raise RuntimeError("secret detail")

    async def work(tenant: FakeTenant) -> dict[str, str]:
        with pytest.raises(RuntimeError, match="secret detail"):
            await onboard.run(config, requests=hires, client=tenant, on_phase=phase)
        return tenant.passes()

    assert against(lambda: fake_tenant(GOOD), work) == {}
    (path,) = (tmp_path / "audit").glob("onboard-*.xlsx")
    rows = read_audit(path)["Failed"]
    assert [r["Reason"] for r in rows] == ["Not sent: run stopped"] * len(GOOD)
    assert all("an internal error, RuntimeError" in str(r["Detail"]) for r in rows)


def test_the_fake_tenant_renews_a_token_graph_refuses(tmp_path: Path) -> None:
    """Tokens revoked mid-test (as if expired): the client gets a new one and the run goes on."""
    config = config_for(tmp_path)

    async def work(tenant: FakeTenant) -> RunReport:
        tenant.state.revoke_tokens()
        return await onboard.run(config, requests=[request(1, "ada@contoso.com")],
                                 client=tenant)  # fmt: skip

    report = against(lambda: fake_tenant(["ada@contoso.com"]), work)
    assert [i.origin for i in report.issued] == [Origin("hr-feed", 1)]


def test_import_is_light_and_every_export_resolves() -> None:
    """`import onboard` loads no run machinery; every name in __all__ is there, and
    onboard.validate stays the function once its module is loaded."""
    done = subprocess.run(
        [sys.executable, "-B", "-c", "import onboard, sys; print(sorted(m for m in sys.modules "
         "if m.startswith('onboard')))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert done.stdout.strip() == "['onboard']"
    assert {"run", "validate", "load_config", "RunReport", "RunStatus", "Validation", "Issued",
            "Failed", "Skipped", "PassRequest", "Origin", "Reason", "ReasonHelp",
            "REASON_HELP"} <= set(onboard.__all__)  # fmt: skip
    for name in onboard.__all__:
        assert getattr(onboard, name) is not None, name
    module = importlib.import_module("onboard.validation")
    assert onboard.validate is module.validate
    assert callable(onboard.run) and isinstance(onboard.__version__, str)


def test_the_docs_example_runs_and_prints_what_the_docs_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/api.md's example, run as it is (its temporary folder under tmp_path)."""
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", page, re.S)
    shown = re.search(r"It prints:\n\n```text\n(.*?)```", page, re.S)
    assert code is not None and shown is not None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), "docs/api.md", "exec"), {"__name__": "docs_example"})
    assert out.getvalue() == shown.group(1)


def documented_signatures(page: str) -> dict[str, ast.arguments]:
    """The functions whose signatures docs/api.md shows, as parsed from its code blocks."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", page, re.S):
        if re.match(r"(@\w+\n)?(async )?def ", block):
            tree = ast.parse(block.rstrip() + ": ...\n")
            function = tree.body[0]
            assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            found[function.name] = function.args
    return found


def test_the_docs_show_each_signature_as_the_code_has_it() -> None:
    """docs/api.md's run, validate, load_config, fake_tenant, status and revoke: the same
    parameters, in the same order, of the same kind, with the same defaults as the code's."""
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    shown = documented_signatures(page)
    functions = {"run": onboard.run, "validate": onboard.validate,
                 "load_config": onboard.load_config, "fake_tenant": fake_tenant,
                 "status": onboard.status, "revoke": onboard.revoke}  # fmt: skip
    assert sorted(shown) == sorted(functions)
    for name, function in functions.items():
        args = shown[name]
        given = [(a.arg, "positional") for a in args.args]
        given += [(a.arg, "keyword") for a in args.kwonlyargs]
        defaults = [*([None] * (len(args.args) - len(args.defaults))), *args.defaults]
        written = [None if d is None else ast.unparse(d) for d in [*defaults, *args.kw_defaults]]
        params = inspect.signature(function).parameters.values()
        actual = [(p.name, "keyword" if p.kind is p.KEYWORD_ONLY else "positional")
                  for p in params]  # fmt: skip
        assert given == actual, name
        assert written == [None if p.default is p.empty else repr(p.default) for p in params]
