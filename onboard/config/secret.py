"""Where one secret is read from. A config file holds only the names of the variables and
files that hold secrets (or, owner-only, the secret itself), never hands one to a log."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import redact
from ..errors import ConfigError
from ..files import NotAFile, read_small

log = logging.getLogger("onboard.config")

SECRET_FILE_LIMIT = 64 * 1024  # a secret file bigger is not one (/dev/zero, a log by mistake)


@dataclass(frozen=True, slots=True)
class Secret:
    """Where one secret is read from: a file, else an environment variable (or, from an
    owner-only config file, inline). Its repr and `where` never show the value."""

    key: str  # the config key, e.g. "auth.client_secret"
    env: str | None = None
    file: Path | None = None
    inline: str | None = field(default=None, repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.inline is not None or self.file or self.env)

    @property
    def where(self) -> str:
        if self.inline is not None:
            return f"{self.key} in the config file"
        if self.file is not None:
            return f"the file {self.file} ({self.key}_file)"
        if self.env:
            return f"the environment variable {self.env} ({self.key}_env)"
        return "nowhere (not configured)"

    def read(self, environ: Mapping[str, str]) -> str | None:
        """The secret; None when none is configured. Raises ConfigError when one is
        configured but missing or empty."""
        if self.inline is not None:
            value: str | None = self.inline
        elif self.file is not None:
            value = self._read_file(self.file)
        elif self.env:
            value = environ.get(self.env)
        else:
            return None
        if not value:
            raise ConfigError(f"{self.key} is read from {self.where}, which is not set or empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes from the environment that are not UTF-8
            raise ConfigError(f"{self.key} from {self.where} is not UTF-8 text") from None
        redact.remember(value)
        return value

    def _read_file(self, path: Path) -> str:
        try:
            value = read_small(path, SECRET_FILE_LIMIT).decode("utf-8").rstrip("\r\n")
            mode = stat.S_IMODE(path.stat().st_mode)
        except NotAFile as exc:
            raise ConfigError(f"cannot read {self.where}: it {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"cannot read {self.where}: {reason}") from None
        if mode & 0o077 and os.name != "nt":
            log.warning("%s can be read by other users (mode %04o): chmod 600 it", self.where, mode)
        return value
