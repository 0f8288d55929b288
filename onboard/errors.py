"""Exceptions that stop a whole run (a single row's problem is an outcome, not an exception).

    OnboardError                 base of everything onboard raises on purpose
    ├── ConfigError              config.yaml or an environment override is wrong
    ├── InputFileError           an input file is missing, unreadable or has no user column
    ├── AuthError                no token could be obtained (wrong secret, certificate, tenant)
    │   ├── PolicyDisabled       the tenant's Temporary Access Pass policy is off
    │   ├── RedirectRefused      Graph or the sign-in service answered with a redirect
    │   │                        (`from_host`, `to_host`): never followed
    │   └── PlainHttpRefused     a sign-in request to a plain-http host other than this
    │                            machine or a link-local address (`host`): never sent
    ├── RunStopped               stopped by a signal before anything was sent
    ├── JournalLocked            another onboard run holds the journal (`holder` says which)
    ├── AuditWriteError          the audit workbook could not be written (passes kept in journal)
    ├── JournalWriteError        the run journal could not be written
    └── GraphError               Graph answered with an error (status, code, request_id)
        ├── ThrottledError       429: retry after `retry_after` seconds
        ├── TransientError       500/502/503/504, timeouts and dropped connections
        └── ProtocolError        an answer onboard will not read (too large): not retried

GraphError and its subclasses are raised by the Graph client for one request; the worker pool
turns them into Failed outcomes; the others reach the CLI, which maps each to an exit code.
No message ever holds a pass value or a secret.
"""

from __future__ import annotations

from pathlib import Path

from .redact import printable

# Long enough for a library's whole first line (requests' "Max retries exceeded ... Failed to
# resolve 'host'" runs to 300-400 characters); the cap only guards against a hostile answer.
FIRST_LINE_LIMIT = 1000
CUT_MARK = " …"


def first_line(exc: BaseException, limit: int = FIRST_LINE_LIMIT) -> str:
    """An exception's first line (or its type's name), for a one-line report of a library's
    error: whole when it fits in `limit` characters, else cut between words."""
    return shorten((str(exc).splitlines() or [type(exc).__name__])[0], limit)


def shorten(line: str, limit: int = FIRST_LINE_LIMIT) -> str:
    """`line` if it fits in `limit` characters; else its longest run of whole words that fits,
    then " …". A single word longer than the limit is not text a person reads: it is cut."""
    if len(line) <= limit:
        return line
    room = limit - len(CUT_MARK)
    head = line[: room + 1]  # one more: tells whether the cut falls between two words
    words = head.rsplit(maxsplit=1)
    kept = words[0] if len(words) == 2 and not head[-1].isspace() else head[:room]
    return kept.rstrip() + CUT_MARK


class OnboardError(Exception):
    """Base of onboard's own errors.

    `kept`: set when the run stopped with passes already issued (by this run, or a run it
    resumed) that wait in the journal: (run id, how many). The CLI then says so, instead of
    "no pass was created". `audit_path`: the audit workbook written before the run stopped.
    """

    kept: tuple[str, int] | None = None
    audit_path: Path | None = None


class ConfigError(OnboardError):
    """The configuration is invalid; nothing was sent."""


class InputFileError(OnboardError):
    """An input file cannot be used at all; nothing was sent."""

    def __init__(self, message: str, *, path: str) -> None:
        # Shown escaped: a file name or sheet name can hold terminal escape sequences.
        super().__init__(printable(f"{path}: {message}"))
        self.path = path


class AuthError(OnboardError):
    """A token could not be obtained; the run cannot go on."""

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class PolicyDisabled(AuthError):
    """The tenant's Temporary Access Pass policy is off: every create would be refused."""


class RedirectRefused(AuthError):
    """Graph or the sign-in service answered with a redirect. Neither ever redirects an API
    call, so following one could hand a secret, a token or a pass to another host."""

    def __init__(self, message: str, *, from_host: str, to_host: str | None) -> None:
        super().__init__(message)
        self.from_host = from_host
        self.to_host = to_host  # None: a 3xx without a Location


class PlainHttpRefused(AuthError):
    """A sign-in request would have gone over plain http to a host that is neither this
    machine nor link-local (where Azure's managed-identity endpoints live)."""

    def __init__(self, message: str, *, host: str) -> None:
        super().__init__(message)
        self.host = host


class RunStopped(OnboardError):
    """The run was asked to stop (a signal) before it sent anything: nothing was done."""


class JournalLocked(OnboardError):
    """Another onboard process holds the journal; nothing was sent."""

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class AuditWriteError(OnboardError):
    """The audit workbook could not be written; the passes are still in the journal."""


class JournalWriteError(OnboardError):
    """The run journal could not be written (a full disk): the run must stop, not go on."""


class GraphError(OnboardError):
    """Graph answered one request with an error."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"code={self.code!r}, request_id={self.request_id!r})"
        )


class ThrottledError(GraphError):
    """429 Too Many Requests."""


class TransientError(GraphError):
    """A server or network failure worth retrying."""


class ProtocolError(GraphError):
    """An answer onboard will not read (larger than the cap for its kind); not retried."""
