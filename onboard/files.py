"""Owner-only folders (the audit workbooks, the journal and the logs hold passes or user names),
and the lock files that keep two runs apart."""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path


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
    message a second run prints. The lock goes with the process: closing the file, or the
    process dying (kill -9 included), releases it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, holder: str) -> str | None:
        """Take the lock and write `holder`; if another process holds it, return its line."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.lseek(fd, 1, os.SEEK_SET)
            held_by = os.read(fd, 400).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return held_by
        os.ftruncate(fd, 1)
        os.lseek(fd, 1, os.SEEK_SET)
        os.write(fd, f"{holder}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


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
