"""Delivery by mail: each recipient gets ONE message for a run, listing all of their hires'
passes; paced to Exchange's limits, journaled before and after every send, never sent twice.

    prepare(settings, requests, timezone)  before anything is sent: the templates compile and
                                           render, the sheet has the column `to: column` reads
    check_sender(client, settings)         before the first pass: the sender has a mailbox
    deliver(...)                           after the passes: recipients, messages, sending
    redeliver(config, run_id, ...)         `onboard deliver RUN_ID`: a finished run's passes,
                                           read from its audit workbook

A message's life in the journal (its `messages` table): to send -> sending (committed before
the request goes) -> sent | failed (with a reason) | unknown (the answer was lost: Exchange may
have queued it). A run resumed after a kill finds a message still `sending`: its fate is
unknown, so it is reported and never sent again on its own; `onboard deliver RUN_ID --to
ADDRESS` resends it on purpose. A hire with no recipient (no manager, a manager without a
mailbox...) gets a record of its own, failed with the reason, and no message: the pass stays in
the audit workbook.

The table holds who and which rows, never a pass value: a message is rendered from the passes
when it is sent (from the journal during a run, from the audit workbook after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import redact
from .audit import (
    UTC_ZONE,
    AuditedPass,
    Delivered,
    Note,
    audit_options,
    mark_delivered,
    read_issued,
)
from .config import ADDRESS, Config, DeliverySettings
from .connect import connect
from .errors import ConfigError, GraphError, TransientError, first_line
from .files import private_dir
from .graph import DirectoryPerson, GraphClient
from .journal import WIPED, Journal, RunStatus
from .mail import Letter, MailPass, Templates, address, write_private
from .outcomes import Issued, Origin, PassRequest
from .rate import MAILBOX_CONCURRENCY, RateController
from .retrying import Retries, is_unclear, retries_for, with_retries
from .runner import DEFAULT_GRACE_SECONDS, ask_all, run_each

log = logging.getLogger(__name__)

TIMEZONE_SETTING = "pass.timezone"  # a run's recorded setting: the time zone its passes show
DELIVER_TO = "deliver_to"  # the input column `to: column` reads
INPUT = " (input)"  # the audit's suffix on a sheet column whose header is one of its own
MANAGER_FIELD = "Entra admin center > Users > the user > Properties > Manager"
MESSAGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    run_id TEXT NOT NULL,
    number INTEGER NOT NULL,         -- the message's (or failed row's) number in its run
    recipient TEXT NOT NULL,         -- the address; '' for a hire mailed to nobody
    name TEXT NOT NULL,
    origins TEXT NOT NULL,           -- JSON [[source, row], ...]: the hires it carries
    state TEXT NOT NULL,             -- State
    reason TEXT,                     -- Why, when failed or unknown
    detail TEXT NOT NULL DEFAULT '',
    sent_at TEXT,
    request_id TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (run_id, number)
)
"""


class State(StrEnum):
    """Where a message stands (the journal's `state` column; PREVIEWED is never journaled)."""

    TO_SEND = "to send"
    SENDING = "sending"  # the request went (or was about to): no answer recorded yet
    SENT = "sent"  # Graph answered 202: Exchange queued it
    FAILED = "failed"  # not sent (no recipient, or a definite refusal)
    UNKNOWN = "unknown"  # sent, answer lost: Exchange may or may not have queued it
    PREVIEWED = "previewed"  # --preview: written as an .eml file, nothing sent


class Why(StrEnum):
    """Why a hire's delivery failed or its fate is unknown; the value is the label people see."""

    NO_MANAGER = "no manager"
    NO_SPONSOR = "no sponsor"
    SEVERAL_SPONSORS = "several sponsors"
    NO_MAILBOX = "recipient has no mailbox"
    NO_ADDRESS = "no address in the sheet"
    BAD_ADDRESS = "not an email address"
    LOOKUP_FAILED = "recipient lookup failed"
    UNCONFIRMED = "pass not confirmed"
    NO_VALUE = "pass value not at hand"
    TEMPLATE = "template failed"
    NOT_WRITTEN = "preview not written"  # --preview: its .eml file could not be written
    REFUSED = "refused by Graph"
    GAVE_UP = "gave up after retries"
    LOST_ANSWER = "answer lost"
    INTERRUPTED = "stopped while sending"


@dataclass(frozen=True, slots=True)
class Hire:
    """One pass to deliver: who, the value (None: not at hand), its window, and the address
    the sheet gives for it (`to: column`)."""

    origin: Origin
    user: str
    name: str | None
    value: str | None = field(repr=False)
    starts: datetime | None
    expires: datetime | None
    usable_once: bool | None
    deliver_to: str | None = None
    confirmed: bool = True  # False: a request of unknown fate may have replaced it

    @classmethod
    def of_issued(cls, issued: Issued) -> Hire:
        request = issued.request
        value = issued.temporary_access_pass
        redact.remember(value)  # a resumed run's, read back from the journal, too
        return cls(
            issued.origin, request.user, request.display_name,
            None if value == WIPED else value, issued.starts, issued.expires,
            issued.usable_once, _sheet_address(request), not issued.unconfirmed,
        )  # fmt: skip

    @classmethod
    def of_audited(cls, audited: AuditedPass, columns: Sequence[str]) -> Hire:
        redact.remember(audited.value)
        wanted = {c.casefold() for c in columns}
        cells = audited.cells.items()
        column = next((v for h, v in cells if h.casefold().removesuffix(INPUT) in wanted), None)
        return cls(
            Origin(audited.source, audited.row), audited.user, audited.display_name,
            audited.value, audited.starts, audited.expires, audited.usable_once, column,
        )  # fmt: skip


def _sheet_address(request: PassRequest) -> str | None:
    """The address in the row's input.columns.deliver_to column, as the sheet has it."""
    header = request.header(DELIVER_TO)
    if header is None:
        return None
    return next((v for h, v in request.extra if h == header), None)


@dataclass(frozen=True, slots=True)
class Message:
    """A message of a run, or a hire mailed to nobody (`to` empty, failed with its reason)."""

    number: int
    to: str
    name: str
    origins: tuple[Origin, ...]
    state: State
    why: Why | None = None
    detail: str = ""
    sent_at: datetime | None = None
    request_id: str | None = None
    path: Path | None = None  # --preview: the .eml file

    @property
    def key(self) -> str:
        return self.to.casefold()

    def shown(self) -> str:
        """The Issued sheet's Delivery cell for its hires."""
        if self.state is State.TO_SEND:
            return "not sent: the run stopped before sending it (onboard deliver sends it)"
        if self.state is State.PREVIEWED:
            return f"previewed, not sent: {self.path}"
        if self.state in (State.SENT, State.SENDING):
            return self.state.value
        return f"{self.state.value}: {self.why.value if self.why else ''}. {self.detail}".strip()


class Outbox:
    """A run's messages in the journal (the `messages` table): SQL stays in here. With
    `write` False (a preview) the journal is only read, the table not even created."""

    def __init__(self, journal: Journal, run_id: str, *, write: bool = True) -> None:
        self.journal = journal
        self.run_id = run_id
        self.write = write
        if write:
            with journal.transaction() as db:
                db.execute(MESSAGES_SCHEMA)

    def messages(self) -> list[Message]:
        """The run's messages and failed hires, in the order they were recorded."""
        db = self.journal.db
        kept = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='messages'"
        if not self.write and db.execute(kept).fetchone() is None:
            return []  # no message was ever kept in this journal
        rows = db.execute(
            "SELECT number, recipient, name, origins, state, reason, detail, sent_at, "
            "request_id FROM messages WHERE run_id=? ORDER BY number",
            (self.run_id,),
        ).fetchall()
        return [_message(*row) for row in rows]

    def add(self, messages: Iterable[Message]) -> None:
        """Record new messages, all in one transaction."""
        if not self.write:
            return
        now = datetime.now(UTC).isoformat()
        with self.journal.transaction() as db:
            db.executemany(
                "INSERT INTO messages (run_id, number, recipient, name, origins, state, reason, "
                "detail, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.run_id, m.number, m.to, m.name, _origins(m), m.state.value,
                  m.why.value if m.why else None, m.detail, now) for m in messages],
            )  # fmt: skip

    def mark(self, message: Message) -> None:
        """Commit a message's new state (before its request goes, and once it is answered)."""
        if not self.write:
            return
        sent_at = message.sent_at.isoformat() if message.sent_at else None
        with self.journal.transaction() as db:
            db.execute(
                "UPDATE messages SET state=?, reason=?, detail=?, sent_at=?, request_id=?, "
                "updated=? WHERE run_id=? AND number=?",
                (message.state.value, message.why.value if message.why else None,
                 message.detail, sent_at, message.request_id, datetime.now(UTC).isoformat(),
                 self.run_id, message.number),
            )  # fmt: skip


def _origins(message: Message) -> str:
    return json.dumps([[o.source, o.row] for o in message.origins])


def _message(
    number: int,
    recipient: str,
    name: str,
    origins: str,
    state: str,
    reason: str | None,
    detail: str,
    sent_at: str | None,
    request_id: str | None,
) -> Message:
    """A message as the journal's row gives it."""
    return Message(
        number, recipient, name, tuple(Origin(s, r) for s, r in json.loads(origins)),
        State(state), Why(reason) if reason else None, detail,
        datetime.fromisoformat(sent_at) if sent_at else None, request_id,
    )  # fmt: skip


@dataclass(slots=True)
class DeliveryReport:
    """What delivery did for a run: every message (and hire mailed to nobody) in its latest
    state, and the hires it was asked to deliver."""

    run_id: str
    hires: list[Origin]
    messages: list[Message] = field(default_factory=list)
    users: dict[Origin, str] = field(default_factory=dict)  # each hire's UPN, for people
    sender: str | None = None
    preview: Path | None = None
    # Why delivery did not start (the run stopped first): its hires are not sent.
    not_started: str | None = None
    audit_path: Path | None = None  # `onboard deliver`: the workbook it updated
    sent_now: int = 0  # messages this delivery sent (a resumed run's earlier ones not counted)

    def latest(self) -> dict[Origin, Message]:
        """Each hire's latest record (a later message replaces an earlier one)."""
        found: dict[Origin, Message] = {}
        for message in sorted(self.messages, key=lambda m: m.number):
            for origin in message.origins:
                found[origin] = message
        return found

    def current(self) -> list[Message]:
        """The records that are some hire's latest."""
        numbers = {m.number for m in self.latest().values()}
        return [m for m in self.messages if m.number in numbers]

    def count(self, state: State, *, addressed: bool = True) -> int:
        return sum(1 for m in self.current() if m.state is state and bool(m.to) == addressed)

    @property
    def nobody(self) -> list[Message]:
        """Hires mailed to nobody (one record each)."""
        return [m for m in self.current() if not m.to]

    @property
    def unsent(self) -> list[Origin]:
        """Hires with no message yet (delivery did not reach them: the run stopped)."""
        latest = self.latest()
        return [o for o in self.hires if o not in latest]

    @property
    def problems(self) -> bool:
        """Anything a person must look at: a failure, an unknown fate, a message not sent."""
        return any(
            m.state in (State.FAILED, State.UNKNOWN, State.TO_SEND, State.SENDING)
            for m in self.current()
        ) or bool(self.unsent)

    def audited(self) -> dict[Origin, Delivered]:
        """The Issued sheet's delivery columns, for every hire delivery was asked about."""
        latest = self.latest()
        shown: dict[Origin, Delivered] = {}
        for origin in self.hires:
            message = latest.get(origin)
            if message is None:
                why = self.not_started or "the run stopped before delivering it"
                shown[origin] = Delivered("", None, f"not sent: {why}")
            else:
                shown[origin] = Delivered(message.to, message.sent_at, message.shown())
        return shown

    def notes(self, mail: RateController | None = None) -> list[Note]:
        """The Summary's delivery lines (with how the mail budget went, when given)."""
        paced: list[Note] = []
        if mail is not None and not self.preview:
            paced = [
                ("sendMail requests", mail.requests),
                ("429 answers to sendMail", mail.throttles),
                ("Time paused by Retry-After (mail)", round(mail.paused_seconds, 1), "s"),
            ]
        return [
            ("Delivery", "preview only: nothing sent" if self.preview else "by mail",
             str(self.preview or self.sender or "")),
            ("Messages sent", self.count(State.SENT)),
            ("Messages failed", self.count(State.FAILED), "not sent: see the Delivery column"),
            ("Messages of unknown fate", self.count(State.UNKNOWN) + self.count(State.SENDING),
             f"the answer was lost: ask the recipient; onboard deliver {self.run_id} --to "
             "ADDRESS sends it again"),
            ("Messages not sent", self.count(State.TO_SEND) + len(self.unsent),
             f"the run stopped: onboard deliver {self.run_id} sends them"),
            ("Hires mailed to nobody", len(self.nobody), "no recipient: see the Delivery column"),
            *paced,
        ]  # fmt: skip


# --- before anything is sent ----------------------------------------------------------------
def prepare(
    settings: DeliverySettings,
    requests: Sequence[PassRequest],
    *,
    timezone: str,
    columns: Sequence[str],
) -> Templates:
    """The templates, compiled and tried once; ConfigError if they fail, or if `to: column`
    and no input file has the column (nothing is sent then)."""
    for key, given in [("sender", settings.sender), *(("cc", a) for a in settings.cc)]:
        if given is not None and not _mailable(given):
            raise ConfigError(
                f"delivery.{key} {given!r} is not an email address a message can carry "
                "(name@domain, the domain without empty parts): fix it"
            )
    templates = Templates(settings)
    templates.check(timezone=timezone)
    if settings.to == "column" and requests and not any(r.header(DELIVER_TO) for r in requests):
        raise ConfigError(
            "delivery.to is column, but no input file has a column named "
            f"{', '.join(repr(c) for c in columns)} (input.columns.deliver_to): add the "
            "recipients' addresses in such a column, or name yours there"
        )
    return templates


async def check_sender(client: GraphClient, settings: DeliverySettings, retries: Retries) -> str:
    """The sender's mailbox address: ConfigError unless delivery.sender is a user with a
    mailbox (checked before the first pass is created)."""
    sender = settings.sender
    if sender is None:
        raise ConfigError("delivery.sender is not set: name the mailbox that sends the passes")
    try:
        person = await with_retries(lambda _: client.person(sender), retries)
    except GraphError as exc:
        raise ConfigError(_sender_problem(sender, exc)) from None
    if person.mail is None:
        raise ConfigError(
            f"delivery.sender {sender} has no mailbox (the directory lists no mail address for "
            "it), so it cannot send: name a user or shared mailbox in Exchange Online; nothing "
            "was issued"
        )
    return person.mail


def _sender_problem(sender: str, exc: GraphError) -> str:
    code = f" {exc.code}" if exc.code else ""
    if exc.status == 404:
        return (
            f"delivery.sender {sender}: no such user in the tenant (Graph answered 404{code}): "
            "name a user or shared mailbox in Exchange Online; nothing was issued"
        )
    if exc.status in (401, 403):
        return (
            f"delivery.sender {sender} could not be read (HTTP {exc.status}{code}): grant the "
            "app User.Read.All with admin consent; nothing was issued"
        )
    return (
        f"delivery.sender {sender} could not be checked (HTTP {exc.status or '-'}{code}: "
        f"{exc.message}); nothing was issued: run again later"
    )


# --- delivering -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sending:
    """What sending needs besides the messages: where from, how, and how to show the times."""

    settings: DeliverySettings
    templates: Templates
    timezone: str
    simulated: bool
    retries: Retries
    read_concurrency: int = MAILBOX_CONCURRENCY
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    preview: Path | None = None
    sender: str | None = None  # the sender's mailbox address (check_sender)


async def deliver(
    client: GraphClient,
    journal: Journal,
    run_id: str,
    hires: Sequence[Hire],
    how: Sending,
    *,
    stop: asyncio.Event | None = None,
    resend_to: Collection[str] = (),
) -> DeliveryReport:
    """Deliver `hires`: each recipient ONE message holding all of their hires' passes.

    A hire whose message of this run was sent, or is of unknown fate, is left alone unless
    `resend_to` names its recipient: then only the messages to those addresses are sent
    (again, on purpose). Messages planned but not sent (a killed run) go as planned; hires
    whose delivery failed have their recipient looked up again. With `how.preview` nothing is
    sent and the journal is not written: every message goes to an .eml file there."""
    outbox = Outbox(journal, run_id, write=how.preview is None)
    report = DeliveryReport(
        run_id, [h.origin for h in hires], outbox.messages(), {h.origin: h.user for h in hires},
        how.sender, how.preview,
    )  # fmt: skip
    for number, message in enumerate(report.messages):
        if message.state is State.SENDING and outbox.write:
            # Killed while its request was out: it may have reached Exchange. Never resent
            # on its own (the recipient would get the passes twice).
            report.messages[number] = _unknown(message, Why.INTERRUPTED, run_id)
            outbox.mark(report.messages[number])
    wanted = {a.casefold() for a in resend_to}
    latest = report.latest()
    again: dict[Origin, Recipient | NoRecipient] = {}  # sent again, to whom they went
    fresh: list[Hire] = []  # recipients to look up
    for hire in hires:
        last = latest.get(hire.origin)
        if wanted and last is not None and last.to and last.key in wanted:
            again[hire.origin] = Recipient(last.to, last.name)
        elif last is None or (last.state is State.FAILED and not (wanted and last.to)):
            fresh.append(hire)
    found = {**await _recipients(client, fresh, how, stop, run_id), **again}
    if wanted:  # only the messages asked for: no other hire is touched
        found = {o: r for o, r in found.items() if isinstance(r, Recipient) and r.key in wanted}
    new = _plan(hires, found, start=max((m.number for m in report.messages), default=0) + 1)
    if wanted and not any(m.state is State.TO_SEND for m in new):
        recipients = sorted({m.to for m in report.messages if m.to}) or ["none yet"]
        raise ConfigError(
            f"no pass of run {run_id} goes to {', '.join(sorted(resend_to))}: its recipients "
            f"are {', '.join(recipients)}"
        )
    outbox.add(new)
    planned = [] if wanted else [m for m in report.current() if m.state is State.TO_SEND]
    report.messages.extend(new)
    to_send = planned + [m for m in new if m.state is State.TO_SEND]
    index = {m.number: i for i, m in enumerate(report.messages)}
    by_origin = {h.origin: h for h in hires}

    async def one(message: Message) -> None:
        carried = [by_origin.get(o) for o in message.origins]
        if any(hire is None for hire in carried):  # planned for a pass no longer at hand
            done = replace(message, state=State.FAILED, why=Why.NO_VALUE,
                           detail="Not every pass it was to carry is at hand: hand them out "
                           "from the run's audit workbook.")  # fmt: skip
            outbox.mark(done)
        else:
            done = await _send_one(client, outbox, message, [h for h in carried if h], how, run_id)
        report.messages[index[message.number]] = done
        report.sent_now += done.state is State.SENT

    await run_each(
        to_send, one, concurrency=MAILBOX_CONCURRENCY, stop=stop, grace_seconds=how.grace_seconds
    )
    return report


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who gets a hire's pass: a mailbox address, and a name to greet (may be empty)."""

    address: str
    name: str = ""

    @property
    def key(self) -> str:
        return self.address.casefold()


@dataclass(frozen=True, slots=True)
class NoRecipient:
    """Why a hire's pass is mailed to nobody, and what to do (for people)."""

    why: Why
    detail: str


async def _recipients(
    client: GraphClient,
    hires: Sequence[Hire],
    how: Sending,
    stop: asyncio.Event | None,
    run_id: str,
) -> dict[Origin, Recipient | NoRecipient]:
    """Each hire's recipient as delivery.to says (the reads spend the read budget); a hire
    whose lookup was stopped has no entry."""
    to, again = how.settings.to, f"onboard deliver {run_id}"
    if to == "column":
        return {h.origin: _from_sheet(h, again) for h in hires}
    look: Callable[[str], Awaitable[object]] = (
        client.manager if to == "manager" else client.sponsors
    )
    answers = await ask_all(
        [h.user for h in hires], look, concurrency=how.read_concurrency, retries=how.retries,
        stop=stop,
    )  # fmt: skip
    found: dict[Origin, Recipient | NoRecipient] = {}
    for hire in hires:
        if hire.user not in answers:
            continue  # stopped before it was asked: not planned, reported as not sent
        answer = answers[hire.user]
        if isinstance(answer, GraphError):
            found[hire.origin] = _lookup_failed(hire, answer, to, again)
        elif isinstance(answer, list):
            found[hire.origin] = _sponsor(hire, answer, again)
        else:
            person = answer if isinstance(answer, DirectoryPerson) else None
            found[hire.origin] = _manager(hire, person, again)
    return found


def _from_sheet(hire: Hire, again: str) -> Recipient | NoRecipient:
    given = (hire.deliver_to or "").strip()
    if not given:
        return NoRecipient(
            Why.NO_ADDRESS,
            f"The row gives no address in its input.columns.deliver_to column for {hire.user}: "
            f"fill it in, then '{again}' mails this pass.",
        )
    if not (given.isprintable() and ADDRESS.fullmatch(given) and _mailable(given)):
        return NoRecipient(
            Why.BAD_ADDRESS,
            f"The row's address for {hire.user} is not an email address: fix it in the sheet, "
            f"then '{again}' mails this pass.",
        )
    return Recipient(given)


def _manager(hire: Hire, person: DirectoryPerson | None, again: str) -> Recipient | NoRecipient:
    if person is None:
        return NoRecipient(
            Why.NO_MANAGER,
            f"No manager is set for {hire.user} in the directory ({MANAGER_FIELD}): set one, "
            f"then '{again}' mails this pass; or hand it out from this workbook.",
        )
    if person.mail is None:
        who = person.name or person.upn or person.id
        return NoRecipient(
            Why.NO_MAILBOX,
            f"The manager of {hire.user}, {who}, has no mailbox: hand this pass out from this "
            f"workbook, or give the manager a mailbox and run '{again}'.",
        )
    if not _mailable(person.mail):
        return _bad_directory_mail(hire, "manager", person, again)
    return Recipient(person.mail, person.name)


def _mailable(given: str) -> bool:
    """Whether a message can be addressed to `given` (the mail parser takes it whole)."""
    try:
        address(given)
    except ValueError:
        return False
    return True


def _bad_directory_mail(hire: Hire, role: str, person: DirectoryPerson, again: str) -> NoRecipient:
    who = person.name or person.upn or person.id
    return NoRecipient(
        Why.BAD_ADDRESS,
        f"The {role} of {hire.user}, {who}, has a mail address in the directory that is not "
        f"an email address ({person.mail!r}): correct it, then '{again}' mails this pass; or "
        "hand it out from this workbook.",
    )


def _sponsor(hire: Hire, people: Sequence[object], again: str) -> Recipient | NoRecipient:
    listed = [p for p in people if isinstance(p, DirectoryPerson)]
    mailed = [p for p in listed if p.mail is not None]
    if not listed:
        return NoRecipient(
            Why.NO_SPONSOR,
            f"{hire.user} has no sponsor in the directory: add one, then '{again}' mails this "
            "pass; or hand it out from this workbook.",
        )
    if not mailed:
        return NoRecipient(
            Why.NO_MAILBOX,
            f"No sponsor of {hire.user} has a mailbox: hand this pass out from this workbook.",
        )
    if len(mailed) > 1:
        return NoRecipient(
            Why.SEVERAL_SPONSORS,
            f"{hire.user} has {len(mailed)} sponsors with a mailbox, and a pass goes to one "
            "person only: name who gets it with delivery.to column.",
        )
    if not _mailable(str(mailed[0].mail)):
        return _bad_directory_mail(hire, "sponsor", mailed[0], again)
    return Recipient(str(mailed[0].mail), mailed[0].name)


def _lookup_failed(hire: Hire, exc: GraphError, to: str, again: str) -> NoRecipient:
    code = f" {exc.code}" if exc.code else ""
    grant = " (the app needs User.Read.All)" if exc.status in (401, 403) else ""
    return NoRecipient(
        Why.LOOKUP_FAILED,
        f"Graph would not give the {to} of {hire.user} (HTTP {exc.status or '-'}{code})"
        f"{grant}: run '{again}' later to mail this pass.",
    )


def _plan(
    hires: Sequence[Hire], found: Mapping[Origin, Recipient | NoRecipient], *, start: int
) -> list[Message]:
    """ONE message per recipient, listing all of their hires (in sheet order), and a record
    of its own for each hire mailed to nobody; numbered on from `start`."""
    groups: dict[str, tuple[Recipient, list[Origin]]] = {}
    failed: list[Message] = []
    for hire in hires:
        got = found.get(hire.origin)
        if got is None:
            continue
        if isinstance(got, NoRecipient):
            failed.append(Message(0, "", "", (hire.origin,), State.FAILED, got.why, got.detail))
        elif not hire.confirmed or hire.value is None:
            why = Why.UNCONFIRMED if not hire.confirmed else Why.NO_VALUE
            failed.append(Message(0, got.address, got.name, (hire.origin,), State.FAILED, why,
                                  _not_at_hand(hire, why)))  # fmt: skip
        else:
            groups.setdefault(got.key, (got, []))[1].append(hire.origin)
    messages = [
        Message(0, r.address, r.name, tuple(sorted(origins)), State.TO_SEND)
        for r, origins in groups.values()
    ]
    return [replace(m, number=start + n) for n, m in enumerate(messages + failed)]


def _not_at_hand(hire: Hire, why: Why) -> str:
    if why is Why.UNCONFIRMED:
        return (
            f"A request of unknown fate may have replaced the pass of {hire.user}: it is not "
            "mailed; the next run of the sheet checks it with Graph."
        )
    return f"The pass of {hire.user} is no longer at hand: hand it out from the run's workbook."


async def _send_one(
    client: GraphClient,
    outbox: Outbox,
    message: Message,
    hires: Sequence[Hire],
    how: Sending,
    run_id: str,
) -> Message:
    """Render and send one message (or write its preview), journaled before and after."""
    try:
        letter = _letter(message, hires, how, run_id)
    except (ConfigError, ValueError) as exc:
        failed = replace(message, state=State.FAILED, why=Why.TEMPLATE, detail=str(exc))
        outbox.mark(failed)
        log.warning("message %d to %s: %s", message.number, message.to, failed.detail)
        return failed
    if how.preview is not None:
        name = f"{message.number:04d}-{re.sub(r'[^A-Za-z0-9@._-]', '_', message.to)[:80]}.eml"
        data = letter.eml(how.sender or how.settings.sender)
        try:
            path = write_private(how.preview / name, data)
        except OSError as exc:  # a symlink planted there (never followed), a full disk...
            detail = f"Could not write {how.preview / name}: {exc.strerror or exc}."
            log.warning("message %d to %s: %s", message.number, message.to, detail)
            return replace(message, state=State.FAILED, why=Why.NOT_WRITTEN, detail=detail)
        return replace(message, state=State.PREVIEWED, path=path)
    outbox.mark(replace(message, state=State.SENDING))  # on disk before the request goes
    done = await _post(client, message, letter, how, run_id)
    outbox.mark(done)
    why = f", {done.why.value}" if done.why else ""
    level = logging.INFO if done.state is State.SENT else logging.WARNING
    log.log(level, "message %d to %s (%d pass(es)): %s%s", message.number, message.to,
            len(hires), done.state.value, why)  # fmt: skip
    return done


def _letter(message: Message, hires: Sequence[Hire], how: Sending, run_id: str) -> Letter:
    zone = _zone(how.timezone)
    passes = [
        MailPass(h.name or h.user, h.user, h.value or "", _shown(h.starts, zone),
                 _shown(h.expires, zone), h.usable_once)
        for h in hires
    ]  # fmt: skip
    cc = [address(a) for a in how.settings.cc]
    return how.templates.render(
        address(message.to, message.name), cc, passes,
        run_id=run_id, timezone=zone.key, simulated=how.simulated,
    )  # fmt: skip


class _Unclear(Exception):
    """A sendMail whose answer was lost: never retried (Exchange may have queued it)."""

    def __init__(self, cause: GraphError) -> None:
        super().__init__(cause.message)
        self.cause = cause


async def _post(
    client: GraphClient, message: Message, letter: Letter, how: Sending, run_id: str
) -> Message:
    """POST sendMail, retried only where Graph surely did not take it (429, 503); a lost
    answer (no answer, 500, 502, 504) is an unknown fate, never retried."""
    sender = how.settings.sender
    assert sender is not None

    async def attempt(_: int) -> str | None:
        try:
            return await client.send_mail(
                sender, letter.for_graph(), save_to_sent_items=how.settings.save_to_sent_items
            )
        except TransientError as exc:
            if is_unclear(exc):
                raise _Unclear(exc) from None
            raise

    try:
        request_id = await with_retries(attempt, how.retries)
    except _Unclear as lost:
        what = f"HTTP {lost.cause.status}" if lost.cause.status else lost.cause.message
        return _unknown(message, Why.LOST_ANSWER, run_id, what)
    except GraphError as exc:
        retried = isinstance(exc, TransientError) or exc.status == TOO_MANY_REQUESTS
        why = Why.GAVE_UP if retried else Why.REFUSED
        return replace(
            message, state=State.FAILED, why=why, detail=_refused(exc, message.to, run_id)
        )
    return replace(message, state=State.SENT, sent_at=datetime.now(UTC), request_id=request_id)


TOO_MANY_REQUESTS = 429


def _unknown(message: Message, why: Why, run_id: str, what: str = "") -> Message:
    lost = f" ({what})" if what else ""
    return replace(
        message,
        state=State.UNKNOWN,
        why=why,
        detail=f"The message to {message.to} was sent but its answer was lost{lost}: Exchange "
        "may or may not have queued it, so it is not sent again on its own. Ask the recipient; "
        f"'onboard deliver {run_id} --to {message.to}' sends it again.",
    )


def _refused(exc: GraphError, to: str, run_id: str) -> str:
    code = f", {exc.code}" if exc.code else ""
    said = f"Graph refused the message to {to}: {first_line(exc)} (HTTP {exc.status}{code})"
    if exc.status in (401, 403):
        return (
            f"{said}. The app needs Mail.Send, and an Exchange scope (RBAC for Applications, "
            "or an application access policy) that includes delivery.sender."
        )
    if isinstance(exc, TransientError) or exc.status == TOO_MANY_REQUESTS:
        return f"{said}, after every retry: run 'onboard deliver {run_id}' later to send it."
    return f"{said}: fix what Graph names, then run 'onboard deliver {run_id}'."


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(UTC_ZONE)


def _shown(moment: datetime | None, zone: ZoneInfo) -> str:
    return "-" if moment is None else f"{moment.astimezone(zone):%Y-%m-%d %H:%M}"


def hires_of(issued: Iterable[Issued]) -> list[Hire]:
    """A run's passes to deliver, in sheet order."""
    return [Hire.of_issued(i) for i in sorted(issued, key=lambda i: i.origin)]


def sending_for(
    config: Config,
    templates: Templates,
    *,
    simulated: bool,
    preview: Path | None = None,
    sender: str | None = None,
) -> Sending:
    """How a run delivers, from its settings (delivery.*, the pass time zone, run.*)."""
    return Sending(
        config.delivery, templates, config.pass_.timezone, simulated, retries_for(config.run),
        read_concurrency=config.run.concurrency, grace_seconds=config.run.stop_grace_seconds,
        preview=preview, sender=sender,
    )  # fmt: skip


# --- onboard deliver RUN_ID -----------------------------------------------------------------
async def redeliver(
    config: Config,
    run_id: str,
    *,
    env: Mapping[str, str],
    to: Collection[str] = (),
    preview: Path | None = None,
    stop: asyncio.Event | None = None,
) -> DeliveryReport:
    """`onboard deliver`: deliver (or, for `to`, deliver again) a finished run's passes, read
    from its audit workbook (the journal no longer holds them), and record what became of the
    messages in that workbook and the journal. ConfigError for a run that cannot be."""
    settings = config.delivery
    if preview is not None:
        check_preview(preview)
    if preview is None and settings.sender is None:
        raise ConfigError(
            "delivery.sender is not set: name the mailbox that sends the passes (or give "
            "--preview DIR to write the messages without sending)"
        )
    options = audit_options(config.output, env)
    journal = Journal(config.state.path, options.password).open()
    try:
        run = journal.run(run_id)
        if run is None:
            raise ConfigError(f"no run {run_id} in the journal {journal.path}; 'onboard runs' "
                              "lists them")  # fmt: skip
        if run.status is RunStatus.RUNNING:
            raise ConfigError(
                f"run {run_id} has not finished: run the same command again to resume it (it "
                f"delivers its passes), or 'onboard report {run_id}' to write its audit first"
            )
        if not run.audit_path:
            raise ConfigError(f"run {run_id} has no audit workbook: nothing to deliver")
        path = Path(run.audit_path)
        try:
            passes = read_issued(path, options.password)
        except Exception as exc:  # a missing, foreign or wrongly decrypted workbook
            raise ConfigError(
                f"cannot read the passes of run {run_id} from its audit workbook {path}: "
                f"{first_line(exc)} (set output.password as it was for that run)"
            ) from None
        hires = [Hire.of_audited(p, config.input.columns[DELIVER_TO]) for p in passes]
        if not hires:
            raise ConfigError(f"run {run_id} issued no pass: nothing to deliver")
        zone = str(dict(run.meta.get("settings") or []).get(TIMEZONE_SETTING) or UTC_ZONE)
        templates = prepare(settings, [], timezone=zone, columns=())
        async with contextlib.AsyncExitStack() as stack:
            connection = await connect(config, env, stack)
            if connection.tenant.key != run.tenant:
                raise ConfigError(
                    f"run {run_id} issued its passes in the tenant {run.tenant_shown}, and this "
                    f"config signs in to {connection.tenant.describe()}: their managers and "
                    "sponsors are not the same people; use that run's config"
                )
            sender = None
            if preview is None:
                sender = await check_sender(connection.client, settings, retries_for(config.run))
            how = replace(
                sending_for(config, templates, simulated=run.simulated, preview=preview,
                            sender=sender),
                timezone=zone,
            )  # fmt: skip
            report = await deliver(connection.client, journal, run_id, hires, how, stop=stop,
                                   resend_to=to)  # fmt: skip
        if preview is None:
            keyed = {(o.source, o.row): d for o, d in report.audited().items()}
            notes = [(str(n[0]), n[1]) for n in report.notes()]
            try:
                report.audit_path = mark_delivered(path, keyed, notes, options.password)
            except Exception as exc:  # the messages are sent: say where the record is
                log.warning(
                    "could not record the deliveries in %s (%s): the journal %s keeps them",
                    path, first_line(exc), journal.path,
                )  # fmt: skip
        return report
    finally:
        journal.close()


def templates_for(
    config: Config, wanted: Sequence[PassRequest], preview: Path | None
) -> Templates | None:
    """Delivery's templates, tried on the rows before anything is sent (None: no delivery),
    and the --preview folder made and tried."""
    if config.delivery.method != "mail" and preview is None:
        return None
    if preview is not None:
        check_preview(preview)
    return prepare(config.delivery, wanted, timezone=config.pass_.timezone,
                   columns=config.input.columns["deliver_to"])  # fmt: skip


def check_preview(folder: Path) -> None:
    """Make the --preview folder (owner-only) and prove a file can be written in it, before
    anything is sent: ConfigError otherwise, naming it."""
    try:
        private_dir(folder)  # a file of that name is left as it is: the next line says so
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the messages into --preview {folder}: {exc.strerror or exc}; name "
            "a folder (it is made owner-only if missing)"
        ) from None
