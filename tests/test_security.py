"""Passes and secrets: an encrypted (and a pass-free) audit, owner-only files, nothing leaked at
any verbosity, secrets only from the environment or files, TLS or loopback only, one user per
request path, and text that stays text in the workbook."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import stat
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree

import aiohttp
import msoffcrypto
import pytest
import yaml
from aiohttp import web
from conftest import CLIENT_ID, TENANT, certificate_of, issued_sheet, make_certificate, users
from openpyxl import load_workbook

from onboard import audit, job, redact
from onboard.audit import (
    REDACTED,
    AuditOptions,
    FileSummary,
    RunSummary,
    redacted_path,
    write_audit,
)
from onboard.auth import Credential
from onboard.cli import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_ROWS_FAILED, _parser, main
from onboard.config import Secret, config_keys, load_config
from onboard.errors import ConfigError
from onboard.graph import GraphClient, user_path
from onboard.outcomes import Failed, Issued, Origin, PassRequest, Reason
from onboard.simulator import Faults, SimulatorState

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2027, 1, 4, 8, tzinfo=timezone.utc)
SOON = (datetime.now(timezone.utc) + timedelta(days=30)).date().isoformat()
HIRES = [f"hire{n:02d}@contoso.com" for n in range(30)]
WORKBOOK_PASSWORD = "Audit-Workbook-Pw-7731"
CLIENT_SECRET = "Client-Secret-Value-5512~xyz"


def sheet(tmp_path: Path, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
    lines = ["Name,Work Email,Start Date", *[f"Hire {n},{u},{SOON}" for n, u in enumerate(HIRES)]]
    path = tmp_path / "hires.csv"
    path.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8")
    return path


def decrypt(path: Path, password: str) -> io.BytesIO:
    office = msoffcrypto.OfficeFile(path.open("rb"))
    office.load_key(password=password)
    plain = io.BytesIO()
    office.decrypt(plain)
    return plain


def only_audit(directory: Path, suffix: str = ".xlsx") -> Path:
    (path,) = [p for p in directory.glob(f"onboard-*{suffix}") if "redacted" not in p.name]
    return path


# --- the encrypted workbook ------------------------------------------------------------------

def issued_rows(n: int) -> list[Issued]:
    return [Issued(PassRequest(Origin("hires.csv", i + 2), f"u{i}@contoso.com", None, START, 60,
                               True), f"TapValue{i:04d}!x", f"m-{i}", START, START, 60, True,
                   START, 1, None) for i in range(n)]


SUMMARY = RunSummary("run-1", START, START, "0", [FileSummary("hires.csv", "ab" * 32, 3, None)],
                     [])


def watch_disk(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every file the audit writer creates, as it is when renamed into place or removed,
    and forbid openpyxl's own temporary files (the process-wide temp folder)."""
    seen: list[bytes] = []
    real_replace, real_remove, real_rmtree = os.replace, os.remove, shutil.rmtree

    def replace(src: str, dst: str) -> None:
        seen.append(Path(src).read_bytes())
        real_replace(src, dst)

    def remove(path: str) -> None:
        seen.append(Path(path).read_bytes())
        real_remove(path)

    def rmtree(path: Path, **kwargs: object) -> None:
        if Path(path).is_dir():
            seen.extend(p.read_bytes() for p in Path(path).rglob("*") if p.is_file())
        real_rmtree(path, **kwargs)  # type: ignore[arg-type]

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("openpyxl wrote a temporary file")

    monkeypatch.setattr(audit.os, "replace", replace)
    monkeypatch.setattr(audit.os, "remove", remove)
    monkeypatch.setattr(audit.shutil, "rmtree", rmtree)
    monkeypatch.setattr("openpyxl.worksheet._writer.create_temporary_file", refuse)
    return seen


def test_encrypted_workbook_never_puts_plain_bytes_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a password, every byte written is inside the encrypted container; the same watch on
    an unencrypted write does see the plain sheets (so the watch itself works)."""
    rows = issued_rows(300)
    seen = watch_disk(monkeypatch)
    path = write_audit(tmp_path / "out" / "a.xlsx", SUMMARY, rows, [], [],
                       AuditOptions(WORKBOOK_PASSWORD))
    assert seen and all(blob.startswith(b"\xd0\xcf\x11\xe0") for blob in seen)
    assert not any(b"TapValue" in blob for blob in seen)
    assert not zipfile.is_zipfile(path)
    with pytest.raises(msoffcrypto.exceptions.InvalidKeyError):
        decrypt(path, "wrong password")
    book = load_workbook(decrypt(path, WORKBOOK_PASSWORD))
    assert [c.value for c in issued_sheet(book)["E"][1:]] == [r.temporary_access_pass for r in rows]

    seen.clear()
    write_audit(tmp_path / "plain" / "a.xlsx", SUMMARY, rows, [], [])
    assert any(b"TapValue0000!x" in blob for blob in seen)  # sheet XML in the scratch folder


_OPENED: list[tuple[str, object]] | None = None


def _record_opens(event: str, args: tuple[object, ...]) -> None:
    # "open" is raised by open() and os.open() alike: (path, mode, flags); an int path is an
    # already open descriptor (os.fdopen), whose opening was seen before.
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append((os.fsdecode(args[0]), args[2]))


sys.addaudithook(_record_opens)  # an audit hook stays for the process: it records only when asked


def test_encrypted_write_opens_no_file_but_its_own_sealed_one(tmp_path: Path) -> None:
    """Every file opened for writing while the encrypted workbook is written (seen by Python's
    audit hooks, whoever opens it) is the workbook's own temporary file, which ends up holding
    the encrypted container; with no password the same watch sees openpyxl's sheet files."""
    global _OPENED
    rows = issued_rows(50)

    def written() -> list[str]:
        return [name for name, mode in (_OPENED or []) if _for_writing(mode)]

    _OPENED = []
    try:
        path = write_audit(tmp_path / "out" / "a.xlsx", SUMMARY, rows, [], [],
                           AuditOptions(WORKBOOK_PASSWORD))
        sealed = written()
        _OPENED = []
        write_audit(tmp_path / "plain" / "a.xlsx", SUMMARY, rows, [], [])
        plain = written()
    finally:
        _OPENED = None
    assert len(sealed) == 1 and Path(sealed[0]).parent.name == ".a.partial"
    assert Path(sealed[0]).name.endswith(".tmp") and path.read_bytes()[:4] == b"\xd0\xcf\x11\xe0"
    assert len({name for name in plain if name.endswith(".xml")}) == 4  # the sheets, on disk


def _for_writing(flags: object) -> bool:
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def test_redacted_copy_has_everything_but_the_passes(tmp_path: Path) -> None:
    """The pass-free copy: same rows and columns, the pass column masked, no value anywhere."""
    rows = issued_rows(5)
    failed = Failed(Origin("hires.csv", 9), "x@contoso.com", Reason.USER_NOT_FOUND, "no such user")
    path = write_audit(tmp_path / "a.xlsx", SUMMARY, rows, [failed], [],
                       AuditOptions(WORKBOOK_PASSWORD, redacted_copy=True))
    copy = redacted_path(path)
    assert copy.name == "a-redacted.xlsx" and stat.S_IMODE(copy.stat().st_mode) == 0o600
    with zipfile.ZipFile(copy) as archive:
        assert not any(b"TapValue" in archive.read(name) for name in archive.namelist())
    full = load_workbook(decrypt(path, WORKBOOK_PASSWORD))
    masked = load_workbook(copy)
    for name in ("Issued", "Failed", "Skipped"):
        for whole, cut in zip(full[name].iter_rows(values_only=True),
                              masked[name].iter_rows(values_only=True), strict=True):
            expected = list(whole)
            if name == "Issued" and whole[0] != "Source file":
                expected[4] = REDACTED
            assert list(cut) == expected
    notes = {r[0]: r[1] for r in masked["Summary"].iter_rows(values_only=True)}
    assert notes["Pass values"] == REDACTED


def test_run_encrypts_the_audit_and_writes_the_copy(
    tmp_path: Path, serve_simulator, secret_env, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """output.password_env + output.redacted_copy through the CLI: the passes Graph issued are
    in the encrypted workbook, none in the copy; a password variable that is not set stops the
    run before anything is sent."""
    state = SimulatorState(users(*HIRES))
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml",
                        output={"password_env": "AUDIT_PW", "redacted_copy": True})
    code = main(["run", str(sheet(tmp_path)), "-c", str(config)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "output.password is read from the environment variable AUDIT_PW" in err
    assert state.counts == {}

    monkeypatch.setenv("AUDIT_PW", WORKBOOK_PASSWORD)
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == 0
    out = capsys.readouterr().out
    path = only_audit(tmp_path / "audit")
    assert "encrypted with the password from the environment variable AUDIT_PW" in out
    assert str(redacted_path(path)) in out
    book = load_workbook(decrypt(path, WORKBOOK_PASSWORD))
    values = sorted(str(c.value) for c in issued_sheet(book)["E"][1:])
    assert values == sorted(p.value for p in state.issued)
    with zipfile.ZipFile(redacted_path(path)) as archive:
        blob = b"".join(archive.read(n) for n in archive.namelist())
    assert not any(p.value.encode() in blob for p in state.issued)


def killed_before_the_audit(tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
                            password: str | None) -> tuple[SimulatorState, Path, bytes]:
    """Run until every pass is issued, then die before writing the audit (as kill -9 would):
    the simulator, the config, and every byte of the journal's files at that moment."""

    def killed(doing: str) -> None:
        if doing == job.WRITING_AUDIT:
            raise KeyboardInterrupt

    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", CLIENT_SECRET)
    state = SimulatorState(users(*HIRES), client_secret=CLIENT_SECRET)
    sim = serve_simulator(state)
    output = {"password_env": "AUDIT_PW"} if password else {}
    config = sim.config(tmp_path / "c.yaml", output=output)
    if password:
        monkeypatch.setenv("AUDIT_PW", password)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(job.run(load_config(config, os.environ), [sheet(tmp_path)], env=os.environ,
                            on_phase=killed))  # fmt: skip
    assert not list((tmp_path / "audit").glob("onboard-*"))
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    return state, config, on_disk


def test_with_a_password_the_journal_holds_no_pass_in_clear(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Mid-run the journal keeps every issued pass (a crash must not lose one): encrypted with
    output.password when it is set. The killed run's passes reach its encrypted audit through
    `onboard report` with that password, and not with a wrong one."""
    state, config, on_disk = killed_before_the_audit(tmp_path, serve_simulator, monkeypatch,
                                                     WORKBOOK_PASSWORD)
    assert len(state.issued) == len(HIRES)
    assert not [p.value for p in state.issued if p.value.encode() in on_disk]
    from onboard.journal import Journal

    with Journal(tmp_path / "state" / "journal.sqlite").open(lock=False) as journal:
        (run,) = journal.runs()
    monkeypatch.setenv("AUDIT_PW", "not the password")
    assert main(["report", run.run_id, "-c", str(config)]) == EXIT_BAD_INPUT
    assert "encrypted with a different output.password" in capsys.readouterr().err
    monkeypatch.setenv("AUDIT_PW", WORKBOOK_PASSWORD)
    assert main(["report", run.run_id, "-c", str(config)]) == 0
    book = load_workbook(decrypt(only_audit(tmp_path / "audit"), WORKBOOK_PASSWORD))
    values = sorted(c.value for c in issued_sheet(book)["E"][1:])
    assert values == sorted(p.value for p in state.issued)


def test_without_a_password_the_journal_holds_passes_until_the_audit(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the test above (so its scan of the journal's bytes can fail): with no
    password, a killed run's journal holds its passes in clear, owner-only."""
    state, _, on_disk = killed_before_the_audit(tmp_path, serve_simulator, monkeypatch, None)
    assert all(p.value.encode() in on_disk for p in state.issued)


# --- owner-only files ------------------------------------------------------------------------

def test_every_file_and_folder_onboard_creates_is_owner_only(
    tmp_path: Path, serve_simulator, secret_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a permissive umask: audit, copy, journal (and its -wal/-shm/lock), log, and each
    folder made for them are owner-only; a folder that already existed keeps its mode."""
    old = os.umask(0o002)
    try:
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o775)
        shared.chmod(0o775)
        sim = serve_simulator(SimulatorState(users(*HIRES)))
        config = sim.config(tmp_path / "c.yaml",
                            output={"dir": str(shared / "audits" / "2026" / "12"),
                                    "redacted_copy": True},
                            state={"path": str(shared / "state" / "deep" / "j.sqlite")})
        log = shared / "onboard.log"
        assert main(["run", str(sheet(tmp_path)), "-c", str(config), "--log-file", str(log)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o775  # existing: left as it was
    made = [shared / "audits", shared / "audits" / "2026", shared / "audits" / "2026" / "12",
            shared / "state", shared / "state" / "deep"]
    assert {d.name: oct(stat.S_IMODE(d.stat().st_mode)) for d in made} == {
        d.name: "0o700" for d in made}
    files = [p for p in shared.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"onboard.log", "j.sqlite"} <= names
    assert any(n.endswith("-redacted.xlsx") for n in names)
    assert any(n.startswith("j.sqlite") and n != "j.sqlite" for n in names)  # -wal, -shm, lock
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.name: "0o600" for p in files}


# --- nothing leaks ---------------------------------------------------------------------------

def leaked(text: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if s and s in text)


def test_nothing_secret_in_any_output_at_the_most_verbose_level(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The whole CLI at -vv, with faults, throttling, lost answers, failed rows and retries:
    no pass, token, client secret or workbook password in stdout, stderr or the log file."""
    faults = Faults(fault_rate=0.2, throttle_rate=60, throttle_burst=5, lost_response_rate=0.1)
    state = SimulatorState(users(*HIRES), faults=faults, client_secret=CLIENT_SECRET, seed=7)
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", output={"password_env": "AUDIT_PW"},
                        run={"settle_seconds": 0.05})
    log = tmp_path / "run.log"
    hires = sheet(tmp_path, ["Ghost,ghost@contoso.com," + SOON,
                             "Guest,guest_x.com#EXT#@contoso.com," + SOON])
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AUDIT_PW", WORKBOOK_PASSWORD)
    code = main(["run", str(hires), "-c", str(config), "-vv", "--log-file", str(log)])
    done = capfd.readouterr()  # what reached the process's own stdout and stderr
    assert code == EXIT_ROWS_FAILED, done.err[-2000:]
    printed = done.out + done.err + log.read_text(encoding="utf-8")
    # The noisy paths did run: throttling, faults, lost answers, failed rows.
    assert state.counts.get("429", 0) and state.counts.get("503", 0), state.counts
    assert "HTTP 503" in printed and "ghost@contoso.com" in printed
    assert state.issued and state.tokens
    secrets = {p.value for p in state.issued} | set(state.tokens) | {CLIENT_SECRET,
                                                                      WORKBOOK_PASSWORD}
    assert leaked(printed, secrets) == []


def test_certificate_password_never_shows(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A certificate sign-in at -vv shows neither the certificate password nor the key."""
    cert_password = "Cert-Pass-4471"
    pem, _ = make_certificate(tmp_path, cert_password.encode())
    state = SimulatorState(users(*HIRES), certificates=[certificate_of(pem)])
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", auth={
        "method": "certificate", "certificate_path": str(pem),
        "certificate_password_env": "CERT_PW"})
    monkeypatch.setenv("CERT_PW", cert_password)
    code = main(["run", str(sheet(tmp_path)), "-c", str(config), "-vv"])
    done = capfd.readouterr()
    assert code == 0, done.err[-2000:]
    printed = done.out + done.err
    key_line = pem.read_text().splitlines()[1]
    secrets = {cert_password, key_line} | {p.value for p in state.issued} | set(state.tokens)
    assert leaked(printed, secrets) == []


def test_a_crash_traceback_hides_passes_and_secrets(
    tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bug whose exception quotes a pass (as a library's message might) is logged at -vv
    with the value hidden; the audit still holds the pass."""
    monkeypatch.setenv("ONBOARD_CLIENT_SECRET", CLIENT_SECRET)
    state = SimulatorState(users(*HIRES), client_secret=CLIENT_SECRET)
    sim = serve_simulator(state)

    class Broken(io.StringIO):
        """Standard output that fails once the audit is written, as the results are shown."""

        def write(self, text: str) -> int:
            if list((tmp_path / "audit").glob("onboard-*.xlsx")):
                value, token = state.issued[0].value, next(iter(state.tokens))
                raise ValueError(f"could not show {value!r} with secret {CLIENT_SECRET} "
                                 f"token {token}")  # fmt: skip
            return super().write(text)

    monkeypatch.setattr(sys, "stdout", Broken())
    code = main(["run", str(sheet(tmp_path)), "-c", str(sim.config(tmp_path / "c.yaml")), "-vv"])
    err = capsys.readouterr().err
    assert code == EXIT_INTERNAL
    assert "Traceback" in err
    assert "ValueError: could not show '<hidden>' with secret <hidden> token <hidden>" in err
    assert leaked(err, {p.value for p in state.issued} | {CLIENT_SECRET} | set(state.tokens)) == []
    rows = issued_sheet(load_workbook(only_audit(tmp_path / "audit")))
    assert {c.value for c in rows["E"][1:]} == {p.value for p in state.issued}


def test_reprs_hide_every_secret(tmp_path: Path) -> None:
    """Objects that hold a secret show where it comes from, never what it is."""
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"graph": {"endpoint": "simulator"},
                                           "auth": {"client_secret": CLIENT_SECRET},
                                           "output": {"password": WORKBOOK_PASSWORD}}))
    config_file.chmod(0o600)
    config = load_config(config_file)
    (issued,) = issued_rows(1)
    shown = " ".join([repr(config), str(config.public_settings()), repr(issued),
                      repr(AuditOptions(WORKBOOK_PASSWORD)), repr(Credential("id", CLIENT_SECRET)),
                      repr(Secret("k", inline=CLIENT_SECRET))])
    assert leaked(shown, {CLIENT_SECRET, WORKBOOK_PASSWORD, issued.temporary_access_pass}) == []
    assert "auth.client_secret in the config file" in shown


# --- secrets in ------------------------------------------------------------------------------

def test_inline_secret_needs_an_owner_only_config(
    tmp_path: Path, serve_simulator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A secret written into config.yaml: refused (exit 2, saying why and what to do) while
    others can read the file; used once it is chmod 600."""
    monkeypatch.delenv("ONBOARD_CLIENT_SECRET", raising=False)
    state = SimulatorState(users(*HIRES), client_secret=CLIENT_SECRET)
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", auth={"client_secret": CLIENT_SECRET})
    config.chmod(0o644)
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "holds a secret (auth.client_secret) but other users can read it (mode 0644)" in err
    assert f"chmod 600 {config}" in err and CLIENT_SECRET not in err
    assert state.counts == {}
    config.chmod(0o600)
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == 0


def test_a_broken_config_never_quotes_its_secret(tmp_path: Path) -> None:
    """PyYAML's message quotes the broken line; onboard's says only what and where."""
    path = tmp_path / "c.yaml"
    path.write_text(f'auth:\n  client_secret: "{CLIENT_SECRET}\\q"\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "is not valid YAML: found unknown escape character" in str(caught.value)
    assert "(line 2, column" in str(caught.value) and CLIENT_SECRET not in str(caught.value)


def test_secret_from_a_file(tmp_path: Path, serve_simulator, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """auth.client_secret_file (a mounted secret, say) is read, trailing newline dropped; a
    file others can read is used with a warning to chmod it."""
    monkeypatch.delenv("ONBOARD_CLIENT_SECRET", raising=False)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(CLIENT_SECRET + "\n")
    secret_file.chmod(0o644)
    state = SimulatorState(users(*HIRES), client_secret=CLIENT_SECRET)
    sim = serve_simulator(state)
    config = sim.config(tmp_path / "c.yaml", auth={"client_secret_file": str(secret_file)})
    assert main(["run", str(sheet(tmp_path)), "-c", str(config)]) == 0
    err = capsys.readouterr().err
    assert f"the file {secret_file} (auth.client_secret_file) can be read by other users " \
           "(mode 0644): chmod 600 it" in err and CLIENT_SECRET not in err
    other = tmp_path / "other"
    other.mkdir()
    missing = sim.config(other / "d.yaml", auth={"client_secret_file": str(tmp_path / "no")})
    assert main(["run", str(sheet(other)), "-c", str(missing)]) == EXIT_BAD_INPUT


def test_secrets_never_come_from_arguments_or_settings_variables(tmp_path: Path) -> None:
    """No command-line option takes a secret; ONBOARD_AUTH_CLIENT_SECRET is refused, naming
    where a secret does come from."""
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    options = [o for sub in commands.values() for a in sub._actions for o in a.option_strings]
    assert options and not [o for o in options if re.search("secret|password|token|key", o)]
    with pytest.raises(ConfigError, match=r"ONBOARD_AUTH_CLIENT_SECRET is not read: a secret "
                       r"comes from the variable that auth\.client_secret_env names"):
        load_config(None, {"ONBOARD_AUTH_CLIENT_SECRET": "x"})


def test_the_console_shows_input_text_escaped(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user cell carrying a terminal escape sequence, in a file whose name is not UTF-8: the
    run goes on, and nothing it prints or logs holds a raw control character."""
    sim = serve_simulator(SimulatorState(users(*HIRES)))
    name = os.fsdecode(b"hires-\xff.csv")
    path = sheet(tmp_path, ["Evil,\x1b]0;owned\x07\x1b[2Jx@contoso.com," + SOON]).rename(
        tmp_path / name)
    code = main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml")), "-v"])
    out, err = capsys.readouterr()
    assert code == EXIT_ROWS_FAILED
    assert "\\x1b]0;owned\\x07\\x1b[2Jx@contoso.com" in out
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", out + err)
    rows = issued_sheet(load_workbook(only_audit(tmp_path / "audit")))
    assert {c.value for c in rows["A"][1:]} == {"hires-\\xff.csv"}


def test_text_xml_cannot_hold_keeps_the_workbook_readable(
    tmp_path: Path, serve_simulator, secret_env, capsys: pytest.CaptureFixture[str]
) -> None:
    """U+FFFF in a name, a guest UPN with an escape sequence, a file name with U+FFFE: the run
    ends normally, the workbook opens (the characters shown escaped), and the console and log
    show no raw control character."""
    sim = serve_simulator(SimulatorState(users(*HIRES, "amara@contoso.com")))
    path = sheet(tmp_path, [f"Amara\uffff Okafor,amara@contoso.com,{SOON}",
                            f"Guest,x\x1b]0;PWNED\x07#EXT#@contoso.com,{SOON}"])
    path = path.rename(tmp_path / "hires\ufffe.csv")
    code = main(["run", str(path), "-c", str(sim.config(tmp_path / "c.yaml"))])
    out, err = capsys.readouterr()
    assert code == EXIT_ROWS_FAILED
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", out + err)
    assert "x\\x1b]0;PWNED\\x07#EXT#@contoso.com: External guest user" in out
    book = load_workbook(only_audit(tmp_path / "audit"))
    names = {c.value for c in issued_sheet(book)["D"][1:]}
    assert "Amara\\uffff Okafor" in names
    assert {c.value for c in issued_sheet(book)["A"][1:]} == {"hires\\ufffe.csv"}


def test_a_password_that_is_not_text_is_refused(tmp_path: Path) -> None:
    """Bytes in the environment that are not UTF-8 (surrogate-escaped by Python): exit 2."""
    from onboard.audit import audit_options

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"graph": {"endpoint": "simulator"},
                                      "output": {"password_env": "AUDIT_PW"}}))
    settings = load_config(config).output
    with pytest.raises(ConfigError, match=r"output\.password from the environment variable "
                       r"AUDIT_PW .* is not UTF-8 text"):
        audit_options(settings, {"AUDIT_PW": os.fsdecode(b"pass\xff")})


# --- transport -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("key", "url", "ok"),
    [("endpoint", "http://graph.example.com", False), ("endpoint", "http://10.0.0.5:8080", False),
     ("endpoint", "ftp://graph.example.com", False), ("endpoint", "http://127.0.0.1:8443", True),
     ("endpoint", "http://localhost:8443", True), ("endpoint", "http://[::1]:8443", True),
     ("endpoint", "https://graph.example.com", True),
     ("authority", "http://login.example.com", False), ("authority", "http://127.0.0.1:9", True)],
)
def test_plain_http_only_to_this_machine(tmp_path: Path, key: str, url: str, ok: bool) -> None:
    section = "graph" if key == "endpoint" else "auth"
    data = {"auth": {"tenant_id": TENANT, "client_id": CLIENT_ID}, "pass": {"timezone": "UTC"}}
    data.setdefault(section, {})[key] = url
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    if ok:
        load_config(path)
    else:
        with pytest.raises(ConfigError, match=f"{section}.{key} must be an https:// URL"):
            load_config(path)


def test_no_setting_turns_verification_off() -> None:
    """No config key, and so no ONBOARD_* variable, can disable TLS verification."""
    keys = config_keys()
    assert not [k for k in keys if re.search("verify|insecure|ssl|tls", k)]
    with pytest.raises(ConfigError, match="ONBOARD_GRAPH_VERIFY is not a setting"):
        load_config(None, {"ONBOARD_GRAPH_VERIFY": "false"})


# --- request paths ---------------------------------------------------------------------------

TAIL = "authentication/temporaryAccessPassMethods"
TRICKS = ["a/../../me@contoso.com", "a?b=1@contoso.com", "a#frag@contoso.com",
          "a%2Fb@contoso.com", "a\r\nX-Evil: 1@contoso.com", "..@contoso.com",
          "a b@contoso.com", "\u2215etc@contoso.com", "$admin@contoso.com"]


def test_user_values_cannot_change_the_request() -> None:
    """Whatever a user value holds, Graph sees one POST to users/{that user}/authentication/
    temporaryAccessPassMethods (in single and batch requests)."""
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path))
        if request.path.endswith("$batch"):
            items = (await request.json())["requests"]
            seen.extend(("BATCH", item["url"]) for item in items)
            return web.json_response({"responses": [
                {"id": i["id"], "status": 201, "body": pass_body()} for i in items]})
        return web.json_response(pass_body(), status=201)

    def pass_body() -> dict[str, object]:
        return {"id": "m", "temporaryAccessPass": "x", "createdDateTime": "2027-01-04T08:00:00Z",
                "startDateTime": "2027-01-04T08:00:00Z", "lifetimeInMinutes": 60,
                "isUsableOnce": True}

    class Tokens:
        async def token(self) -> str:
            return "t"

        async def refresh(self, rejected: str) -> str:
            return "t"

    async def main_() -> None:
        runner = web.ServerRunner(web.Server(handle))  # every path, as sent
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                client = GraphClient(session, f"http://127.0.0.1:{port}", Tokens())
                for n, user in enumerate(TRICKS):
                    request = PassRequest(Origin("t.csv", n + 2), user, None, None, 60, True)
                    await client.create_pass(request)
                await client.create_passes([
                    PassRequest(Origin("t.csv", n + 2), u, None, None, 60, True)
                    for n, u in enumerate(TRICKS)])
        finally:
            await runner.cleanup()

    asyncio.run(main_())
    singles = [path for method, path in seen if method == "POST" and "$batch" not in path]
    batched = [path for method, path in seen if method == "BATCH"]
    assert len(singles) == len(batched) == len(TRICKS)
    shape = re.compile(r"^/users(/[^/?#]+|\('[^/?#]+'\))/authentication/"
                       r"temporaryAccessPassMethods$")
    for user, single, inner in zip(TRICKS, singles, batched, strict=True):
        # aiohttp may re-encode characters a path allows as they are ('=' for '%3D'): the
        # same path to the server; '/', '?', '#' and controls stay encoded.
        assert unquote(single) == "/v1.0" + unquote(inner) == f"/v1.0/users/{user}/{TAIL}" or (
            user.startswith("$") and unquote(inner) == f"/users('{user}')/{TAIL}")
        assert shape.match(single.removeprefix("/v1.0")) and shape.match(inner), inner
        assert f"/{user_path(user)}/" in inner
        assert not re.search(r"[\x00-\x20\x7f]", single)
    with pytest.raises(ValueError, match="a user must be named"):
        user_path("..")


# --- text stays text -------------------------------------------------------------------------

RISKY = ["=HYPERLINK(\"http://evil\",\"x\")", "+SUM(1,2)", "-2+3", "@SUM(A1)",
         "\tTAB=1", "\r=1", "=cmd|' /C calc'!A0", "#N/A"]


def test_risky_text_is_stored_as_text_and_passes_stay_exact(tmp_path: Path) -> None:
    """Text from the input starting with = + - @ tab or CR is a string cell in the saved file
    (no formula element anywhere), in the workbook, its encrypted form and the copy; a pass
    starting with + or = reads back exactly."""
    rows = [Issued(PassRequest(Origin(f"{text}.csv", n + 2), f"{text}@contoso.com", text,
                               START, 60, True), ["+Plus1234", "=Eq12345"][n % 2], f"m{n}",
                   START, START, 60, True, START, 1, None) for n, text in enumerate(RISKY)]
    failed = [Failed(Origin("x.csv", 40 + n), text, Reason.REFUSED, text, column=text, label=text)
              for n, text in enumerate(RISKY)]
    path = write_audit(tmp_path / "a.xlsx", SUMMARY, rows, failed, [],
                       AuditOptions(WORKBOOK_PASSWORD, redacted_copy=True))
    for data in (decrypt(path, WORKBOOK_PASSWORD).getvalue(), redacted_path(path).read_bytes()):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            sheets = [n for n in archive.namelist() if n.startswith("xl/worksheets/sheet")]
            for name in sheets:
                xml = archive.read(name)
                assert b"<f>" not in xml and b"<f " not in xml, name
                for cell in ElementTree.fromstring(xml).iter(
                        "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}c"):
                    assert cell.get("t") in (None, "n", "s", "inlineStr", "b", "d"), cell.get("t")
        book = load_workbook(io.BytesIO(data))
        issued = list(issued_sheet(book).iter_rows(min_row=2, values_only=True))
        # Display names exact (XML reads a lone CR back as a line feed: still text).
        assert sorted(r[3] for r in issued) == sorted(t.replace("\r", "\n") for t in RISKY)
        for sheet_name, column in (("Issued", "C"), ("Issued", "D"), ("Failed", "E")):
            for cell in book[sheet_name][column][1:]:
                assert cell.data_type == "s", (sheet_name, cell.coordinate, cell.value)
    full = load_workbook(decrypt(path, WORKBOOK_PASSWORD))
    assert sorted(c.value for c in issued_sheet(full)["E"][1:]) == sorted(
        r.temporary_access_pass for r in rows)
    for cell in issued_sheet(full)["E"][1:]:
        assert cell.data_type == "s" and cell.quotePrefix


def test_scrub_hides_longest_values_first() -> None:
    redact.remember("abcd1234")
    redact.remember("abcd1234-longer")
    assert redact.scrub("x abcd1234-longer y abcd1234") == "x <hidden> y <hidden>"


def test_a_library_log_line_quoting_a_token_answer_is_scrubbed() -> None:
    """msal logs a token answer that is not valid JSON whole (before onboard could remember
    the token): the log formatter hides anything shaped like a token or named as one."""
    import logging

    from onboard.redact import HIDDEN, Formatter

    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJ0aWQiOiJ4eXoiLCJleHAiOjF9.c2lnbmF0dXJl"
    line = ('Token response is not in json format: {"token_type": "Bearer", '
            f'"access_token": "{token}')
    record = logging.LogRecord("msal", logging.ERROR, __file__, 1, line, None, None)
    shown = Formatter("%(message)s").format(record)
    assert token not in shown and "eyJ0eXAi" not in shown and HIDDEN in shown
    form = logging.LogRecord("x", logging.ERROR, __file__, 1, "client_secret=abc123&x=1", None,
                             None)  # fmt: skip
    assert "abc123" not in Formatter("%(message)s").format(form)


def test_msal_is_never_logged(tmp_path: Path) -> None:
    """Whatever -v says, msal's own lines (which can quote a token answer) are not logged."""
    import logging

    from onboard.cli import _setup_logging

    for verbosity in (0, 1, 2):
        _setup_logging(verbosity, str(tmp_path / "log.txt"))
        assert not logging.getLogger("msal").isEnabledFor(logging.CRITICAL)


def test_no_pass_value_is_left_anywhere_in_the_journal_file_after_runs(
    tmp_path: Path, serve_simulator, secret_env
) -> None:
    """Runs that issue, re-issue and rewrite many rows: once they are finished, no pass value
    is anywhere in the journal's bytes (its free space included: the file is compacted)."""
    names = [f"u{n:03d}@contoso.com" for n in range(120)]
    # Lost answers: passes recorded, then recorded again once confirmed (rows rewritten).
    state = SimulatorState(users(*names), faults=Faults(lost_response_rate=0.3), seed=7)
    sim = serve_simulator(state)
    config = str(sim.config(tmp_path / "c.yaml", run={"settle_seconds": 0.05,
                                                      "max_attempts": 20}))  # fmt: skip
    hires = tmp_path / "hires.csv"
    start = (datetime.now(timezone.utc) + timedelta(days=5)).date().isoformat()
    hires.write_text("UPN,Start Date\n" + "".join(f"{u},{start}\n" for u in names), "utf-8")
    assert main(["run", str(hires), "-c", config]) == 0
    assert main(["run", str(hires), "-c", config, "--reissue"]) == 0
    assert main(["run", str(hires), "-c", config, "--reissue"]) == 0
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    assert state.counts.get("lost", 0) > 0
    assert [p.value for p in state.issued if p.value.encode() in on_disk] == []
