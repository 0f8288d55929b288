"""Delivery by mail under attack: malformed addresses from the directory, the sheet and the
config, templates that fail on the real values, preview folders that cannot be written, and
a signal during delivery. None of them may crash a run (exit 4), leak a pass value, or leave
passes undelivered without saying how to deliver them."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    Served,
    audit_path_from,
    mail_config,
    mail_sheet,
    mail_tenant,
    passes_in,
    read_audit,
    run_cli,
    run_id_from,
    wait_until,
)

from onboard.cli import EXIT_BAD_INPUT, EXIT_ROWS_FAILED, main
from onboard.simulator import Faults

BOSS = "boss@contoso.com"


def test_a_manager_whose_directory_mail_is_malformed_is_mailed_to_nobody(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A manager whose directory mail the mail parser refuses ('<x@y>', 'x@y..com'): their
    hire is mailed to nobody ("not an email address"), the others are mailed, exit 1, no
    crash, and a second run of the same command finishes the same way."""
    hires = {"a@contoso.com": "odd@contoso.com", "b@contoso.com": "dots@contoso.com",
             "c@contoso.com": BOSS}  # fmt: skip
    state = mail_tenant(hires, ["odd@contoso.com", "dots@contoso.com", BOSS])
    state.find_user("odd@contoso.com").mail = "<odd@contoso.com>"  # type: ignore[union-attr]
    state.find_user("dots@contoso.com").mail = "dots@contoso..com"  # type: ignore[union-attr]
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", list(hires))
    assert main(["run", str(path), "-c", str(mail_config(sim, tmp_path))]) == EXIT_ROWS_FAILED
    out = capsys.readouterr().out
    (mail,) = state.mail
    assert mail.to == (BOSS,) and passes_in(mail, state, list(hires)) == {"c@contoso.com"}
    rows = {r["User"]: str(r["Delivery"]) for r in read_audit(audit_path_from(out))["Issued"]}
    assert rows["a@contoso.com"].startswith("failed: not an email address.")
    assert rows["b@contoso.com"].startswith("failed: not an email address.")
    assert "2 hires mailed to nobody" in out


def test_a_sheet_address_the_mail_parser_refuses_is_mailed_to_nobody(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """delivery.to column with a typo the loose pattern lets through ('desk@contoso..com'):
    that hire is mailed to nobody, the other is mailed, exit 1 (never 4)."""
    hires = {"a@contoso.com": None, "b@contoso.com": None}
    state = mail_tenant(hires, ["desk@contoso.com"])
    sim = serve_simulator(state)
    given = ["desk@contoso..com", "desk@contoso.com"]
    path = mail_sheet(tmp_path / "hires.csv", list(hires), **{"Deliver To": given})
    cfg = mail_config(sim, tmp_path, to="column")
    assert main(["run", str(path), "-c", str(cfg)]) == EXIT_ROWS_FAILED
    (mail,) = state.mail
    assert passes_in(mail, state, list(hires)) == {"b@contoso.com"}
    out = capsys.readouterr().out
    rows = {r["User"]: str(r["Delivery"]) for r in read_audit(audit_path_from(out))["Issued"]}
    assert rows["a@contoso.com"].startswith("failed: not an email address.")


@pytest.mark.parametrize(
    ("key", "value"),
    [("cc", ["audit@contoso..com"]), ("cc", ["ünï@contoso.com"]), ("cc", ["[@contoso.com"]),
     ("sender", "onboarding@contoso..com")],
)  # fmt: skip
def test_a_cc_or_sender_address_no_message_could_carry_stops_the_run_before_any_pass(
    key: str,
    value: list[str] | str,
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A delivery.cc or delivery.sender address that no message could carry (the loose
    pattern of the config lets it through): exit 2 naming the key, before any pass is issued,
    a preview too (not a crash, nor every message failing after the passes)."""
    state = mail_tenant({"a@contoso.com": BOSS}, [BOSS])
    sim = serve_simulator(state)
    path = mail_sheet(tmp_path / "hires.csv", ["a@contoso.com"])
    cfg = mail_config(sim, tmp_path, **{key: value})
    preview = ["--preview", str(tmp_path / "preview")]
    assert main(["run", str(path), "-c", str(cfg), *preview]) == EXIT_BAD_INPUT
    assert f"delivery.{key}" in capsys.readouterr().err
    assert state.issued == [] and state.mail_requests == 0


VALUE_IN_ERROR = [
    "{% if count > 1 %}{{ {}[hires[0].value] }}{% endif %}",  # UndefinedError naming the key
    "{% if count > 1 %}{{ hires[0].value | filesizeformat }}{% endif %}",  # ValueError
    "{% if count > 1 %}{{ hires[0].value / 2 }}{% endif %}",  # TypeError
]


@pytest.mark.parametrize("body", VALUE_IN_ERROR)
def test_a_template_failing_on_the_real_values_fails_its_message_and_shows_no_value(
    body: str,
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A body template that passes the check (one sample hire) but fails on a message of two
    real hires: the message fails ("template failed"), exit 1, no crash; no pass value in the
    console, the log, the journal, or the Delivery cell's reason."""
    hires = {"a@contoso.com": BOSS, "b@contoso.com": BOSS}
    state = mail_tenant(hires, [BOSS])
    sim = serve_simulator(state)
    template = tmp_path / "body.html"
    template.write_text(f"<p>{body}</p>", encoding="utf-8")
    path, log = mail_sheet(tmp_path / "hires.csv", list(hires)), tmp_path / "run.log"
    cfg = mail_config(sim, tmp_path, template=str(template))
    argv = ["-vv", "run", str(path), "-c", str(cfg), "--log-file", str(log)]
    assert main(argv) == EXIT_ROWS_FAILED
    said = capsys.readouterr()
    assert state.mail_requests == 0 and "template failed" in said.out
    values = [str(state.current_pass(h)) for h in hires]
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    cells = [str(r["Delivery"]) for r in read_audit(audit_path_from(said.out))["Issued"]]
    for value in values:
        assert value not in said.out + said.err + log.read_text() + "".join(cells)
        assert value.encode() not in stored


def test_a_template_raising_a_python_error_stops_the_run_before_any_pass(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A body template whose expression raises a Python error (a TypeError, not a Jinja2
    one) on any value: exit 2 naming delivery.template, no pass issued."""
    state = mail_tenant({"a@contoso.com": BOSS}, [BOSS])
    sim = serve_simulator(state)
    template = tmp_path / "body.html"
    template.write_text("<p>{{ hires[0].value / 2 }}</p>", encoding="utf-8")
    path = mail_sheet(tmp_path / "hires.csv", ["a@contoso.com"])
    config = mail_config(sim, tmp_path, template=str(template))
    assert main(["run", str(path), "-c", str(config)]) == EXIT_BAD_INPUT
    assert f"delivery.template {template}" in capsys.readouterr().err
    assert state.issued == []


def test_run_preview_into_a_folder_that_cannot_be_one_stops_before_any_pass(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--preview naming a file, or a folder under a file: exit 2 naming the folder, before
    any pass is issued (`run`) or anything is read from Graph (`deliver`)."""
    state = mail_tenant({"a@contoso.com": BOSS}, [BOSS])
    sim = serve_simulator(state)
    path, cfg = mail_sheet(tmp_path / "hires.csv", ["a@contoso.com"]), mail_config(sim, tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    for preview in (a_file, a_file / "sub"):
        assert main(["run", str(path), "-c", str(cfg), "--preview", str(preview)]) == (
            EXIT_BAD_INPUT
        )
        assert f"--preview {preview}" in capsys.readouterr().err
    assert state.issued == []
    assert main(["run", str(path), "-c", str(cfg), "--preview", str(tmp_path / "ok")]) == 0
    run_id = run_id_from(capsys.readouterr().out)
    requests = state.counts.get("graph_requests", 0)
    assert main(["deliver", run_id, "-c", str(cfg), "--preview", str(a_file)]) == EXIT_BAD_INPUT
    assert f"--preview {a_file}" in capsys.readouterr().err
    assert state.counts.get("graph_requests", 0) == requests


def test_a_preview_file_that_cannot_be_written_fails_its_message_not_the_run(
    tmp_path: Path,
    serve_simulator: Callable[..., Served],
    secret_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A symlink planted where a preview file goes: never followed; that message fails
    ("preview not written"), the other is written, exit 1 (never 4)."""
    hires = {"a@contoso.com": BOSS, "b@contoso.com": "chief@contoso.com"}
    state = mail_tenant(hires, [BOSS, "chief@contoso.com"])
    sim = serve_simulator(state)
    path, cfg = mail_sheet(tmp_path / "hires.csv", list(hires)), mail_config(sim, tmp_path)
    preview, victim = tmp_path / "preview", tmp_path / "victim"
    preview.mkdir(mode=0o700)
    (preview / f"0001-{BOSS}.eml").symlink_to(victim)
    assert main(["run", str(path), "-c", str(cfg), "--preview", str(preview)]) == (EXIT_ROWS_FAILED)
    out = capsys.readouterr().out
    assert not victim.exists() and (preview / "0002-chief@contoso.com.eml").is_file()
    rows = {r["User"]: str(r["Delivery"]) for r in read_audit(audit_path_from(out))["Issued"]}
    assert rows["a@contoso.com"].startswith("failed: preview not written.")
    assert rows["b@contoso.com"].startswith("previewed, not sent")


def test_a_signal_during_delivery_says_to_deliver_the_rest_and_deliver_sends_them(
    tmp_path: Path, serve_simulator: Callable[..., Served], secret_env: dict[str, str]
) -> None:
    """SIGINT while the messages go: the run points at 'onboard deliver RUN_ID', not at
    running the same command again (which mails nothing: its passes are issued); deliver then
    sends every message not sent, each manager exactly once."""
    managers = [f"m{n:02d}@contoso.com" for n in range(10)]
    hires = {f"h{n:02d}@contoso.com": managers[n] for n in range(10)}
    state = mail_tenant(hires, managers, faults=Faults(mail_per_minute=None, mail_latency_ms=200))
    sim = serve_simulator(state)
    path, cfg = mail_sheet(tmp_path / "hires.csv", list(hires)), mail_config(sim, tmp_path)
    proc = run_cli(cfg, str(path))
    wait_until(lambda: len(state.mail) >= 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert 2 <= len(state.mail) < len(managers)
    run_id = run_id_from(out)
    assert f"onboard deliver {run_id}" in out
    assert "run the same command again" not in out
    assert main(["deliver", run_id, "-c", str(cfg)]) == 0
    assert sorted(m.to[0] for m in state.mail) == managers
    assert state.mail_requests == len(managers)
