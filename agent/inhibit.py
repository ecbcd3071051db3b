"""Update locks: files in the inhibit dirs that hold back every apply while they last.

A lock is one file per holder in ``[activation] inhibit_dir`` (cleared at reboot) or
``persistent_inhibit_dir`` (kept): JSON ``{"reason": "...", "expires": <unix time> | null}``,
named after its holder (``till.json`` is the lock ``till``). Local apps write it
atomically (a temp file whose name starts with ``.``, then rename; dot files are never
read) and delete it when done; ``edgefleet-agent inhibit`` does the same.

Every lock ends at ``mtime + max_ttl`` at the latest, one without ``expires`` too: a
crashed app must not stop updates forever. A file that is not such a document is a
lock all the same (reason "malformed lock file NAME", also capped): an app that meant
to say "not now" must not be overruled by a typo.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent.atomic import write_atomic

SUFFIX = ".json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
"""Lock names the CLI writes (apps may use any file name not starting with a dot)."""


@dataclass(frozen=True)
class Lock:
    name: str
    reason: str
    expires: float
    """When the lock stops counting (its own expiry, capped by max_ttl); inf: never
    (an inhibit dir that cannot be read)."""
    path: Path

    def describe(self) -> str:
        return f"{self.reason} ({self.name})"


def _lock_name(entry: str) -> str:
    return entry.removesuffix(SUFFIX)


def read_lock(path: Path, max_ttl: float) -> Lock | None:
    """The lock in ``path`` with its effective expiry; None if the file is gone."""
    name = _lock_name(path.name)
    try:
        mtime = path.stat().st_mtime
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        return Lock(name, f"unreadable lock file {path.name}: {err.strerror}", math.inf, path)
    cap = mtime + max_ttl
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    reason = doc.get("reason") if isinstance(doc, dict) else None
    expires = doc.get("expires") if isinstance(doc, dict) else None
    valid_expiry = expires is None or (
        isinstance(expires, int | float)
        and not isinstance(expires, bool)
        and math.isfinite(expires)
    )
    if not isinstance(reason, str) or not reason.strip() or not valid_expiry:
        return Lock(name, f"malformed lock file {path.name}", cap, path)
    end = cap if expires is None else min(float(expires), cap)
    return Lock(name, reason.strip()[:200], end, path)


def scan(dirs: tuple[Path, ...], max_ttl: float) -> list[Lock]:
    """Every lock file in ``dirs`` (expired ones included), in a stable order."""
    locks: list[Lock] = []
    for directory in dirs:
        try:
            entries = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        except OSError as err:
            # Fail safe: a dir we cannot read may hold a lock.
            reason = f"cannot read inhibit dir {directory}: {err.strerror}"
            locks.append(Lock(directory.name, reason, math.inf, directory))
            continue
        for entry in entries:
            if entry.startswith("."):
                continue
            lock = read_lock(directory / entry, max_ttl)
            if lock is not None:
                locks.append(lock)
    return locks


def write_lock(directory: Path, name: str, reason: str, expires: float | None) -> Path:
    """Create or replace the lock ``name`` (atomically); OSError if the dir refuses."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}{SUFFIX}"
    write_atomic(path, json.dumps({"reason": reason, "expires": expires}).encode() + b"\n")
    return path


def remove_lock(dirs: tuple[Path, ...], name: str) -> list[Path]:
    """Delete the lock ``name`` from every dir; returns the files removed."""
    removed = []
    for directory in dirs:
        for path in (directory / f"{name}{SUFFIX}", directory / name):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed
