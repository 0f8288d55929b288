"""Delivery by mail: one message per recipient holding exactly their hires' passes, paced to
Exchange's limits, journaled, never sent twice; --preview; `onboard deliver`; the simulator."""

from __future__ import annotations

import asyncio
import email
import email.policy
import signal
import ssl
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    MAIL_FAST,
    MAIL_SENDER,
    FakeClock,
    Served,
    audit_path_from,
    mail_config,
    mail_sheet,
    mail_tenant,
    passes_in,
    read_audit,
    run_cli,
    run_id_from,
    shown_in_html,
    wait_until,
)

from onboard.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_ROWS_FAILED, main
from onboard.config import DeliverySettings
from onboard.deliver import Hire, Sending, State, deliver
from onboard.graph import GraphClient
from onboard.journal import Journal
from onboard.mail import Templates
from onboard.outcomes import Origin
from onboard.rate import MAIL_HEADROOM, MAILBOX_CONCURRENCY, MAILBOX_MESSAGES_PER_MINUTE, Pacing
from onboard.retrying import Retries
from onboard.simulator import Faults

TOKEN = "delivery-test-token"


def test_every_manager_gets_one_message_with_exactly_their_hires_passes(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Eight hires under three managers: each manager one message, with their hires' passes and
    no one else's; the audit says to whom and when; at most 4 sendMail requests at once."""
    teams = {"ann@contoso.com": 3, "bob@contoso.com": 4, "cy@contoso.com": 1}
    led_by = [manager for manager, size in teams.items() for _ in range(size)]
    hires: dict[str, str | None] = {f"hire{n}@contoso.com": m for n, m in enumerate(led_by)}
    state = mail_tenant(hires, list(teams), faults=Faults(mail_per_minute=None, mail_latency_ms=50))
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", list(hires))
    assert main(["run", str(path), "-c", str(mail_config(sim, tmp_path))]) == EXIT_OK
    out = capsys.readouterr().out
    assert "delivery by mail: 3 messages sent, 0 failed, 0 of unknown fate" in out
    assert len(state.mail) == 3
    for manager in teams:
        (mail,) = state.mail_to(manager)
        assert passes_in(mail, state, list(hires)) == {h for h, m in hires.items() if m == manager}
        assert mail.sender == MAIL_SENDER and mail.content_type == "HTML"
        assert mail.save_to_sent_items is False
    assert state.mail_in_flight_peak <= MAILBOX_CONCURRENCY
    rows = read_audit(audit_path_from(out))["Issued"]
    assert {r["User"]: (r["Delivered to"], r["Delivery"]) for r in rows} == {
        h: (m, "sent") for h, m in hires.items()
    }
    assert all(r["Delivered at"] is not None for r in rows)
    summary = {r["Item"]: r["Value"] for r in read_audit(audit_path_from(out))["Summary"]}
    assert (summary["Messages sent"], summary["Hires mailed to nobody"]) == (3, 0)


def test_a_hire_without_a_manager_or_whose_manager_has_no_mailbox_is_mailed_to_nobody(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No manager, or a manager with no mailbox: no message carries that pass, the row's
    delivery fails with its reason, the pass stays in the audit, and the run exits 1."""
    hires = {"lone@contoso.com": None, "far@contoso.com": "nomail@contoso.com",
             "ok@contoso.com": "boss@contoso.com"}  # fmt: skip
    state = mail_tenant(hires, ["boss@contoso.com", "nomail@contoso.com"],
                   no_mailbox=["nomail@contoso.com"])  # fmt: skip
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", list(hires))
    assert main(["run", str(path), "-c", str(mail_config(sim, tmp_path))]) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    assert "2 hires mailed to nobody" in out
    (mail,) = state.mail
    assert mail.to == ("boss@contoso.com",)
    assert passes_in(mail, state, list(hires)) == {"ok@contoso.com"}
    sheets = read_audit(audit_path_from(out))
    rows = {r["User"]: r for r in sheets["Issued"]}
    assert {u: r["Temporary Access Pass"] for u, r in rows.items()} == {
        u: state.current_pass(u) for u in hires
    }
    assert rows["lone@contoso.com"]["Delivered to"] is None
    assert str(rows["lone@contoso.com"]["Delivery"]).startswith("failed: no manager.")
    assert str(rows["far@contoso.com"]["Delivery"]).startswith("failed: recipient has no mailbox.")
    assert sheets["Failed"] == []  # a pass mailed to nobody is still an issued pass
    summary = {r["Item"]: r["Value"] for r in sheets["Summary"]}
    assert (summary["Messages sent"], summary["Hires mailed to nobody"]) == (1, 2)


def test_a_rerun_of_the_sheet_sends_nothing(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same sheet again: every pass was issued before, so no message is sent."""
    hires = {"a@contoso.com": "boss@contoso.com", "b@contoso.com": "boss@contoso.com"}
    state = mail_tenant(hires, ["boss@contoso.com"])
    sim = serve_simulator(state)
    path, cfg = mail_sheet(tmp_path / "hires.csv", list(hires)), mail_config(sim, tmp_path)
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_OK
    assert (len(state.mail), state.mail_requests) == (1, 1)
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "2 skipped" in out and "delivery by mail: 0 messages sent" in out
    assert (len(state.mail), state.mail_requests) == (1, 1)


def test_kill_9_during_delivery_then_resume_sends_no_message_twice_and_every_unsent_one(
    tmp_path: Path, serve_simulator: Callable[..., Served], secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL while messages are on their way, then the same command: no manager gets two
    messages, every message not sent yet is sent, and one whose request was out is reported
    as of unknown fate (not resent) until `onboard deliver --to` sends it on purpose."""
    managers = [f"m{n:02d}@contoso.com" for n in range(12)]
    hires = {f"h{n:02d}@contoso.com": managers[n % 12] for n in range(24)}
    state = mail_tenant(hires, managers, faults=Faults(mail_per_minute=None, mail_latency_ms=300))
    sim = serve_simulator(state)
    path, cfg = mail_sheet(tmp_path / "hires.csv", list(hires)), mail_config(sim, tmp_path)
    sender_id = state.find_user(MAIL_SENDER).id  # type: ignore[union-attr]
    proc = run_cli(cfg, str(path))
    wait_until(lambda: len(state.mail) >= 3 and state._mail_in_flight.get(sender_id, 0) > 0)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_until(lambda: state._mail_in_flight.get(sender_id, 0) == 0)  # the lost ones land
    before = {m: len(state.mail_to(m)) for m in managers}
    assert 3 <= sum(before.values()) < len(managers)

    code = main(["run", str(path), "-c", str(cfg)])  # the same command, in this process
    out, err = capsys.readouterr()
    assert "resumed run" in out, err
    run_id = run_id_from(out)
    rows = read_audit(audit_path_from(out))["Issued"]
    fate = {r["Delivered to"]: str(r["Delivery"]) for r in rows}
    unknown = sorted(m for m, said in fate.items() if said.startswith("unknown"))
    assert unknown and "of unknown fate" in out and code == EXIT_ROWS_FAILED
    for manager in managers:
        got = len(state.mail_to(manager))
        assert got == 1 or (got == 0 and manager in unknown), (manager, got)
        expected = {h for h, m in hires.items() if m == manager}
        for mail in state.mail_to(manager):
            assert passes_in(mail, state, list(hires)) == expected

    sent_before = len(state.mail)
    resend = [arg for manager in unknown for arg in ("--to", manager)]
    assert main(["deliver", run_id, "-c", str(cfg), *resend]) == EXIT_OK
    assert sorted(m.to[0] for m in state.mail[sent_before:]) == unknown


@pytest.mark.parametrize("sender", ["nomailbox@contoso.com", "ghost@contoso.com"])
def test_a_sender_without_a_mailbox_stops_the_run_before_any_pass(
    sender: str,
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """delivery.sender is a user without a mailbox, or nobody: exit 2, naming the key, before
    the first pass is created."""
    state = mail_tenant({"a@contoso.com": "boss@contoso.com"}, ["boss@contoso.com",
                   "nomailbox@contoso.com"], no_mailbox=["nomailbox@contoso.com"])  # fmt: skip
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", ["a@contoso.com"])
    assert main(["run", str(path), "-c", str(mail_config(sim, tmp_path, sender=sender))]) == (
        EXIT_BAD_INPUT
    )
    err = capsys.readouterr().err
    assert f"delivery.sender {sender}" in err and "nothing was issued" in err
    assert state.issued == [] and state.mail_requests == 0


def test_sendmail_rejects_a_sender_without_a_mailbox_as_exchange_does(
    serve_simulator: Callable[..., Served],
) -> None:
    """The simulator's sendMail: 404 MailboxNotEnabledForRESTAPI for a user without a mailbox,
    404 ErrorInvalidUser for nobody, 202 for a mailbox."""
    state = mail_tenant({}, ["nomailbox@contoso.com"], no_mailbox=["nomailbox@contoso.com"])
    served = serve_simulator(state)
    message = {"subject": "s", "body": {"contentType": "Text", "content": "x"},
               "toRecipients": [{"emailAddress": {"address": "a@contoso.com"}}]}  # fmt: skip

    async def work(client: GraphClient) -> list[tuple[int | None, str | None]]:
        answers: list[tuple[int | None, str | None]] = []
        for sender in ("nomailbox@contoso.com", "ghost@contoso.com", MAIL_SENDER):
            try:
                await client.send_mail(sender, message, save_to_sent_items=False)
                answers.append((202, None))
            except Exception as exc:  # GraphError
                answers.append((getattr(exc, "status", None), getattr(exc, "code", None)))
        return answers

    unpaced = Pacing(max_mail_per_minute=MAIL_FAST["max_per_minute"])  # not what this tests
    assert with_client(served, work, unpaced) == [
        (404, "MailboxNotEnabledForRESTAPI"), (404, "ErrorInvalidUser"), (202, None)
    ]  # fmt: skip


class Tokens:
    async def token(self) -> str:
        return TOKEN

    async def refresh(self, rejected: str) -> str:
        return TOKEN


def with_client(served: Served, work: Callable[[GraphClient], Any], pacing: Pacing | None = None
                ) -> Any:  # fmt: skip
    """Run `work` with a Graph client of the production code path against the simulator."""
    served.state.tokens[TOKEN] = float("inf")

    async def run() -> Any:
        context = ssl.create_default_context(cafile=str(served.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            client = GraphClient(http, served.url, Tokens(), pacing=pacing)  # type: ignore[arg-type]
            return await asyncio.wait_for(work(client), timeout=60)

    return asyncio.run(run())


def deliver_to_many(
    tmp_path: Path, served: Served, clock: FakeClock, per_minute: float, count: int
) -> tuple[Pacing, list[float]]:
    """`count` hires, each under a manager of their own, delivered by the deliver stage with
    the client pacing mail at `per_minute`, on the fake clock. Returns the pacing and the
    simulated time at which each message was accepted."""
    state = served.state
    accepted: list[float] = []
    state.on_mail = lambda mail: accepted.append(clock())
    settings = DeliverySettings(method="mail", sender=MAIL_SENDER, max_per_minute=per_minute)
    how = Sending(settings, Templates(settings), "UTC", True,
                  Retries(30, 0.01, 0.05, sleep=clock.sleep))  # fmt: skip
    hires = [Hire(Origin("hires.csv", n + 2), f"h{n}@contoso.com", None, f"value-{n:04d}",
                  None, None, True) for n in range(count)]  # fmt: skip
    pacing = Pacing(max_mail_per_minute=per_minute, clock=clock, sleep=clock.sleep)
    journal = Journal(tmp_path / "journal.sqlite").open()
    try:
        report = with_client(served, lambda c: deliver(c, journal, "run", hires, how), pacing)
    finally:
        journal.close()
    assert report.count(State.SENT) == count
    return pacing, accepted


def most_in_a_minute(times: Sequence[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 60) for start in times)


def test_delivery_is_paced_under_thirty_a_minute(
    tmp_path: Path, serve_simulator: Callable[..., Served]
) -> None:
    """45 messages at the default pace, against Exchange's 30 a minute: never more than 30 in
    any simulated minute, each accepted once, spread over at least 93 simulated seconds (one
    every 2.1 s: 95% of the limit) rather than sent in a burst."""
    clock = FakeClock()
    hires = {f"h{n}@contoso.com": f"m{n}@contoso.com" for n in range(45)}
    state = mail_tenant(hires, list(hires.values()), faults=Faults(), clock=clock)
    _, accepted = deliver_to_many(
        tmp_path, serve_simulator(state), clock, MAILBOX_MESSAGES_PER_MINUTE, 45
    )
    assert most_in_a_minute(accepted) <= MAILBOX_MESSAGES_PER_MINUTE
    slot = 60 / MAILBOX_MESSAGES_PER_MINUTE / MAIL_HEADROOM
    assert accepted[-1] >= 44 * slot - 0.1  # the last goes once 44 slots have passed
    assert len({m.to for m in state.mail}) == 45


def test_a_sendmail_429_pauses_only_mail_and_every_message_goes_once(
    tmp_path: Path, serve_simulator: Callable[..., Served]
) -> None:
    """A client set faster than Exchange allows meets 429 ApplicationThrottled: mail waits its
    Retry-After (the write and read budgets never pause), no simulated minute takes more than
    30, and each of the 70 messages is accepted exactly once."""
    clock = FakeClock()
    hires = {f"h{n}@contoso.com": f"m{n}@contoso.com" for n in range(70)}
    state = mail_tenant(hires, list(hires.values()), faults=Faults(), clock=clock)
    pacing, accepted = deliver_to_many(tmp_path, serve_simulator(state), clock, 600, 70)
    assert state.counts["429 mail"] > 0 and pacing.mail.throttles > 0
    assert pacing.mail.paused_seconds > 0
    assert pacing.writes.paused_seconds == pacing.reads.paused_seconds == 0
    assert most_in_a_minute(accepted) <= MAILBOX_MESSAGES_PER_MINUTE
    assert sorted(m.to[0] for m in state.mail) == sorted(hires.values())  # each once


def test_preview_sends_nothing_and_writes_owner_only_eml_files(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """run --preview DIR: no sendMail at all; one owner-only .eml per manager, in an
    owner-only folder, holding their hires' passes; then `onboard deliver` sends them."""
    hires = {"a@contoso.com": "boss@contoso.com", "b@contoso.com": "boss@contoso.com",
             "c@contoso.com": "chief@contoso.com"}  # fmt: skip
    state = mail_tenant(hires, ["boss@contoso.com", "chief@contoso.com"])
    sim = serve_simulator(state)
    path, cfg = mail_sheet(tmp_path / "hires.csv", list(hires)), mail_config(sim, tmp_path)
    preview = tmp_path / "preview"
    assert main(["run", str(path), "-c", str(cfg), "--preview", str(preview)]) == EXIT_OK
    out = capsys.readouterr().out
    assert state.mail_requests == 0 and "2 messages written" in out
    assert stat.S_IMODE(preview.stat().st_mode) == 0o700
    files = sorted(preview.glob("*.eml"))
    assert len(files) == 2
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        parsed = email.message_from_bytes(file.read_bytes(), policy=email.policy.default)
        text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
        manager = parsed["To"].addresses[0].addr_spec
        mine = {h for h, m in hires.items() if m == manager}
        assert {h for h in hires if state.current_pass(h) in text} == mine
        assert {h for h in hires if shown_in_html(state.current_pass(h) or "\0") in html} == mine
    assert read_audit(audit_path_from(out))["Issued"][0]["Delivery"].startswith("previewed")

    run_id = run_id_from(out)
    assert main(["deliver", run_id, "-c", str(cfg)]) == EXIT_OK
    assert sorted(m.to for m in state.mail) == [("boss@contoso.com",), ("chief@contoso.com",)]


def test_a_display_name_from_the_sheet_cannot_inject_html(
    tmp_path: Path, serve_simulator: Callable[..., Served], secret_env: dict[str, str]
) -> None:
    """Display names like <script> or <a href=...> reach the message as text, escaped."""
    hires = {"a@contoso.com": "boss@contoso.com", "b@contoso.com": "boss@contoso.com"}
    state = mail_tenant(hires, ["boss@contoso.com"])
    sim = serve_simulator(state)
    names = ['"<script>alert(1)</script>"', '"<a href=""https://evil.example"">click</a>"']
    path = mail_sheet(tmp_path / "hires.csv", list(hires), **{"Display Name": names})
    assert main(["run", str(path), "-c", str(mail_config(sim, tmp_path))]) == EXIT_OK
    (mail,) = state.mail
    assert "<script>" not in mail.body and "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.body
    assert "<a href=" not in mail.body.replace('<a href="https://myaccount', "").replace(
        '<a href="https://aka.ms', ""
    )
    assert "&lt;a href=&#34;https://evil.example&#34;&gt;click&lt;/a&gt;" in mail.body


def test_a_lost_answer_is_reported_never_resent_and_deliver_to_resends_from_the_encrypted_audit(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exchange queues the message but the answer is lost (504): unknown fate, exit 1; a
    re-run and `onboard deliver` send nothing; `deliver --to` sends it again, reading the
    passes from the encrypted audit workbook, and records it there."""
    monkeypatch.setenv("AUDIT_PW", "correct horse")
    hires = {"a@contoso.com": "boss@contoso.com", "b@contoso.com": "boss@contoso.com"}
    state = mail_tenant(hires, ["boss@contoso.com"], faults=Faults(mail_per_minute=None,
                                                             mail_lost_rate=1.0))  # fmt: skip
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", list(hires))
    cfg = sim.config(tmp_path / "c.yaml", output={"password_env": "AUDIT_PW"},
                     delivery={"method": "mail", "sender": MAIL_SENDER, **MAIL_FAST})  # fmt: skip
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    assert "1 of unknown fate" in out and "--to ADDRESS" in out
    run_id = run_id_from(out)
    assert (len(state.mail), state.mail_requests) == (1, 1)  # no retry of a lost answer
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_OK
    assert main(["deliver", run_id, "-c", str(cfg)]) == EXIT_ROWS_FAILED
    assert state.mail_requests == 1

    state.faults.mail_lost_rate = 0.0
    assert main(["deliver", run_id, "-c", str(cfg), "--to", "BOSS@contoso.com"]) == EXIT_OK
    assert "audit workbook updated" in capsys.readouterr().out
    assert len(state.mail) == 2
    assert passes_in(state.mail[-1], state, list(hires)) == set(hires)
    journal = Journal(tmp_path / "state" / "journal.sqlite").open(lock=False)
    try:
        audit = Path(journal.run(run_id).audit_path)  # type: ignore[union-attr, arg-type]
    finally:
        journal.close()
    assert not audit.read_bytes().startswith(b"PK")  # still encrypted
    from onboard.audit import read_issued

    assert {p.user: p.cells["Delivery"] for p in read_issued(audit, "correct horse")} == {
        h: "sent" for h in hires
    }


def test_no_pass_value_reaches_the_log_the_console_or_the_journal(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a run that mailed the passes, with -vv and a log file, no pass value is in the
    console output, the log file, or any of the journal's files."""
    hires = {"a@contoso.com": "boss@contoso.com", "b@contoso.com": None}
    state = mail_tenant(hires, ["boss@contoso.com"])
    sim = serve_simulator(state)
    path, log = mail_sheet(tmp_path / "hires.csv", list(hires)), tmp_path / "run.log"
    argv = ["-vv", "run", str(path), "-c", str(mail_config(sim, tmp_path)), "--log-file", str(log)]
    assert main(argv) == EXIT_ROWS_FAILED
    said = capsys.readouterr()
    values = [state.current_pass(h) for h in hires]
    assert all(v and len(v) >= 8 for v in values)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    for value in values:
        assert value not in said.out + said.err + log.read_text()
        assert value.encode() not in stored  # type: ignore[union-attr]


def test_deliver_to_a_column_of_the_sheet_and_a_missing_column_stops_before_any_pass(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """delivery.to column mails each pass to the sheet's Deliver To address (a blank or bad
    one: to nobody); a sheet without that column stops the run (exit 2) before any pass."""
    hires = {"a@contoso.com": None, "b@contoso.com": None, "c@contoso.com": None}
    state = mail_tenant(hires, ["desk@contoso.com"])
    sim = serve_simulator(state)
    cfg = mail_config(sim, tmp_path, to="column")
    bare = mail_sheet(tmp_path / "bare.csv", list(hires))
    assert main(["run", str(bare), "-c", str(cfg)]) == EXIT_BAD_INPUT
    assert "input.columns.deliver_to" in capsys.readouterr().err and state.issued == []

    given = ["desk@contoso.com", "", "not-an-address"]
    path = mail_sheet(tmp_path / "hires.csv", list(hires), **{"Deliver To": given})
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_ROWS_FAILED
    (mail,) = state.mail
    assert mail.to == ("desk@contoso.com",)
    assert passes_in(mail, state, list(hires)) == {"a@contoso.com"}
    rows = {r["User"]: r["Delivery"] for r in read_audit(audit_path_from(
        capsys.readouterr().out))["Issued"]}  # fmt: skip
    assert str(rows["b@contoso.com"]).startswith("failed: no address in the sheet")
    assert str(rows["c@contoso.com"]).startswith("failed: not an email address")


def test_a_sponsor_gets_the_pass_and_two_sponsors_get_nothing(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """delivery.to sponsor: the one sponsor with a mailbox is mailed; a hire with two sponsors
    is mailed to nobody (a pass goes to one person)."""
    hires = {"g1@contoso.com": None, "g2@contoso.com": None}
    state = mail_tenant(hires, ["s1@contoso.com", "s2@contoso.com"])
    state.find_user("g1@contoso.com").sponsors = ["s1@contoso.com"]  # type: ignore[union-attr]
    state.find_user("g2@contoso.com").sponsors = ["s1@contoso.com", "s2@contoso.com"]  # type: ignore[union-attr]
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", list(hires))
    assert main(["run", str(path), "-c", str(mail_config(sim, tmp_path, to="sponsor"))]) == (
        EXIT_ROWS_FAILED
    )
    (mail,) = state.mail
    assert mail.to == ("s1@contoso.com",)
    assert passes_in(mail, state, list(hires)) == {"g1@contoso.com"}
    assert "several sponsors" in capsys.readouterr().out


def test_delivery_settings_and_templates_are_checked_before_anything_is_sent(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """method mail without a sender, and a body template naming what does not exist: exit 2,
    naming the key, and no request is made."""
    state = mail_tenant({"a@contoso.com": "boss@contoso.com"}, ["boss@contoso.com"])
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", ["a@contoso.com"])
    cfg = sim.config(tmp_path / "c.yaml", delivery={"method": "mail"})
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_BAD_INPUT
    assert "delivery.sender" in capsys.readouterr().err
    template = tmp_path / "body.html"
    template.write_text("<p>{{ hires[0].nickname }}</p>", encoding="utf-8")
    cfg = mail_config(sim, tmp_path, template=str(template))
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_BAD_INPUT
    assert f"delivery.template {template}" in capsys.readouterr().err
    assert state.counts.get("graph_requests", 0) == 0 and state.issued == []
