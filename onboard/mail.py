"""The delivery message: a subject, an HTML body and a plain-text body rendered from Jinja2
templates, as Graph's sendMail takes it and as an .eml file (a preview, the simulator's mail
folder).

The HTML is rendered with autoescaping on, so a display name from the sheet is text and never
markup; templates run in Jinja2's sandbox (an operator's template file reaches no Python
internals). A subject is one line: whatever a template makes of it, its whitespace (line
breaks included) is folded to single spaces, so no header can be added through it. A message
holds pass values: its repr never shows them, and nothing here logs.
"""

from __future__ import annotations

import email.policy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .config import DeliverySettings
from .errors import ConfigError, first_line
from .files import NotAFile, private_dir, read_small

HTML_TEMPLATE = "mail.html.j2"
TEXT_TEMPLATE = "mail.txt.j2"
SIMULATED_PREFIX = "SIMULATED: "
# Where a hire signs in with the pass, and registers their methods (Microsoft's short links).
SIGN_IN_PAGE = "https://myaccount.microsoft.com"
SECURITY_INFO_PAGE = "https://aka.ms/mysecurityinfo"
TEMPLATE_LIMIT = 1024 * 1024  # a body template larger than this is not one
MESSAGE_ID_DOMAIN = "onboard.invalid"  # a preview's Message-ID: never a real host's


@dataclass(frozen=True, slots=True)
class MailPass:
    """One hire in a message, as a template sees it (`hires`): times already shown in the pass
    time zone. The value is a credential: kept out of repr."""

    name: str  # the display name, or the UPN when the sheet gives none
    upn: str
    value: str = field(repr=False)
    starts: str
    expires: str
    one_time: bool | None  # None: not known (an audit workbook that does not say)


@dataclass(frozen=True, slots=True)
class Letter:
    """A rendered message: its recipients, subject and bodies (repr without the bodies)."""

    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str
    html: str = field(repr=False)
    text: str = field(repr=False)

    def for_graph(self) -> dict[str, Any]:
        """The `message` of a sendMail request: the HTML body (Graph takes one body; Exchange
        makes the plain-text view of it for clients that want one)."""

        def recipients(addresses: Sequence[Address]) -> list[dict[str, Any]]:
            return [
                {"emailAddress": {"address": a.addr_spec, "name": a.display_name}}
                if a.display_name
                else {"emailAddress": {"address": a.addr_spec}}
                for a in addresses
            ]

        return {
            "subject": self.subject,
            "body": {"contentType": "HTML", "content": self.html},
            "toRecipients": recipients(self.to),
            "ccRecipients": recipients(self.cc),
        }

    def eml(self, sender: str | None, *, now: datetime | None = None) -> bytes:
        """The message as an RFC 5322 file: plain text and HTML as alternatives."""
        return eml(sender, self.to, self.cc, self.subject, html=self.html, text=self.text, now=now)


def eml(
    sender: str | None,
    to: Sequence[Address],
    cc: Sequence[Address],
    subject: str,
    *,
    html: str | None,
    text: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """An .eml file's bytes: text and HTML as alternatives, or either alone (the simulator
    writes what sendMail gave it: one body)."""
    message = EmailMessage(policy=email.policy.SMTP)
    if sender:
        message["From"] = Address(addr_spec=sender)
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = one_line(subject)
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain=MESSAGE_ID_DOMAIN)
    if text is not None:
        message.set_content(text)
    if html is not None and text is not None:
        message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    return message.as_bytes()


def address(addr_spec: str, name: str = "") -> Address:
    """An address for a header; ValueError if it is not one (a bad address in the sheet)."""
    try:
        return Address(display_name=one_line(name), addr_spec=addr_spec.strip())
    except (ValueError, IndexError) as exc:  # the email package's parser raises both
        raise ValueError(f"not an email address: {first_line(exc)}") from None


def one_line(text: str) -> str:
    """Text for a header: every run of whitespace (a line break too) one space."""
    return " ".join(text.split())


def write_private(path: Path, data: bytes) -> Path:
    """Write `data` at `path`, readable by its owner only (0600), in an owner-only folder
    made if missing; an existing file is replaced, never followed if it is a symlink."""
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its own mode otherwise
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
    finally:
        if fd != -1:
            os.close(fd)
    return path


class Templates:
    """The subject, HTML and text templates of delivery.*, compiled. A template that does not
    compile, or an unreadable template file, is a ConfigError naming the key."""

    def __init__(self, settings: DeliverySettings) -> None:
        html_env = _environment(autoescape=True)
        text_env = _environment(autoescape=False)
        try:
            self.subject = text_env.from_string(settings.subject)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"delivery.subject is not a template: {_said(exc)}") from None
        self.text = text_env.get_template(TEXT_TEMPLATE)
        if settings.template is None:
            self.html = html_env.get_template(HTML_TEMPLATE)
            self.source = f"the built-in {HTML_TEMPLATE}"
        else:
            self.source = f"delivery.template {settings.template}"
            try:
                body = read_small(settings.template, TEMPLATE_LIMIT).decode("utf-8")
            except (OSError, NotAFile, UnicodeDecodeError) as exc:
                what = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise ConfigError(f"cannot read {self.source}: {what}") from None
            try:
                self.html = html_env.from_string(body)
            except jinja2.TemplateError as exc:
                raise ConfigError(f"{self.source} is not a template: {_said(exc)}") from None

    def render(
        self,
        to: Address,
        cc: Sequence[Address],
        hires: Sequence[MailPass],
        *,
        run_id: str,
        timezone: str,
        simulated: bool,
    ) -> Letter:
        """One recipient's message. Raises ConfigError when a template fails on these values."""
        context = {
            "recipient": {"name": to.display_name, "address": to.addr_spec},
            "hires": list(hires),
            "count": len(hires),
            "run_id": run_id,
            "timezone": timezone,
            "simulated": simulated,
            "sign_in_page": SIGN_IN_PAGE,
            "security_info_page": SECURITY_INFO_PAGE,
        }
        try:
            subject = one_line(self.subject.render(context))
            html = self.html.render(context)
            text = self.text.render(context)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{self.source} or delivery.subject failed: {_said(exc)}") from None
        if simulated:
            subject = SIMULATED_PREFIX + subject.removeprefix(SIMULATED_PREFIX)
        return Letter((to,), tuple(cc), subject, html, text)

    def check(self, *, timezone: str) -> None:
        """Render once with made-up values, so a template naming what does not exist stops the
        run before any pass is created (ConfigError)."""
        now = datetime.now(UTC)
        sample = MailPass(
            "Sample Hire", "sample.hire@example.com", "sample-value", f"{now:%Y-%m-%d %H:%M}",
            f"{now + timedelta(hours=8):%Y-%m-%d %H:%M}", True,
        )  # fmt: skip
        self.render(
            address("manager@example.com", "Sample Manager"), (), [sample],
            run_id="sample", timezone=timezone, simulated=False,
        )  # fmt: skip


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.PackageLoader("onboard", "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _said(exc: jinja2.TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    return f"{first_line(exc)}" + (f" (line {line})" if line else "")
