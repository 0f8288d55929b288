"""Graph's throttling as the simulator plays it, and JSON batching end to end."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from conftest import GOOD, SOON, FakeClock, audit_rows, latest_audit, users
from openpyxl import load_workbook

from onboard.cli import EXIT_ROWS_FAILED, main
from onboard.simulator import Call, Faults, SimulatorState


def test_simulator_bucket_refused_requests_still_spend_budget() -> None:
    """Burst 5 at 10/s: five pass, the sixth is refused; refusing more deepens the debt, so
    the wait grows; usage is reported once more than 80% is spent."""
    clock = FakeClock()
    state = SimulatorState(faults=Faults(throttle_rate=10, throttle_burst=5), clock=clock)
    create = Call("POST", "users/ada@contoso.com/authentication/temporaryAccessPassMethods", {},
                  "r", "c", "https://graph.invalid")  # fmt: skip
    answers = [state.spend(create) for _ in range(5)]
    assert [refusal for refusal, _, _ in answers] == [None] * 5
    assert [usage is not None for _, _, usage in answers] == [False, False, False, False, True]
    first, _, usage = state.spend(create)
    assert first is not None and first.budget == "WriteLimitExceeded"
    assert first.wait == pytest.approx(0.2) and usage is not None and usage > 1.0
    second, _, _ = state.spend(create)
    assert second is not None and second.wait == pytest.approx(0.3)  # the refused one counted
    clock.now = 0.3  # waiting it out is enough
    assert state.spend(create)[0] is None


def test_batching_mixed_answers_end_as_the_right_outcomes(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """batch_size 20 against a simulator whose burst (15) is smaller than a batch: 201s are
    issued, a 404 fails, 429'd sub-requests are sent again and issued; every audited pass is
    the one Graph holds, and the Summary counts the 429s."""
    state = SimulatorState(
        users(*GOOD),
        faults=Faults(throttle_rate=200, throttle_burst=15, latency_ms=2),
        seed=5,
    )
    sim = serve_simulator(state)
    lines = ["Name,Work Email,Start Date,Lifetime"]
    lines += [f"Hire {n},{upn},{SOON[n % 5]}," for n, upn in enumerate(GOOD)]
    lines.append(f"Ghost,ghost@contoso.com,{SOON[0]},")
    path = tmp_path / "hires.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = sim.config(
        tmp_path / "c.yaml", run={"batch_size": 20, "max_attempts": 30, "max_rate": 2000}
    )
    assert main(["run", str(path), "-c", str(config)]) == EXIT_ROWS_FAILED
    audit = latest_audit(tmp_path / "audit")
    rows = audit_rows(audit)
    assert [(r["User"], r["Reason"], r["HTTP status"]) for r in rows["Failed"]] == [
        ("ghost@contoso.com", "User not found", 404)
    ]
    assert sorted(r["User"] for r in rows["Issued"]) == sorted(GOOD)
    for row in rows["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))
    assert state.counts["batches"] >= 3  # 41 rows: at least three batches
    assert state.counts["429"] > 0  # some sub-requests were throttled ...
    assert max(r["Attempts"] for r in rows["Issued"]) > 1  # ... and sent again
    summary = {r[0]: r[1:] for r in load_workbook(audit)["Summary"].iter_rows(values_only=True)}
    assert summary["429 answers"][0] == state.counts["429"]
    rate, unit = summary["Effective write rate"]
    assert isinstance(rate, (int, float)) and rate > 0 and unit == "requests/s"


def test_lost_batch_answers_are_confirmed_with_graph(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """Batches whose answers are lost after the passes were made: the rows are sent again,
    confirmed with Graph, and the audit holds exactly the passes Graph holds."""
    state = SimulatorState(users(*GOOD), faults=Faults(lost_response_rate=0.3), seed=1)
    sim = serve_simulator(state)
    lines = ["Name,Work Email,Start Date,Lifetime"]
    lines += [f"Hire {n},{upn},{SOON[n % 5]}," for n, upn in enumerate(GOOD)]
    path = tmp_path / "hires.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # One request at a time: the seeded faults fall on the same requests whatever the load.
    config = sim.config(tmp_path / "c.yaml", run={"batch_size": 10, "max_attempts": 20,
                                                  "concurrency": 1})  # fmt: skip
    assert main(["run", str(path), "-c", str(config)]) == 0
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    assert state.counts.get("lost_batch", 0) > 0
    # The rows of a lost batch were checked with Graph (a GET each), not just sent again.
    confirmed = [r for r in rows["Issued"] if "confirmed with Graph" in str(r["Note"] or "")]
    assert confirmed
    assert all(r["Attempts"] > 1 for r in confirmed)
    assert sorted(r["User"] for r in rows["Issued"]) == sorted(GOOD)
    assert rows["Failed"] == []
    for row in rows["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))


def test_a_journal_that_cannot_be_written_stops_the_run(
    tmp_path: Path,
    serve_simulator,
    secret_env,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A full disk under the journal stops the run with exit 3 instead of handing out more
    passes it cannot keep; the audit still holds every pass Graph returned before that."""
    import sqlite3

    state = SimulatorState(users(*GOOD), seed=1)
    sim = serve_simulator(state)
    calls = {"n": 0}

    class FillsUp(sqlite3.Connection):
        """A database whose disk is full after a few batches of rows are written."""

        def executemany(self, sql: str, params: Any, /) -> sqlite3.Cursor:
            calls["n"] += 1
            if calls["n"] > 6:
                raise sqlite3.OperationalError("database or disk is full")
            return super().executemany(sql, params)

    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=FillsUp))
    lines = ["Name,Work Email,Start Date,Lifetime"]
    lines += [f"Hire {n},{upn},{SOON[n % 5]}," for n, upn in enumerate(GOOD)]
    path = tmp_path / "hires.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = sim.config(tmp_path / "c.yaml", run={"concurrency": 2})
    assert main(["run", str(path), "-c", str(config)]) == 3
    assert "cannot write the run journal" in capsys.readouterr().err
    assert len(state.issued) < len(GOOD)  # it stopped, rather than carry on
    rows = audit_rows(latest_audit(tmp_path / "audit"))
    for row in rows["Issued"]:
        assert row["Temporary Access Pass"] == state.current_pass(str(row["User"]))

    def ids(sheet: list[dict[str, object]]) -> set[str]:
        return {state.find_user(str(r["User"])).id for r in sheet}  # type: ignore[union-attr]

    made = {p.user_id for p in state.issued}
    issued = ids(rows["Issued"])
    unfinished = ids([r for r in rows["Failed"] if r["Reason"] == "Not finished"])
    # Every pass Graph made is in the audit, or its row (in flight when the run stopped) says
    # it may have one and must be run again.
    assert issued <= made <= issued | unfinished
    assert issued
