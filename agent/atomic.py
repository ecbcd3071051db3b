"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TMP_PREFIX = ".edgefleet-tmp-"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new bytes, never half.

    Raises OSError (ENOSPC included) with the old file untouched and no temp file left.
    """
    directory = path.parent
    fd = -1
    # A fixed name: a temp file left by a killed writer is simply overwritten next time.
    tmp = directory / f"{TMP_PREFIX}{path.name}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        os.fchmod(fd, mode)  # umask must not weaken or widen the mode from Git
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a killed agent left behind in ``directory``; returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in directory.iterdir():
            if entry.name.startswith(TMP_PREFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed
