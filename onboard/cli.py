"""The command line: parse options, call the library, print, and map errors to exit codes.

Exit codes: EXIT_CODES below says what each means and what to do, once; the exit-code
reference (docs/reference/exit-codes.md) and the README's table are generated from it.

`simulate` serves until it is stopped: Ctrl-C (or SIGTERM) is its normal end, exit 0.
`run` and `validate --online` need a config file (./config.yaml or -c): defaults alone never
reach a tenant, and never the simulator either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import errno
import json
import logging
import os
import signal
import stat
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from tqdm import tqdm

from . import __version__, history, job, lifecycle, output, redact, validation
from .audit import SIMULATED, audit_options, redacted_path, write_problems
from .config import (
    AUTH_METHODS,
    CLOUDS,
    DEFAULT_CLIENT_SECRET_ENV,
    EXAMPLE_TIMEZONE,
    SIMULATOR_TIMEZONE,
    Config,
    TenantSetup,
    client_id_problem,
    load_config,
    machine_zone,
    render_config,
    tenant_problem,
    timezone_problem,
)
from .connect import simulator_state
from .deliver import DeliveryReport, State, redeliver
from .errors import (
    AuditWriteError,
    AuthError,
    ConfigError,
    InputFileError,
    JournalLocked,
    JournalWriteError,
    OnboardError,
    RunStopped,
)
from .files import check_output_dir
from .graph import PERMISSIONS_USED
from .journal import Journal, RunInfo
from .outcomes import Failed, Outcome, Skipped
from .redact import printable
from .report import RunReport, RunStatus
from .simulator import SimMail
from .tenant import SIMULATOR_CLIENT_ID, SIMULATOR_TENANT

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_ABORTED = 3
EXIT_INTERNAL = 4
EXIT_LOCKED = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class ExitMeaning(NamedTuple):
    """What an exit code tells the operator, and what to do about it: one line each."""

    meaning: str
    action: str


# Said once, here: docs/generate.py writes the exit-code reference and the README's table from
# it, and tests/test_docs.py fails when a committed copy differs.
EXIT_CODES: dict[int, ExitMeaning] = {
    EXIT_OK: ExitMeaning(
        "every row was issued, or skipped on purpose (a repeated row, a pass already issued)",
        "hand out the passes",
    ),
    EXIT_ROWS_FAILED: ExitMeaning(
        "the run finished, but some rows failed, or some users hold a pass this journal did not"
        " issue (nobody here can vouch it was handed out), or a check needs attention (a"
        " certificate that expires within 30 days, a check onboard had no permission to make),"
        " or, delivering by mail, a pass was mailed to nobody or a message failed or may not"
        " have arrived; for `validate`: a problem was found; for `status`: a hire whose start"
        " has passed has neither a usable pass nor a registered method; for `revoke`: a pass"
        " was not deleted",
        "read the `Failed` sheet, fix the sheet, run it again (rows already issued are skipped);"
        " for a pass held elsewhere, replace it with `--reissue-user` if nobody has it; for"
        " delivery, the Issued sheet's `Delivery` column says what to do; for `status`, see the"
        " hires it marks `!`",
    ),
    EXIT_BAD_INPUT: ExitMeaning(
        "bad usage, config or input file (missing, unreadable, no user column, unwritable"
        " output folder); **nothing was sent**",
        "read the message: it names the file and what is wrong",
    ),
    EXIT_ABORTED: ExitMeaning(
        "the run aborted: the tenant's pass policy is turned off, sign-in or TLS failed, Graph"
        " refused a fresh token, or the audit workbook or the run journal could not be"
        " written; the message says what was done and where it is kept",
        "fix the credential, consent, policy, `graph.ca_bundle`, or free disk space; then run"
        " the same command again",
    ),
    EXIT_INTERNAL: ExitMeaning(
        "internal error (a bug in onboard); the audit workbook holds what was done, unfinished"
        " rows marked `Not finished`",
        "run with `-vv`, report it",
    ),
    EXIT_LOCKED: ExitMeaning(
        "another onboard run is using the journal, or is issuing passes in the same tenant on"
        " this machine (the message names its process and journal); nothing was done",
        "wait for it, or check it is not hung",
    ),
    EXIT_INTERRUPTED: ExitMeaning(
        "stopped by SIGINT (Ctrl-C): requests in flight finished, the audit workbook holds what"
        " was done. After a *second* signal: stopped at once, no workbook yet (the journal"
        " keeps everything)",
        "run the same command again to finish",
    ),
    EXIT_TERMINATED: ExitMeaning(
        "stopped by SIGTERM (a `timeout`, systemd, a container stop): as for 130",
        "run the same command again to finish",
    ),
}
SIGNAL_EXIT = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
DEFAULT_CONFIG = "config.yaml"
PROGRESS_EVERY_SECONDS = 10.0
BAR_REFRESH_SECONDS = 1.0  # the bar's clock and rate move even while no row finishes
SHOW_FAILURES = 20
NO_CONFIG = (
    f"no config file: there is no ./{DEFAULT_CONFIG} and no -c FILE, and onboard does not guess "
    "where passes go. For your tenant, write one with 'onboard init' (it asks for the tenant "
    "id, client id, credential and time zone). To try onboard without a tenant, give -c a "
    "config with 'graph.endpoint: simulator', like the config.yaml shipped with onboard"
)

Ask = Callable[[str], str]  # shows a prompt, returns the answer (input, or a test's fake)
# --json: standard output is one JSON value, also when the command stops (see _stopped).
_JSON_OUT = contextvars.ContextVar("json_out", default=False)

log = logging.getLogger("onboard")


def main(argv: Sequence[str] | None = None) -> int:
    # A library's clean-up failing after the error that matters (openpyxl's sheet writer on a
    # full disk, say) would print a traceback on its own; the error is reported once, by us.
    before, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
    try:
        return _main(argv)
    finally:
        sys.unraisablehook = before


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _JSON_OUT.set(bool(getattr(args, "json", False)))
    try:
        _setup_logging(args.verbose, getattr(args, "log_file", None))
    except _LogFileRefused as exc:
        refused = f"onboard: {exc}; nothing was sent to Graph."
        print(refused, file=sys.stderr)
        _json_error(EXIT_BAD_INPUT, refused)
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except (ConfigError, InputFileError) as exc:
        return _stopped(EXIT_BAD_INPUT, f"onboard: {exc}", "nothing was sent to Graph.")
    except AuthError as exc:
        said = [f"onboard: {_aborted(args)}: {exc}", _what_is_kept(exc)]
        if exc.audit_path is not None:
            said.append(f"the audit workbook {exc.audit_path} holds what was done")
        return _stopped(EXIT_ABORTED, *said)
    except (AuditWriteError, JournalWriteError) as exc:
        said = [f"onboard: {_aborted(args)}: {exc}"]
        if exc.audit_path is not None:
            said.append(
                f"the audit workbook {exc.audit_path} holds what was done (rows marked 'Not "
                "finished' may hold a pass: run the same command again for them)"
            )
        elif not isinstance(exc, AuditWriteError):
            said.append(_what_is_kept(exc))
        return _stopped(EXIT_ABORTED, *said)
    except JournalLocked as exc:
        return _stopped(EXIT_LOCKED, f"onboard: {exc}", "nothing was done.")
    except KeyboardInterrupt:
        return _stopped(
            EXIT_INTERRUPTED, "onboard: interrupted; run the same command again to finish."
        )
    except Exception as exc:  # a bug: say so plainly, never with the data it held
        log.debug("internal error", exc_info=True)
        return _stopped(
            EXIT_INTERNAL,
            f"onboard: internal error ({type(exc).__name__}). If passes were being issued, the "
            "audit workbook in the output folder holds what was done. Run again with -vv for "
            "the details and report it.",
        )


def _quiet_unraisable(unraisable: Any) -> None:
    log.debug("ignored in %r: %s", unraisable.object, type(unraisable.exc_value).__name__)


def _aborted(args: argparse.Namespace) -> str:
    """How an exit 3 begins: "run aborted", or for a command that creates nothing (validate
    --online, report), that it stopped."""
    return "run aborted" if args.command == "run" else f"{args.command} stopped"


def _stopped(code: int, *said: str) -> int:
    """Say on stderr why the command stopped, and in the --log-file too (where cron's operator
    looks first); return the exit code. A message can quote a server or a file (an identity
    endpoint's error text): control characters are shown escaped, never sent to the terminal."""
    said = tuple(printable(line) for line in said)
    for line in said:
        print(line, file=sys.stderr)
    _json_error(code, *said)
    _note_in_log_file(f"{'; '.join(said).removeprefix('onboard: ')} (exit {code})", logging.ERROR)
    return code


def _json_error(code: int, *said: str) -> None:
    """With --json, a command that stops still prints its one JSON value: why, and its code."""
    if _JSON_OUT.get():
        _print_json(output.error_json(code, "; ".join(said).removeprefix("onboard: ")))


def _note_in_log_file(message: str, level: int) -> None:
    """A line for the --log-file only, if there is one (the console has its own words)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _LogFile):
            handler.note(message, level)


# Said in the top-level help and in each command's: -c works before or after the command.
_CONFIG_HELP = (
    f"configuration file (default: ./{DEFAULT_CONFIG}; 'run' and 'validate --online' "
    "refuse to start without one); before or after the command"
)
_Commands = argparse._SubParsersAction  # the object add_subparsers returns


def _parser() -> argparse.ArgumentParser:
    """The command line: the options every command takes, then one sub-parser per command,
    each built by its own function below so that a command's options read in one place."""
    parser = argparse.ArgumentParser(
        prog="onboard",
        description="Issue Microsoft Entra ID Temporary Access Passes for a new-hire spreadsheet.",
        epilog="Exit codes: 0 all issued, 1 some rows failed, 2 bad usage/config/input "
        "(nothing sent), 3 aborted (sign-in failed, or the audit or journal could not be written), "
        "4 internal error, 5 another run holds the journal or the tenant, 130 stopped by SIGINT "
        "(Ctrl-C), "
        "143 stopped by SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=f"onboard {__version__}")
    parser.add_argument("-c", "--config", metavar="FILE", help=_CONFIG_HELP)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (
        _add_run,
        _add_deliver,
        _add_report,
        _add_runs,
        _add_status,
        _add_revoke,
        _add_validate,
        _add_simulate,
        _add_init,
    ):
        add_command(commands)
    return parser


def _common_options(command: argparse.ArgumentParser, verbose: str = "more log output") -> None:
    """-c and -v after the command as well as before it."""
    # SUPPRESS: given after the command they count; not given, the subcommand leaves the
    # value given before it (`onboard -c x.yaml run ...`) alone.
    command.add_argument(
        "-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP
    )
    command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=verbose)


def _json_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--json",
        action="store_true",
        help="print one JSON value on standard output and nothing else (logs stay on standard "
        "error; exit codes are the same)",
    )


def _print_json(value: Any) -> None:
    """The command's one JSON value, on standard output."""
    with _stdout_may_close():
        print(json.dumps(value, ensure_ascii=False, indent=2))


def _add_run(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard run`: the one command that creates passes."""
    run = commands.add_parser(
        "run",
        help="issue passes for every row and write the audit workbook",
        description="Read the spreadsheets, issue one pass per user through Graph, and write "
        "the audit workbook (the only place pass values are written).",
    )
    run.add_argument("inputs", nargs="+", metavar="INPUT", help=".xlsx or .csv new-hire files")
    run.add_argument("--out", metavar="DIR", help="folder for the audit workbook (output.dir)")
    run.add_argument(
        "--reissue",
        action="store_true",
        help="issue again for every row, even users who already got a pass for the same start "
        "(each new pass replaces the earlier one)",
    )
    run.add_argument(
        "--reissue-user",
        action="append",
        default=[],
        metavar="UPN",
        help="issue again for this user even if they already got a pass (repeatable)",
    )
    _allow_user(run)
    run.add_argument(
        "--due-within",
        type=_days,
        metavar="DAYS",
        help="only rows whose start is within DAYS days; the rest wait for a later run "
        "(run.due_within_days)",
    )
    run.add_argument(
        "--log-file", metavar="FILE", help="also append timestamped log lines to FILE (owner-only)"
    )
    _preview(run)
    _json_option(run)
    _common_options(run, "more log output: -v a line per row, -vv a line per request")
    run.set_defaults(handler=_run)


def _preview(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--preview",
        metavar="DIR",
        help="write each delivery message to DIR as an owner-only .eml file and send none "
        "(whatever delivery.method says)",
    )


def _add_deliver(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard deliver`: a finished run's passes mailed (again), from its audit workbook."""
    deliver_command = commands.add_parser(
        "deliver",
        help="mail a finished run's passes (or some of them again) to their recipients",
        description="Deliver a finished run's passes by mail as delivery.* says, reading them "
        "from the run's audit workbook: every hire not yet mailed (a run made with "
        "delivery.method none, a recipient found since, a message that failed). A message sent "
        "or of unknown fate is sent again only to the addresses --to names.",
    )
    deliver_command.add_argument(
        "run_id", metavar="RUN_ID", help="a run id, as 'onboard runs' lists"
    )
    deliver_command.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="send this recipient's message again, on purpose, whatever became of it "
        "(repeatable); the run's other messages are left alone",
    )
    _preview(deliver_command)
    _common_options(deliver_command)
    deliver_command.set_defaults(handler=_deliver)


def _add_report(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard report`: a past run's workbook, again, from the journal."""
    report = commands.add_parser(
        "report",
        help="rebuild the audit workbook of a past run from the journal",
        description="Write the audit workbook of a past run from the journal. Pass values are "
        "included only where the journal still holds them: for a run killed before it wrote its "
        "own audit (this then becomes its audit, and the values are wiped from the journal).",
    )
    report.add_argument("run_id", metavar="RUN_ID", help="a run id, as 'onboard runs' lists")
    report.add_argument("--out", metavar="DIR", help="folder for the workbook (output.dir)")
    _json_option(report)
    _common_options(report)
    report.set_defaults(handler=_report)


def _add_runs(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard runs`: the journal's runs, listed."""
    runs = commands.add_parser(
        "runs",
        help="list past runs from the journal, with their counts",
        description="List the runs the journal knows, oldest first, with their outcome counts.",
    )
    _json_option(runs)
    _common_options(runs)
    runs.set_defaults(handler=_runs)


def _add_validate(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard validate`: every check a run makes before its first create, creating nothing."""
    validate = commands.add_parser(
        "validate",
        help="check the spreadsheets without sending anything",
        description="Check every row as 'run' would before its first create, and create "
        "nothing: print a table of problems (file, row, column, problem, what to do), write the "
        "same to a workbook next to the audit, exit 1 if there is any. Without --online it uses "
        "no network.",
    )
    validate.add_argument("inputs", nargs="+", metavar="INPUT", help=".xlsx or .csv files")
    validate.add_argument(
        "--online",
        action="store_true",
        help="also read the pass policy, find every user in the directory and check they are "
        "new hires: no admin role, no sign-in methods yet (reads only)",
    )
    validate.add_argument("--out", metavar="DIR", help="folder for the workbook (output.dir)")
    _allow_user(validate)
    _json_option(validate)
    _common_options(validate)
    validate.set_defaults(handler=_validate)


def _add_status(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard status`: how a run's passes stand at Graph now (reads only)."""
    status = commands.add_parser(
        "status",
        help="show how each pass of a run stands now: used, usable, expired, replaced...",
        description="For each pass a run issued, read the user's pass and sign-in methods "
        f"from Graph (reads only): the pass's state ({', '.join(lifecycle.PassState)}) and "
        "the strong methods registered since. Prints a table, writes "
        "onboard-status-RUN_ID.xlsx (no pass values). Exit 1 when a hire whose start has "
        "passed has neither a usable pass nor a registered method.",
    )
    status.add_argument(
        "run_id",
        nargs="?",
        metavar="RUN_ID",
        help="a run id, as 'onboard runs' lists (default: the latest run that issued a pass)",
    )
    status.add_argument("--out", metavar="DIR", help="folder for the workbook (output.dir)")
    _json_option(status)
    _common_options(status)
    status.set_defaults(handler=_status)


def _add_revoke(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard revoke`: delete a run's passes that Graph still holds."""
    revoke = commands.add_parser(
        "revoke",
        help="delete the passes a run issued (a cancelled start, a duplicate run, a leak)",
        description="Delete the passes a run issued, each only while Graph still holds that "
        "very pass (a pass issued since is never touched). On a terminal it lists them and "
        "asks; otherwise it needs --yes. Every deletion is journaled (run it again after a "
        "stop: nothing is deleted twice) and written to onboard-revoke-RUN_ID-TIME.xlsx.",
    )
    revoke.add_argument("run_id", metavar="RUN_ID", help="a run id, as 'onboard runs' lists")
    revoke.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="UPN",
        help="only this user's pass (repeatable)",
    )
    revoke.add_argument("--unused", action="store_true", help="leave used and expired passes alone")
    revoke.add_argument(
        "--dry-run", action="store_true", help="show what would be deleted; delete nothing"
    )
    revoke.add_argument("--yes", action="store_true", help="do not ask (needed off a terminal)")
    revoke.add_argument("--out", metavar="DIR", help="folder for the workbook (output.dir)")
    _json_option(revoke)
    _common_options(revoke)
    revoke.set_defaults(handler=_revoke)


def _add_simulate(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard simulate`: the Graph simulator served on loopback, as a tenant's URL would be."""
    simulate = commands.add_parser(
        "simulate",
        help="serve the built-in Graph simulator until Ctrl-C",
        description="Serve the Graph simulator over HTTPS on loopback, for trying a config that "
        "points at a URL (as a real tenant would) without a tenant.",
    )
    simulate.add_argument(
        "--port", type=_port, default=8443, help="port on 127.0.0.1 (default 8443; 0: any free one)"
    )
    simulate.add_argument(
        "--cert-dir",
        metavar="DIR",
        default="simulator-certs",
        help="where to write the simulator's CA certificate (default ./simulator-certs)",
    )
    _common_options(simulate)
    simulate.set_defaults(handler=_simulate)


def _add_init(commands: _Commands[argparse.ArgumentParser]) -> None:
    """`onboard init`: a config file for a real tenant. It takes no -c/-v of its own: PATH (or
    the -c before the command) is the file it writes."""
    init = commands.add_parser(
        "init",
        help="write a commented config.yaml for your tenant",
        description="Write a config file for a real tenant: every key with its default and a "
        "comment. On a terminal it asks for what the options do not give; otherwise the "
        "missing options are an error. It never asks for or writes a secret, and never "
        "replaces a file unless --force.",
    )
    init.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help=f"file (or folder) to write (default ./{DEFAULT_CONFIG})",
    )
    init.add_argument("--tenant-id", metavar="ID", help="the tenant's id (GUID) or domain")
    init.add_argument(
        "--client-id", metavar="ID", help="the app registration's Application (client) ID"
    )
    init.add_argument(
        "--auth-method", choices=AUTH_METHODS, help="the app's credential (default client_secret)"
    )
    init.add_argument(
        "--certificate-path", metavar="FILE", help="with --auth-method certificate: PEM or PFX"
    )
    init.add_argument(
        "--timezone", metavar="ZONE", help="IANA zone the start dates are in, e.g. Europe/London"
    )
    init.add_argument(
        "--cloud",
        choices=tuple(CLOUDS),
        default="global",
        help="the tenant's cloud (default global)",
    )
    init.add_argument("--force", action="store_true", help="replace the file if it exists")
    init.set_defaults(handler=_init)


def _load(args: argparse.Namespace, *, sends: bool = False) -> Config:
    """The config file given, or ./config.yaml. Without either, only commands that send
    nothing go on (on the defaults); `sends` (run, validate --online) refuses, saying how to
    start, so that nothing ever reports a pass from an unchosen tenant or the simulator."""
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    if path is None and sends:
        raise ConfigError(NO_CONFIG)
    return load_config(path, os.environ)


class _Progress:
    """A progress bar on a terminal; a plain line every few seconds otherwise (cron)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: Any = None
        self.total = 0
        self.done = 0
        self.failed = 0
        self.not_sent = 0
        self.doing = ""
        self.last = time.monotonic()

    def phase(self, doing: str) -> None:
        """What the run is doing now (reading, checking, issuing): the bar's label, so it does
        not look stuck while the checks before the first create read from Graph."""
        self.doing = doing
        if self.bar is not None:
            self.bar.set_description(doing, refresh=True)

    def start(self, total: int) -> None:
        self.total = total
        if self.stream.isatty() and total:
            self.bar = tqdm(total=total, unit="row", file=self.stream, dynamic_ncols=True)

    def __call__(self, outcome: Outcome) -> None:
        self.done += 1
        if isinstance(outcome, Failed):
            self.not_sent += outcome.not_sent
            self.failed += not outcome.not_sent
        if self.bar is not None:
            self.bar.update(1)
            counts = {"failed": self.failed} | (
                {"not_sent": self.not_sent} if self.not_sent else {}
            )
            self.bar.set_postfix(counts, refresh=False)
            return
        self._line()

    def tick(self) -> None:
        """Redraw the bar (its clock and rate move while no row finishes, e.g. during a
        Retry-After pause); off a terminal, the plain line when it is due."""
        if self.bar is not None:
            self.bar.refresh()
        elif self.total:
            self._line()

    async def keep_fresh(
        self,
        every: float = BAR_REFRESH_SECONDS,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        """tick() every `every` seconds until cancelled."""
        while True:
            await sleep(every)
            self.tick()

    def _line(self) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            doing = f" ({self.doing})" if self.doing else ""
            not_sent = f", {self.not_sent} not sent" if self.not_sent else ""
            print(
                f"progress: {self.done}/{self.total} rows done, {self.failed} failed"
                f"{not_sent}{doing}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _AboveTheBar(logging.StreamHandler[TextIO]):
    """Console log lines written with tqdm.write: a progress bar on the same stream is cleared
    first and drawn again below the line, rather than the line being glued to the bar's."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _run(args: argparse.Namespace) -> int:
    """`onboard run`: issue the passes, print what became of the rows, and exit with the code
    that says it (a signal's own code when one stopped the run)."""
    config = _load(args, sends=True)
    progress = _Progress()
    received: list[signal.Signals] = []
    try:
        with _ignored_once_stopping(received):
            report = asyncio.run(_run_until_signalled(args, config, progress, received))
    except RunStopped as exc:
        progress.close()
        code = SIGNAL_EXIT[received[0]] if received else EXIT_INTERRUPTED
        return _stopped(code, f"onboard: {exc}")
    except asyncio.CancelledError:
        progress.close()
        said = (
            "onboard: stopped before writing the audit workbook. Run the same command again: it "
            "resumes this run and writes it."
        )
        print(said, file=sys.stderr)
        code = SIGNAL_EXIT[received[-1]] if received else EXIT_INTERRUPTED
        _json_error(code, said)
        return code
    finally:
        progress.close()
    if args.json:
        _print_json(output.run_json(report))
    else:
        with _stdout_may_close():
            _print_report(report, config)
    code = _run_exit_code(report, received)
    early = f", stopped early ({report.stopped})" if report.stopped else ""
    _note_in_log_file(
        f"run {report.run_id}: {_counts(report)}{early} (exit {code})",
        logging.INFO if code == EXIT_OK else logging.WARNING,
    )
    return code


async def _run_until_signalled(
    args: argparse.Namespace,
    config: Config,
    progress: _Progress,
    received: list[signal.Signals],
) -> RunReport:
    """The run, with the progress kept fresh and the signals it gets appended to `received`."""
    stop = asyncio.Event()
    _stop_on_signals(stop, received)
    ticker = asyncio.create_task(progress.keep_fresh())
    try:
        return await job.run(
            config,
            args.inputs,
            env=os.environ,
            out_dir=Path(args.out) if args.out else None,
            on_outcome=progress,
            on_start=progress.start,
            on_phase=progress.phase,
            stop=stop,
            reissue=args.reissue,
            reissue_users=args.reissue_user,
            allow_users=args.allow_user,
            due_within_days=args.due_within,
            preview=Path(args.preview) if args.preview else None,
        )
    finally:
        ticker.cancel()


def _stop_on_signals(stop: asyncio.Event, received: list[signal.Signals]) -> None:
    """The first SIGINT or SIGTERM (Ctrl-C, cron's timeout, systemd, a container stop) sets
    `stop`: the run takes no more rows, lets requests in flight finish and writes the audit.
    A second cancels the running task at once (the journal keeps what was issued)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        if stop.is_set():
            print(
                "onboard: stopping at once; the journal keeps every pass issued so far",
                file=sys.stderr,
            )
            task.cancel()
            return
        stop.set()
        print(
            f"onboard: {signum.name}: finishing the requests in flight, then writing the "
            "audit (send it again to stop at once)",
            file=sys.stderr,
        )

    for signum in SIGNAL_EXIT:
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except NotImplementedError:  # Windows: Ctrl-C stops at once; the journal resumes
            break


@contextlib.contextmanager
def _ignored_once_stopping(received: list[signal.Signals]) -> Iterator[None]:
    """After a loop that was signalled to stop: further SIGINT/SIGTERM are ignored. The loop's
    own handlers are gone once it has closed, and the process is about to exit with the first
    signal's code anyway: a second Ctrl-C then must not kill it mid-print (exit -2, no JSON)."""
    try:
        yield
    finally:
        if received:
            for signum in SIGNAL_EXIT:
                with contextlib.suppress(ValueError, OSError):  # not the main thread
                    signal.signal(signum, signal.SIG_IGN)


def _run_exit_code(report: RunReport, received: list[signal.Signals]) -> int:
    """The exit code of a run that wrote its audit: the first signal's, if one stopped it."""
    if received:
        return SIGNAL_EXIT[received[0]]
    if report.status is RunStatus.ABORTED:
        return EXIT_ABORTED
    # A pass nobody here can vouch for, or a check that could not be made, is not a
    # success: a person must look (and cron's mail goes out on anything but 0).
    attention = report.failed or report.held_elsewhere or report.attention
    mailing = report.delivery is not None and report.delivery.problems
    return EXIT_ROWS_FAILED if attention or mailing else EXIT_OK


@contextlib.contextmanager
def _stdout_may_close() -> Iterator[None]:
    """Results printed to a pipe that was closed (`| head -1`) are not an error of the run:
    the rest of the output is dropped, and the exit code stays the run's."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _counts(report: RunReport) -> str:
    """The counts, as the printed line and the log's last line both say them."""
    counts = [
        f"{len(report.issued)} issued",
        f"{len(report.failures)} failed",
        f"{len(report.skipped) - len(report.held_elsewhere)} skipped"
        + (f" ({report.not_yet_due} not yet due)" if report.not_yet_due else ""),
    ]
    if report.held_elsewhere:
        counts.append(f"{len(report.held_elsewhere)} hold a pass this journal did not issue")
    if report.not_sent:
        counts.append(f"{len(report.not_sent)} not sent")
    return ", ".join(counts)


def _what_is_kept(exc: OnboardError) -> str:
    """What an aborted run leaves behind: nothing, or passes waiting in the journal."""
    if exc.kept is None:
        return "no pass was created."
    run_id, count = exc.kept
    passes = (
        f"the pass run {run_id} issued before it stopped is"
        if count == 1
        else (f"the {count} passes run {run_id} issued before it stopped are")
    )
    return (
        f"no further pass was created; {passes} kept in the journal: 'onboard report {run_id}' "
        "writes them to a workbook now, or run the same command again once this is fixed."
    )


def _print_report(report: RunReport, config: Config) -> None:
    if report.simulated:
        print(SIMULATED)
    if report.resumed:
        print(f"resumed run {report.run_id}, which had stopped before it finished")
    print(f"onboard run {report.run_id}: {_count(report.rows, 'row')}: {_counts(report)}")
    if report.tenant is not None:
        print(f"tenant: {report.tenant.describe()}")
    if report.stopped:
        print(f"the run stopped early ({report.stopped}); {_to_finish(report)}")
    failures = sorted(report.failures, key=lambda f: (f.origin.source, f.origin.row))
    for f in failures[:SHOW_FAILURES]:
        print(f"  failed  {f.origin.source} row {f.origin.row}  {f.user or '-'}: {f.shown}")
    if len(failures) > SHOW_FAILURES:
        print(f"  ... and {len(failures) - SHOW_FAILURES} more in the Failed sheet")
    held = sorted(report.held_elsewhere, key=lambda s: (s.origin.source, s.origin.row))
    for s in held[:SHOW_FAILURES]:
        print(f"  held    {s.origin.source} row {s.origin.row}  {s.user}: a pass this journal did "
              "not issue")  # fmt: skip
    if held:
        print(
            "  nobody here can vouch those passes were handed out: if they were not, replace "
            "them with --reissue-user UPN (or pass.existing: replace)"
        )
    for line in report.attention:
        print(f"  needs attention: {line}")
    if report.delivery is not None:
        _print_delivery(report.delivery)
    if report.audit_path is not None:
        print(f"audit workbook: {report.audit_path}")
        if report.issued:
            print(
                "it holds the pass values: keep it private, and delete it once they are handed out"
                if not report.simulated
                else "it holds simulated pass values (they work in no tenant)"
            )
        _print_protection(config, report.audit_path)
    if report.simulated:
        print(SIMULATED)


def _to_finish(report: RunReport) -> str:
    """What finishes a stopped run. Delivery starts once every row is done, so a run stopped
    while delivering has nothing left to issue: the same command again would start a new run
    that issues, so mails, nothing; `onboard deliver` sends the rest."""
    delivery = report.delivery
    if delivery is None or delivery.not_started is not None:
        return "run the same command again to finish"
    if delivery.preview is not None:
        return f"'onboard deliver {report.run_id} --preview DIR' writes every message"
    return f"every pass is issued; 'onboard deliver {report.run_id}' sends the messages not sent"


def _print_delivery(delivery: DeliveryReport) -> None:
    """What became of the messages: the counts, then each that needs a person (up to
    SHOW_FAILURES of them). Never a pass: a message's subject and body are not printed."""
    nobody, run_id = delivery.nobody, delivery.run_id
    if delivery.preview is not None:
        written = delivery.count(State.PREVIEWED)
        print(f"delivery preview: {_count(written, 'message')} written to {delivery.preview} "
              f"(nothing sent); {len(nobody)} mailed to nobody")  # fmt: skip
    else:
        now = (
            f" ({delivery.sent_now} just now)"
            if delivery.sent_now != delivery.count(State.SENT)
            else ""
        )
        print(
            f"delivery by mail: {_count(delivery.count(State.SENT), 'message')} sent{now}, "
            f"{delivery.count(State.FAILED)} failed, "
            f"{delivery.count(State.UNKNOWN) + delivery.count(State.SENDING)} of unknown fate, "
            f"{delivery.count(State.TO_SEND) + len(delivery.unsent)} not sent; "
            f"{len(nobody)} {'hire' if len(nobody) == 1 else 'hires'} mailed to nobody"
        )
    if delivery.not_started:
        print(f"  not delivered: {delivery.not_started}; 'onboard deliver {run_id}' sends them")
    lines = []
    for m in sorted(delivery.current(), key=lambda m: m.number):
        where = ", ".join(f"{o.source} row {o.row}" for o in m.origins[:3])
        if not m.to and m.why is not None:
            user = delivery.users.get(m.origins[0], "-")
            lines.append(f"  nobody  {where}  {user}: {m.why.value}")
        elif m.state in (State.FAILED, State.UNKNOWN) and m.why is not None:
            lines.append(f"  {m.state.value:<7} {m.to} ({where}): {m.why.value}")
    for line in lines[:SHOW_FAILURES]:
        print(printable(line))
    if len(lines) > SHOW_FAILURES:
        print(f"  ... and {len(lines) - SHOW_FAILURES} more in the Delivery column")
    if delivery.count(State.UNKNOWN) + delivery.count(State.SENDING):
        print(f"  a message of unknown fate may have arrived: ask its recipient; 'onboard "
              f"deliver {run_id} --to ADDRESS' sends it again")  # fmt: skip
    elif delivery.count(State.TO_SEND) + delivery.count(State.FAILED) + len(delivery.unsent):
        print(f"  'onboard deliver {run_id}' sends the rest")


def _deliver(args: argparse.Namespace) -> int:
    """`onboard deliver`: mail a finished run's passes; exit 1 if any message (or hire) needs
    a person."""
    config = _load(args, sends=True)  # a preview too reads the recipients from the tenant
    received: list[signal.Signals] = []
    preview = Path(args.preview) if args.preview else None

    async def until_signalled() -> DeliveryReport:
        stop = asyncio.Event()
        _stop_on_signals(stop, received)
        return await redeliver(
            config, args.run_id, env=os.environ, to=args.to, preview=preview, stop=stop
        )

    try:
        with _ignored_once_stopping(received):
            report = asyncio.run(until_signalled())
    except asyncio.CancelledError:
        return _stopped(
            SIGNAL_EXIT[received[-1]] if received else EXIT_INTERRUPTED,
            "onboard: stopped at once; the journal keeps what was sent",
        )
    with _stdout_may_close():
        _print_delivery(report)
        if report.audit_path is not None:
            print(f"audit workbook updated: {report.audit_path}")
    if received:
        return SIGNAL_EXIT[received[0]]
    return EXIT_ROWS_FAILED if report.problems else EXIT_OK


def _print_protection(config: Config, path: Path) -> None:
    """Say how the workbook at `path` is protected: its password's source, its pass-free copy."""
    if config.output.password.configured:
        print(f"it is encrypted with the password from {config.output.password.where}")
    if config.output.redacted_copy:
        print(f"the same without pass values: {redacted_path(path)}")


def _validate(args: argparse.Namespace) -> int:
    config = _load(args, sends=args.online)
    found = asyncio.run(
        validation.validate(
            config, args.inputs, env=os.environ, online=args.online, allow_users=args.allow_user
        )
    )
    rows: list[Failed | Skipped] = [*found.problems, *found.skipped]
    out = Path(args.out) if args.out else config.output.dir
    path = out / f"onboard-validate-{datetime.now(UTC):%Y%m%d-%H%M%S}.xlsx"
    check_output_dir(out)
    write_problems(path, rows)
    if args.json:
        _print_json(output.validate_json(found, path, online=args.online))
    else:
        with _stdout_may_close():
            _print_validation(found, rows, path, online=args.online)
    return EXIT_ROWS_FAILED if found.problems or found.attention else EXIT_OK


def _print_validation(
    found: validation.Validation, rows: list[Failed | Skipped], path: Path, *, online: bool
) -> None:
    for file in found.files:
        sheet = f", sheet '{printable(file.sheet)}'" if file.sheet else ""
        header = f", headers on row {file.header_row}" if file.header_row != 1 else ""
        print(f"{printable(str(file.path))}: {_count(file.row_count, 'row')}{sheet}{header}")
    simulated = found.tenant is not None and found.tenant.simulated
    if simulated:
        print(SIMULATED)
    if found.tenant is not None:
        print(f"tenant: {found.tenant.describe()}")
    if found.policy is not None:
        print(f"pass policy: {found.policy}")
    if found.journal is not None:
        print(f"earlier runs: {found.journal}")
    for item, said in found.checks:
        print(f"{item.lower()}: {said}")
    if rows:
        print()
        print(_table(rows))
    print()
    print(
        f"{_count(len(found.ready), 'row')} ready to send, {len(found.problems)} with problems, "
        f"{len(found.skipped)} to skip" + ("" if online else " (not checked with Graph: "
        "add --online to check the pass policy and that each user exists)")
    )  # fmt: skip
    print(f"problems workbook: {path}")
    for line in found.attention:
        print(f"needs attention: {line}")
    if simulated:
        print(SIMULATED)


PROBLEM_WIDTH = 100  # "what to do" is wrapped to this width under its row


def _table(rows: Sequence[Failed | Skipped]) -> str:
    """File, row, column, problem, and what to do (wrapped beneath), one block per row."""
    heads = ("FILE", "ROW", "COLUMN", "USER", "PROBLEM")
    cells = [
        (
            printable(o.origin.source),
            str(o.origin.row or "-"),
            printable(o.column or "-") if isinstance(o, Failed) else "-",
            printable(o.user or "-"),
            printable(o.shown if isinstance(o, Failed) else f"skipped: {o.detail}"),
        )
        for o in rows
    ]
    widths = [min(max(len(c[i]) for c in [heads, *cells]), 40) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, [*widths, 0], strict=True)).rstrip()]
    for o, cell in zip(rows, cells, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell, [*widths, 0], strict=True)))
        if isinstance(o, Failed):
            for line in textwrap.wrap(printable(o.detail), PROBLEM_WIDTH):
                lines.append(f"    {line}")
    return "\n".join(line.rstrip() for line in lines)


def _simulate(args: argparse.Namespace) -> int:
    config = _load(args)
    cert_dir = Path(args.cert_dir).resolve()

    async def serve_until_stopped() -> str | None:
        """Serve until SIGINT or SIGTERM; the reason it could not start, if it could not."""
        from .simulator import DEFAULT_CLIENT_SECRET, serve

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in SIGNAL_EXIT:
            try:
                loop.add_signal_handler(signum, stop.set)
            except NotImplementedError:  # Windows: Ctrl-C raises KeyboardInterrupt instead
                break
        state = simulator_state(config)
        state.on_mail = _show_mail
        async with contextlib.AsyncExitStack() as stack:
            try:
                running = await stack.enter_async_context(
                    serve(state, port=args.port, cert_dir=cert_dir)
                )
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                if exc.filename is not None:
                    return (
                        f"cannot write the simulator's certificates into {cert_dir}: {reason}; "
                        "choose another folder with --cert-dir"
                    )
                return (
                    f"cannot serve the simulator on 127.0.0.1 port {args.port}: {reason}; "
                    "choose another with --port (0: any free port)"
                )
            print(f"Graph simulator listening on {running.url} (Ctrl-C to stop)")
            print("point a config at it with:")
            print(f"  graph:\n    endpoint: {running.url}\n    ca_bundle: {running.ca_file}")
            print(
                f"  auth:\n    authority: {running.url}\n    tenant_id: {SIMULATOR_TENANT}"
                f"\n    client_id: {SIMULATOR_CLIENT_ID}"
            )
            # A URL is a real tenant to the config: it must choose its time zone.
            print(f"  pass:\n    timezone: {SIMULATOR_TIMEZONE}")
            print(
                f"and the demo client secret: export {config.auth.client_secret.env}="
                f"{DEFAULT_CLIENT_SECRET}",
                flush=True,
            )
            where = f"written to {state.mail_dir}" if state.mail_dir else "kept in memory"
            print(f"mail it accepts (sendMail) is listed here and {where}", flush=True)
            await stop.wait()
        return None

    try:
        problem = asyncio.run(serve_until_stopped())
    except KeyboardInterrupt:  # Windows' Ctrl-C
        problem = None
    if problem is not None:
        print(f"onboard: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Stopping is how a simulator ends: a normal end, not an interrupted job.
    print("simulator stopped", file=sys.stderr)
    return EXIT_OK


def _show_mail(mail: SimMail) -> None:
    """`onboard simulate`: a line for each message the simulator accepted (never its body)."""
    where = f" -> {mail.path}" if mail.path else ""
    said = f"mail from {mail.sender} to {', '.join(mail.to)}: {mail.subject!r}{where}"
    print(printable(said), flush=True)


def _init(args: argparse.Namespace, ask: Ask | None = None) -> int:
    """Write a commented config file for a real tenant. `ask` prompts for what the options
    did not give (by default `input`, when stdin and stdout are a terminal); without it the
    missing options are an error. Nothing is written unless every value is valid."""
    if ask is None and sys.stdin.isatty() and sys.stdout.isatty():
        ask = input
    if args.path and args.config and Path(args.path) != Path(args.config):
        return _refused(f"give the file to write once: PATH ({args.path}) or -c ({args.config})")
    path = Path(args.path or args.config or DEFAULT_CONFIG)
    if path.is_dir():
        path = path / DEFAULT_CONFIG
    if path.exists() and not args.force:
        return _refused(f"{path} already exists: nothing was written (--force replaces it)")
    problem = _init_option_problem(args)
    if problem is not None:
        return _refused(problem)
    try:
        setup = _setup(args, ask)
    except _Missing as missing:
        hint = ""
        if "--timezone" in missing.flags:
            zone = machine_zone(os.environ)
            hint = f" (this machine's zone: {zone})" if zone else f" (e.g. {EXAMPLE_TIMEZONE})"
        return _refused(
            f"not on a terminal, so nothing can be asked: give {' and '.join(missing.flags)}"
            f"{hint}; nothing was written"
        )
    except EOFError:
        return _refused("no answer: nothing was written")
    except KeyboardInterrupt:
        print("\nonboard: init stopped: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    text = render_config(setup, PERMISSIONS_USED)
    try:
        with path.open("w" if args.force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:  # created since the check above
        return _refused(f"{path} already exists: nothing was written (--force replaces it)")
    except OSError as exc:
        return _refused(f"cannot write {path}: {exc.strerror}")
    _print_next_steps(path, setup)
    return EXIT_OK


def _init_option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the first init option given a bad value, named by its flag: checked
    before anything is asked, so nobody answers prompts for a file that cannot be written."""
    for flag, value, check in (
        ("--tenant-id", args.tenant_id, tenant_problem),
        ("--client-id", args.client_id, client_id_problem),
        ("--timezone", args.timezone, timezone_problem),
        ("--certificate-path", args.certificate_path, _path_problem),
    ):
        problem = None if value is None else check(value)
        if problem is not None:
            return f"{flag}: {problem}"
    return None


def _print_next_steps(path: Path, setup: TenantSetup) -> None:
    """What init wrote, then what is left to do before the first run: the permissions to
    grant, where the credential comes from (never the file), and the command that checks it."""
    app = f"app {setup.client_id}" if setup.client_id else "system-assigned managed identity"
    print(
        f"wrote {path}: tenant {setup.tenant_id}, {app}, {setup.method}, "
        f"start dates in {setup.timezone}"
    )
    print("next steps:")
    who = "the managed identity" if setup.method == "managed_identity" else "the app"
    how = (
        "with Graph PowerShell or the Azure CLI"
        if setup.method == "managed_identity"
        else "with admin consent"
    )
    print(f"  1. grant {who} these Microsoft Graph application permissions, {how} (README: "
          '"Connecting to a real tenant"):')  # fmt: skip
    for permission, why in PERMISSIONS_USED:
        print(f"       {permission}  {why}")
    if setup.method == "managed_identity":
        print("  2. run onboard on the Azure machine that holds the identity")
    elif setup.method == "certificate":
        print(
            "  2. upload the certificate's public part to the app registration; if its key has "
            "a password, name its variable in auth.certificate_password_env"
        )
    else:
        print(
            f"  2. export {DEFAULT_CLIENT_SECRET_ENV}='<the client secret's Value>' (it is "
            "never written into the file; or set auth.client_secret_file)"
        )
    given = "" if path.resolve() == Path(DEFAULT_CONFIG).resolve() else f" -c {path}"
    print(
        f"  3. onboard validate --online HIRES.xlsx{given}   (signs in and checks the sheet; "
        "creates nothing)"
    )


class _Missing(Exception):
    """Values init needs that no option gave and nobody can be asked for."""

    def __init__(self, flags: list[str]) -> None:
        super().__init__(", ".join(flags))
        self.flags = flags


def _setup(args: argparse.Namespace, ask: Ask | None) -> TenantSetup:
    """The options, and the answers to what they left out (or _Missing without `ask`)."""
    method = args.auth_method
    if ask is None:
        method = method or "client_secret"
        needed = [
            ("--tenant-id", args.tenant_id is None),
            ("--client-id", args.client_id is None and method != "managed_identity"),
            ("--certificate-path", args.certificate_path is None and method == "certificate"),
            ("--timezone", args.timezone is None),
        ]
        missing = [flag for flag, absent in needed if absent]
        if missing:
            raise _Missing(missing)
        certificate = args.certificate_path if method == "certificate" else None
        return TenantSetup(
            args.tenant_id, args.client_id, args.timezone, method, _absolute(certificate),
            args.cloud,
        )  # fmt: skip
    tenant = args.tenant_id or _prompt(
        ask, "tenant id (GUID) or domain, e.g. contoso.onmicrosoft.com", tenant_problem
    )
    method = method or _prompt(
        ask, f"credential: {' | '.join(AUTH_METHODS)}", _method_problem, "client_secret"
    )
    client = args.client_id
    if client is None and method == "managed_identity":
        client = _prompt(
            ask,
            "client id of a user-assigned identity (empty: a system-assigned one)",
            client_id_problem,
            optional=True,
        )
    elif client is None:
        client = _prompt(ask, "the app's Application (client) ID", client_id_problem)
    certificate = args.certificate_path
    if certificate is None and method == "certificate":
        certificate = _prompt(ask, "certificate file (PEM with its key, or PFX)", _path_problem)
    zone = args.timezone or _prompt(
        ask,
        "time zone of the start dates (IANA)",
        timezone_problem,
        machine_zone(os.environ) or EXAMPLE_TIMEZONE,
    )
    return TenantSetup(
        str(tenant),
        client,
        str(zone),
        str(method),
        _absolute(certificate) if method == "certificate" else None,
        args.cloud,
    )


def _absolute(path: str | None) -> str | None:
    """A certificate path as init was given it, made absolute: paths in a config are relative
    to the config file, and init checked this one against the current folder."""
    return None if path is None else str(Path(path).expanduser().resolve())


def _prompt(
    ask: Ask,
    question: str,
    check: Callable[[str], str | None],
    default: str | None = None,
    *,
    optional: bool = False,
) -> str | None:
    """Ask until the answer passes `check`; empty means `default` (or None when optional)."""
    while True:
        answer = ask(f"{question}{f' [{default}]' if default else ''}: ").strip() or default
        if answer is None:
            if optional:
                return None
            print("  an answer is needed")
            continue
        problem = check(answer)
        if problem is None:
            return answer
        print(f"  {problem}")


def _method_problem(method: str) -> str | None:
    return None if method in AUTH_METHODS else f"one of {', '.join(AUTH_METHODS)}, please"


def _path_problem(path: str) -> str | None:
    if not path.isprintable():
        return "a file name without control characters, please"
    if not Path(path).expanduser().is_file():
        return f"{path} is not a file"
    return None


def _refused(message: str) -> int:
    print(f"onboard: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _report(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.state.path.exists():  # before any folder is made: nothing to report from
        raise ConfigError(
            f"no journal at {config.state.path}: no run to report (name the config file the "
            "runs used with -c)"
        )
    out = Path(args.out) if args.out else config.output.dir
    check_output_dir(out)
    options = audit_options(config.output, os.environ)
    # A finished run's workbook is rebuilt from a read-only journal, without its lock; only a
    # run killed before its audit has its values written out and wiped, which takes the lock.
    journal = Journal(config.state.path, options.password).open(lock=False)
    try:
        found = journal.run(args.run_id)
        if found is None or found.status is not RunStatus.RUNNING:
            path, run, with_values = history.report(journal, args.run_id, out, options)
    finally:
        journal.close()
    if found is not None and found.status is RunStatus.RUNNING:
        with Journal(config.state.path, options.password) as journal:
            path, run, with_values = history.report(journal, args.run_id, out, options)
    if args.json:
        _print_json(output.report_json(run, path, pass_values=with_values))
        return EXIT_OK
    if run.simulated:
        print(SIMULATED)
    print(f"run {run.run_id} ({run.status}): audit workbook rebuilt from the journal: {path}")
    print(f"tenant: {run.meta.get('tenant') or run.tenant_shown}")
    _print_protection(config, path)
    if with_values:
        print("it holds the pass values the journal kept: keep it private")
    else:
        print(
            "pass values are not in it: the journal wiped them once the run's own audit was "
            f"written ({run.audit_path or 'see onboard runs'})"
        )
    return EXIT_OK


def _runs(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.state.path.exists():
        if args.json:
            _print_json([])
        else:
            print(f"no runs yet (no journal at {config.state.path})")
        return EXIT_OK
    # Read only, never locked: a run starting meanwhile must not find `runs` in its way.
    journal = Journal(config.state.path).open(lock=False)
    try:
        # A run marked running is going on, or was killed: asked before and after reading,
        # so a run that starts or ends meanwhile is not called stopped.
        live = journal.lock_held()
        runs = journal.runs()
        live = journal.lock_held() or live
    finally:
        journal.close()
    if args.json:
        _print_json(output.runs_json(runs, live=live))
        return EXIT_OK
    if not runs:
        print(f"no runs yet (the journal {config.state.path} is empty)")
        return EXIT_OK
    tenants = [_tenant_cell(r) for r in runs]
    width = max([len("tenant"), *map(len, tenants)])
    # A column once there is something in it: passes `onboard revoke` deleted.
    revoked = any(r.revoked for r in runs)
    print(
        f"{'run id':<24} {'started (UTC)':<20} {'status':<22} {'tenant':<{width}} {'issued':>6} "
        f"{'failed':>6} {'skipped':>7} {'held':>4} {'not sent':>8} {'in flight':>9} "
        f"{' revoked' if revoked else ''}  audit workbook"
    )
    for r, tenant in zip(runs, tenants, strict=True):
        c = r.counts
        status = str(r.status)
        if r.status is RunStatus.RUNNING:
            status = "running now" if live else "stopped early: resume"
        print(
            f"{r.run_id:<24} {r.started:%Y-%m-%d %H:%M:%S} {status:<22} {tenant:<{width}} "
            f"{c.get('issued', 0) + c.get('unclear', 0):>6} {c.get('failed', 0):>6} "
            f"{c.get('skipped', 0):>7} {c.get('held', 0):>4} {c.get('not_sent', 0):>8} "
            f"{c.get('in_flight', 0) + c.get('interrupted', 0):>9}"
            f"{f' {r.revoked:>7}' if revoked else ''}  {r.audit_path or '-'}"
        )
    if any(r.counts.get("held") for r in runs):
        print(
            "held: users who hold a pass this journal did not issue (see the run's Skipped sheet)"
        )
    if any(r.simulated for r in runs):
        print("SIMULATED: runs marked so issued no pass in a tenant")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    """`onboard status`: the run's passes as Graph holds them now; exit 1 when a hire whose
    start has passed has neither a usable pass nor a registered method (cron can alert)."""
    config = _load(args, sends=True)
    out = Path(args.out) if args.out else None
    report = asyncio.run(lifecycle.status(config, args.run_id, env=os.environ, out_dir=out))
    if args.json:
        _print_json(output.status_json(report))
    else:
        with _stdout_may_close():
            _print_status(report)
    return EXIT_ROWS_FAILED if report.attention else EXIT_OK


def _print_status(report: lifecycle.StatusReport) -> None:
    if report.simulated:
        print(SIMULATED)
    counts = ", ".join(f"{n} {state}" for state, n in report.counts().items())
    print(
        f"onboard status of run {report.run.run_id}: {_passes(len(report.passes))}"
        f"{': ' + counts if counts else ''} (at {report.checked:%Y-%m-%d %H:%M} UTC)"
    )
    print(f"tenant: {report.tenant.describe()}")
    rows = [
        (
            "!" if p.needs_attention else "",
            printable(p.user),
            str(p.state) if p.state is not None else "unknown",
            "(not read)" if p.registered is None else ", ".join(p.registered) or "-",
            printable(p.note),
        )
        for p in report.passes
    ]
    if rows:
        print()
        print(_columns(("", "USER", "STATE", "REGISTERED SINCE", "NOTE"), rows))
    attention = report.attention
    if attention:
        print()
        print(
            f"needs attention (!): {_count(len(attention), 'hire')} whose start has passed with "
            "neither a usable pass nor a registered sign-in method, or whose pass Graph would "
            "not show"
        )
    print(f"status workbook: {report.workbook}")
    if report.simulated:
        print(SIMULATED)


def _revoke(args: argparse.Namespace, ask: Ask | None = None) -> int:
    """`onboard revoke`: delete the run's passes Graph still holds. On a terminal it lists
    them and asks first (`ask`, by default a prompt on standard error); off one it needs
    --yes. Stopped by a signal, it finishes the deletes in flight and writes its workbook."""
    config = _load(args, sends=True)
    confirm = None
    if not args.yes and not args.dry_run:
        if ask is None and not sys.stdin.isatty():
            return _stopped(
                EXIT_BAD_INPUT,
                "onboard: revoke deletes passes, so it asks first, and there is no terminal to "
                "ask on: give --yes (or --dry-run to see what it would delete); nothing was "
                "deleted.",
            )
        confirm = _confirm_revoke(ask or _ask_on_stderr)
    received: list[signal.Signals] = []

    async def until_signalled() -> lifecycle.RevokeReport:
        stop = asyncio.Event()
        _stop_on_signals(stop, received)
        return await lifecycle.revoke(
            config, args.run_id, env=os.environ, users=args.user, unused=args.unused,
            dry_run=args.dry_run, confirm=confirm, stop=stop,
            out_dir=Path(args.out) if args.out else None,
        )  # fmt: skip

    try:
        with _ignored_once_stopping(received):
            report = asyncio.run(until_signalled())
    except RunStopped as exc:
        return _stopped(SIGNAL_EXIT[received[0]] if received else EXIT_INTERRUPTED, str(exc))
    except asyncio.CancelledError:  # a second signal: the deletes in flight were cut short
        return _stopped(
            SIGNAL_EXIT[received[-1]] if received else EXIT_INTERRUPTED,
            "onboard: revoke stopped at once, before writing its workbook; the journal keeps "
            "every deletion sent: run the same command again to finish (nothing is deleted "
            "twice).",
        )
    if args.json:
        _print_json(output.revoke_json(report))
    else:
        with _stdout_may_close():
            _print_revoke(report)
    if received:
        return SIGNAL_EXIT[received[0]]
    return EXIT_ROWS_FAILED if report.failed else EXIT_OK


def _ask_on_stderr(prompt: str) -> str:
    """A question on standard error (standard output may be --json's), the answer from stdin.

    It is asked with the event loop waiting, whose signal handlers would only run once a line
    came: Ctrl-C (or SIGTERM) must end the question itself, as KeyboardInterrupt. The signal
    still reaches the loop afterwards (its wakeup fd), so the exit code says it."""
    print(prompt, end="", file=sys.stderr, flush=True)
    # A handler not set from Python (None) cannot be put back: that signal is left alone.
    before = {s: h for s in SIGNAL_EXIT if (h := signal.getsignal(s)) is not None}
    try:
        for signum in before:
            signal.signal(signum, _interrupt)
        line = sys.stdin.readline()
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    if not line:
        raise EOFError
    return line


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _confirm_revoke(ask: Ask) -> lifecycle.Confirm:
    """Show the passes about to be deleted (on standard error) and ask; anything but yes is no."""

    def confirm(passes: Sequence[lifecycle.Revocation]) -> bool:
        rows = [(printable(r.user), str(r.state or ""), r.recorded.method_id) for r in passes]
        print(_columns(("USER", "STATE", "METHOD ID"), rows), file=sys.stderr)
        try:
            these = "this pass" if len(passes) == 1 else f"these {len(passes)} passes"
            answer = ask(f"delete {these}? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return False
        return answer.strip().lower() in ("y", "yes")

    return confirm


def _print_revoke(report: lifecycle.RevokeReport) -> None:
    if report.simulated:
        print(SIMULATED)
    counts = ", ".join(f"{n} {action}" for action, n in report.counts().items())
    dry = " (dry run: nothing deleted)" if report.dry_run else ""
    print(
        f"onboard revoke of run {report.run.run_id}{dry}: "
        f"{_passes(len(report.revocations))}{': ' + counts if counts else ''}"
    )
    print(f"tenant: {report.tenant.describe()}")
    rows = [
        (printable(r.user), str(r.action), str(r.state or ""), printable(r.detail))
        for r in report.revocations
    ]
    if rows:
        print()
        print(_columns(("USER", "ACTION", "STATE", "DETAIL"), rows))
    if report.declined:
        print("not confirmed: nothing was deleted")
    if report.stopped:
        print("the revoke stopped early: run the same command again to finish (a pass already "
              "deleted is not sent again)")  # fmt: skip
    print(f"revoke workbook: {report.workbook}")
    if report.simulated:
        print(SIMULATED)


def _columns(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table: every column but the last as wide as its widest cell (at most 40)."""
    widths = [min(max(len(r[i]) for r in [heads, *rows]), 40) for i in range(len(heads) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in [heads, *rows]
    )


def _tenant_cell(run: RunInfo) -> str:
    """The tenant column of `onboard runs`: the name the config gave, or the tenant id."""
    if run.tenant is None:
        return "unknown"
    return f"SIMULATED ({run.tenant_shown})" if run.simulated else run.tenant_shown


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535 (0: any free port)")
    return port


def _allow_user(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--allow-user",
        action="append",
        default=[],
        metavar="UPN",
        help="issue for this user even though they hold an admin role or already have sign-in "
        "methods (a deliberate exception, recorded in the audit; repeatable)",
    )


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if not 0 <= days <= 366:
        raise argparse.ArgumentTypeError("must be between 0 and 366 days")
    return days


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _passes(n: int) -> str:
    return "1 pass" if n == 1 else f"{n} passes"


class _LogFileRefused(Exception):
    """--log-file names something no line can be written to: the run does not start."""


class _LogFile(logging.StreamHandler[TextIO]):
    """--log-file: lines appended to the file opened once at the start. A write that fails
    later (a full disk) is said once on stderr, and the file gets no more lines; the run goes
    on (its outcome is in the audit workbook and the journal)."""

    def __init__(self, name: str, stream: TextIO) -> None:
        super().__init__(stream)
        self.shown = name
        self.broken = False

    @classmethod
    def open(cls, name: str, formatter: logging.Formatter) -> _LogFile:
        """Open `name` to append (created 0600) and write a first line; _LogFileRefused if it
        is a folder or takes no line (/dev/full, a full disk, a FIFO nobody reads).

        What it is is decided on the opened file (fstat), never on the name again, so a
        symlink or a file swapped meanwhile cannot turn a chmod elsewhere: only a regular file
        the caller owns is tightened to 0600; a device (/dev/null) is used as it is; a FIFO is
        refused (a reader that stops reading would hang the run).
        """
        # O_NONBLOCK: a FIFO nobody reads fails at once (ENXIO) rather than hanging the run.
        nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX only, as are the next two
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | nonblock
        flags |= getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(name, flags, 0o600)
        except OSError as exc:
            raise _LogFileRefused(_cannot_log(name, exc)) from None
        try:
            if nonblock:
                os.set_blocking(fd, True)  # only the opening was not to wait
            info = os.fstat(fd)
            if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                # A reader that stops reading would block every log line, and the run with it.
                os.close(fd)
                raise _LogFileRefused(
                    f"--log-file {name} is a pipe or a socket: give a file (or /dev/null)"
                )
            if os.name != "nt" and stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                os.fchmod(fd, 0o600)  # user names and request ids: owner-only all the same
        except OSError as exc:
            os.close(fd)
            raise _LogFileRefused(_cannot_log(name, exc)) from None
        # "w" on an open descriptor truncates nothing (O_APPEND holds) and never seeks.
        stream = open(fd, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        handler = cls(name, stream)
        handler.setFormatter(formatter)
        started = f"onboard {__version__} run started (pid {os.getpid()})"
        line = handler.format(
            log.makeRecord(log.name, logging.INFO, __file__, 0, started, (), None)
        )
        try:
            stream.write(line + handler.terminator)
            stream.flush()
        except OSError as exc:
            handler.close()
            raise _LogFileRefused(_cannot_log(name, exc)) from None
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        try:
            line = self.format(record)
        except Exception:  # a formatting bug, not the file's fault: logging's usual report
            self.handleError(record)
            return
        try:
            self.stream.write(line + self.terminator)
            self.stream.flush()
        except OSError as exc:
            self.close()
            print(
                f"onboard: {_cannot_log(self.shown, exc)}: it gets no more lines from this run",
                file=sys.stderr,
            )

    def note(self, message: str, level: int) -> None:
        """A line for this file only."""
        self.handle(log.makeRecord(log.name, level, __file__, 0, message, (), None))

    def flush(self) -> None:
        if not self.broken:
            super().flush()

    def close(self) -> None:
        """Let the file go; lines that could not be written are dropped, not raised again."""
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            self.stream.close()
        super().close()


def _cannot_log(name: str, exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    with contextlib.suppress(OSError):
        if exc.errno == errno.ENXIO and stat.S_ISFIFO(os.stat(name).st_mode):
            reason = "a FIFO nobody reads"
    return f"cannot write the log file {name}: {reason}"


LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # UTC, like the audit workbook


def _setup_logging(verbosity: int, log_file: str | None = None) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    formatter = redact.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", LOG_TIME_FORMAT)
    formatter.converter = time.gmtime
    handler: logging.Handler = _AboveTheBar(sys.stderr)
    handler.setFormatter(formatter)
    handlers = [handler]
    if log_file:
        to_file = _LogFile.open(log_file, formatter)
        to_file.setLevel(min(level, logging.INFO))
        handlers.append(to_file)
    root = logging.getLogger()
    for old in root.handlers:  # an earlier main() in this process (tests): let its file go
        if isinstance(old, _LogFile):
            old.close()
    root.handlers[:] = handlers
    root.setLevel(min(level, logging.INFO) if log_file else level)
    handler.setLevel(level)
    # urllib3's debug output carries request details we do not need to show; msal's lines
    # can quote a token answer whole (its error for one that is not JSON): onboard reports
    # sign-in failures itself, so msal is not logged at all.
    for noisy in ("urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    logging.getLogger("msal").setLevel(logging.CRITICAL + 1)


if __name__ == "__main__":
    raise SystemExit(main())
