"""Text safe to show: secrets hidden from tracebacks, and control characters escaped.

A last guard for text onboard does not write itself: exception tracebacks.

onboard's own messages never hold a pass value or a secret (the tests check every one). A
traceback can quote a library's message, though, and a library may echo what it was given; so
every pass value, access token and secret is remembered here as it appears, and the log's
traceback text has each one replaced before it is written anywhere.
"""

from __future__ import annotations

import logging
import re
from types import TracebackType

HIDDEN = "<hidden>"
_known: set[str] = set()

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def remember(value: str | None) -> None:
    """Hide `value` from every traceback from now on."""
    if value and len(value) >= 4:
        _known.add(value)


def scrub(text: str) -> str:
    """`text` with every remembered value replaced by <hidden>."""
    for value in sorted((v for v in _known if v in text), key=len, reverse=True):
        text = text.replace(value, HIDDEN)
    return text


# Credentials a library may echo before onboard could remember them (a token answer that was
# not valid JSON, say): anything shaped like a JWT, and the value after a credential's name.
_TOKEN_SHAPED = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*")
_NAMED_SECRET = re.compile(
    r"""(?i)((?:access_token|refresh_token|id_token|client_secret|client_assertion|"""
    r"""temporaryAccessPass)["']?\s*[:=]\s*["']?)([^"'&\s,}]+)"""
)


def scrub_shapes(text: str) -> str:
    """`text` with remembered values, token-shaped text and named credentials hidden."""
    text = _TOKEN_SHAPED.sub(HIDDEN, scrub(text))
    return _NAMED_SECRET.sub(lambda m: m.group(1) + HIDDEN, text)


class Formatter(logging.Formatter):
    """A log formatter whose lines and tracebacks never show a remembered value, nor anything
    shaped like a token or named as a credential (a library's own log lines included)."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub_shapes(super().format(record))

    def formatException(self, ei: ExcInfo) -> str:
        return scrub_shapes(super().formatException(ei))


def printable(text: str) -> str:
    """Text safe to print on a terminal: control and format characters (escape sequences,
    bidirectional overrides) and undecodable bytes of a file name shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return char.encode("unicode_escape").decode()
