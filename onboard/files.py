"""Owner-only folders (the audit workbooks, the journal and the logs hold passes or user names),
and the lock files that keep two runs apart."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from .errors import ConfigError


def private_dir(path: Path) -> None:
    """Create `path`, and each missing folder above it, readable by its owner only (0700).

    Unlike `Path.mkdir(parents=True)`, which creates the parents with the default mode. Folders
    that already exist are left exactly as they are: never loosened, never changed.
    """
    missing: list[Path] = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile: theirs
            folder.mkdir(mode=0o700)


class LockFile:
    """An exclusive lock held for a run, in a small file that also says who holds it.

    Byte 0 is locked (flock; msvcrt on Windows); after it, a line naming the holder, for the
    message a second run prints, and a line identifying the holding process (its pid and when
    it started), so that a reader can tell a live holder from a dead one without taking the
    lock (`held`): taking it, even for an instant, would turn a run starting at that instant
    away. The lock goes with the process: closing the file, or the process dying (kill -9
    included), releases it; a clean release also clears the lines.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, holder: str) -> str | None:
        """Take the lock and write `holder`; if another process holds it, return its line."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.lseek(fd, 1, os.SEEK_SET)
            text = os.read(fd, HOLDER_BYTES).decode(errors="replace")
            os.close(fd)
            return text.split("\n", 1)[0].strip() or "unknown"
        os.ftruncate(fd, 1)
        os.lseek(fd, 1, os.SEEK_SET)
        os.write(fd, f"{holder}\n{PROCESS} {os.getpid()} {_started(os.getpid()) or '-'}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # cleared, so no reader takes us for a holder
                os.ftruncate(self._fd, 1)
            os.close(self._fd)  # closing releases the lock
            self._fd = None

    def held(self) -> bool:
        """Whether a live process holds the lock, told without taking it: the process the file
        names exists and (where the system tells, Linux) started when the file says, so a
        reused pid is not taken for it. A holder in another pid namespace (another container
        sharing the folder) is not seen: such a run is then shown as stopped, and a run started
        to resume it is refused by the lock itself."""
        if sys.platform == "win32":  # no way to test a msvcrt lock but to take it
            probe = LockFile(self.path)
            held_by = probe.acquire("onboard runs (reading)")
            probe.release()
            return held_by is not None
        try:
            text = self.path.read_bytes()[1 : 1 + HOLDER_BYTES].decode(errors="replace")
        except OSError:
            return False
        for line in text.splitlines():
            word, _, rest = line.partition(" ")
            pid_text, _, started = rest.partition(" ")
            if word == PROCESS and pid_text.isdigit():
                return _alive(int(pid_text), started)
        return False


HOLDER_BYTES = 400
PROCESS = "process"  # the second line: "process <pid> <start>" (start "-" where unknown)


def _alive(pid: int, started: str) -> bool:
    if started != "-":  # the holder's system told when it started: the same process or none
        return _started(pid) == started
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


@functools.cache
def boot_id() -> str | None:
    """This boot of the machine (Linux), or None: a reading of the monotonic clock means
    something only within the boot it was taken in."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """When process `pid` started, as Linux tells it (boot id and clock ticks after boot);
    None elsewhere, or when there is no such process."""
    boot = boot_id()
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    if boot is None:
        return None
    fields = text.rpartition(")")[2].split()  # after the name, which may hold spaces
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def holder_line(what: str) -> str:
    """Who holds a lock, as a second run shows it: this process, since when, doing what."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {os.getpid()}, started {stamp}, {what}"


def _try_lock(fd: int) -> bool:
    """Take the file's lock without waiting; released when the file is closed."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class NotAFile(ValueError):
    """A path that must name a small regular file names something else, or a large one."""


def read_small(path: Path, limit: int) -> bytes:
    """The whole of a small regular file (a config, a secret, a certificate), read at most
    `limit` bytes. Refuses, before reading, a FIFO (it could block forever), a device
    (/dev/zero never ends) or a folder; and a file larger than `limit`. Raises NotAFile with
    what is wrong, or OSError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise NotAFile("is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise NotAFile("is not a regular file (a device or a pipe?)")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise NotAFile(f"is larger than {limit // 1024:,} KB: not the file it should be")
    return data


def check_free_space(folders: Sequence[Path], rows: int) -> None:
    """Stop before the first request when the audit or the journal may not fit on the disk."""
    need = MIN_FREE_BYTES + rows * BYTES_PER_ROW
    for folder in folders:
        free = shutil.disk_usage(folder).free
        if free < need:
            raise ConfigError(
                f"not enough free disk space in {folder}: {free // 2**20} MB free, at least "
                f"{need // 2**20 + 1} MB needed for the journal and the audit workbook"
            )


MIN_FREE_BYTES = 20 * 2**20
BYTES_PER_ROW = 4096


def check_output_dir(directory: Path) -> None:
    """Create the output directory (owner-only) and prove it is writable, before any request."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"cannot write the audit workbook into {directory}: it is a file, not a folder; "
            "set output.dir or --out to a folder"
        )
    try:
        private_dir(directory)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the audit workbook into {directory}: {exc.strerror}; "
            "set output.dir or --out to a writable folder"
        ) from None
