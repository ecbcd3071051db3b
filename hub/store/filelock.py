"""One hub per SQLite file: an exclusive ``flock`` on ``<database>.lock``.

Two hubs on one SQLite file would each ingest half the fleet (a shared subscription)
or all of it twice, and both would promote: the second is refused at start with the
first one's pid. The kernel drops the lock when its holder dies, so a crashed hub
never leaves a stale lock behind. Several hubs need PostgreSQL.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hub.errors import StoreError


class DatabaseLock:
    """Held from :meth:`acquire` until :meth:`release`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, database: Path) -> DatabaseLock:
        path = database.with_name(database.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreError(f"cannot open lock file {path}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"hub pid {holder}" if holder.isdigit() else "another hub"
            raise StoreError(
                f"{database} is in use by {who} (lock {path}): one hub per SQLite database; "
                "several hubs need a PostgreSQL database"
            ) from None
        except OSError as err:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {err}") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1
