"""Owner-only folders: the audit workbooks, the journal and the logs hold passes or user names."""

from __future__ import annotations

import contextlib
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
