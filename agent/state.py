"""The agent's persistent state in ``state_dir/state.json``: inventory and commit history.

Format is versioned; state.json is written with :func:`agent.atomic.write_atomic`, so a
``kill -9`` leaves either the previous or the next state, never a torn one; inventory
changes between two such writes go to an append-only journal (see :class:`StateStore`). The
inventory lists everything the agent owns, per target, with a content digest and the
commit it came from; prune = owned before - desired now. A failed delete stays listed.
``state_dir/incarnation`` holds the random id of this state dir (:func:`load_incarnation`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.atomic import fsync_dir, write_atomic
from agent.errors import StateError
from common.wire import valid_incarnation

FORMAT = 1
MAX_HISTORY = 50
SYNC_EVERY = 256
"""Journal lines between fsyncs; a kill -9 loses none, a power cut at most these."""
log = logging.getLogger(__name__)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Owned:
    """One object the agent placed: its digest and the commit it came from."""

    digest: str
    commit: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class NodeState:
    applied: str | None = None
    """Commit whose desired state is live now (complete apply)."""
    last_good: str | None = None
    """Newest commit that was applied and passed health."""
    good: list[str] = field(default_factory=list)
    """Commits that passed health here, newest last (for non_fast_forward = known-good)."""
    bad: list[str] = field(default_factory=list)
    """Commits that failed here; not retried until the branch moves."""
    applying: str | None = None
    """Set before an apply starts, cleared when it ends: a crash leaves it set to resume."""
    last_attempted: str | None = None
    inventory: dict[str, dict[str, Owned]] = field(default_factory=dict)

    def owned(self, target: str) -> dict[str, Owned]:
        return self.inventory.setdefault(target, {})

    def mark_good(self, commit: str) -> None:
        self.last_good = commit
        if commit in self.good:
            self.good.remove(commit)
        self.good.append(commit)
        del self.good[:-MAX_HISTORY]
        if commit in self.bad:
            self.bad.remove(commit)

    def mark_bad(self, commit: str) -> None:
        if commit not in self.bad:
            self.bad.append(commit)
            del self.bad[:-MAX_HISTORY]

    def counts(self) -> dict[str, int]:
        return {target: len(objs) for target, objs in sorted(self.inventory.items())}

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["format"] = FORMAT
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> NodeState:
        if doc.get("format") != FORMAT:
            raise StateError(f"unsupported state format {doc.get('format')!r}")
        inventory = {
            target: {subject: Owned(**entry) for subject, entry in objs.items()}
            for target, objs in doc.get("inventory", {}).items()
        }
        return cls(
            applied=doc.get("applied"),
            last_good=doc.get("last_good"),
            good=list(doc.get("good", [])),
            bad=list(doc.get("bad", [])),
            applying=doc.get("applying"),
            last_attempted=doc.get("last_attempted"),
            inventory=inventory,
        )


class StateStore:
    """Loads and saves :class:`NodeState` under ``state_dir``, the inventory via a journal.

    Rewriting state.json for every placed object costs O(N^2) bytes for an apply of N
    objects, so :meth:`record` appends one line per inventory change to
    ``inventory.journal`` and :meth:`save` compacts: it writes state.json atomically, then
    drops the journal. Each state.json carries a generation and each journal names the
    generation it extends, so a journal that outlived its compaction is never replayed.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"
        self.journal = state_dir / "inventory.journal"
        self._generation = 0
        self._fd = -1
        self._unsynced = 0

    def ensure_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise StateError(f"cannot create state_dir {self.dir}: {err.strerror}") from err

    def load(self) -> NodeState:
        """state.json with the journal replayed on top (read-only: compaction is save's)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            state = NodeState()
        except OSError as err:
            raise StateError(f"cannot read {self.path}: {err.strerror}") from err
        else:
            try:
                doc = json.loads(raw)
                state = NodeState.from_json(doc)
                self._generation = int(doc.get("generation", 0))
            except (ValueError, TypeError, KeyError) as err:
                raise StateError(
                    f"{self.path} is corrupt ({err}); move it away to start over"
                ) from err
        self._replay(state)
        return state

    def _replay(self, state: NodeState) -> None:
        try:
            raw = self.journal.read_bytes()
        except FileNotFoundError:
            return
        except OSError as err:
            raise StateError(f"cannot read {self.journal}: {err.strerror}") from err
        # The text after the last newline is a line a kill cut short: never acted on.
        lines = raw.split(b"\n")[:-1]
        number = 1
        try:
            if not lines or json.loads(lines[0]).get("generation") != self._generation:
                return
            for line in lines[1:]:
                number += 1
                entry = json.loads(line)
                objs = state.owned(entry["target"])
                if entry["owned"] is None:
                    objs.pop(entry["subject"], None)
                else:
                    objs[entry["subject"]] = Owned(**entry["owned"])
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise StateError(
                f"{self.journal} line {number} is corrupt ({err}); move it away to start over"
            ) from err

    def record(self, target: str, subject: str, owned: Owned | None) -> None:
        """Append one inventory change; fsync every SYNC_EVERY lines and in :meth:`sync`."""
        entry = {"target": target, "subject": subject, "owned": owned and asdict(owned)}
        try:
            if self._fd < 0:
                self._open_journal()
            _write_all(self._fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
            self._unsynced += 1
            if self._unsynced >= SYNC_EVERY:
                self.sync()
        except OSError as err:
            raise StateError(f"cannot write {self.journal}: {err.strerror}") from err

    def _open_journal(self) -> None:
        """Continue this generation's journal (minus a torn last line) or start one."""
        header = json.dumps({"format": FORMAT, "generation": self._generation}).encode()
        try:
            raw = self.journal.read_bytes()
        except FileNotFoundError:
            raw = b""
        if raw.startswith(header + b"\n"):
            self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)
            os.ftruncate(self._fd, raw.rfind(b"\n") + 1)
            return
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        _write_all(self._fd, header + b"\n")
        os.fsync(self._fd)
        fsync_dir(self.dir)

    def sync(self) -> None:
        """Make every recorded change durable (after each apply step)."""
        if self._fd < 0 or not self._unsynced:
            return
        try:
            os.fsync(self._fd)
        except OSError as err:
            raise StateError(f"cannot write {self.journal}: {err.strerror}") from err
        self._unsynced = 0

    def save(self, state: NodeState) -> None:
        """Write state.json (the next generation), then drop the journal it absorbed."""
        doc = state.to_json()
        doc["generation"] = self._generation + 1
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        try:
            write_atomic(self.path, data, 0o600)
            self._generation += 1
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._unsynced = 0
            self.journal.unlink(missing_ok=True)
        except OSError as err:
            raise StateError(f"cannot write {self.path}: {err.strerror}") from err


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def iter_owned(state: NodeState) -> Iterator[tuple[str, str, Owned]]:
    for target, objs in sorted(state.inventory.items()):
        for subject, owned in sorted(objs.items()):
            yield target, subject, owned


def load_incarnation(state_dir: Path) -> str:
    """The random id of this state dir, created at the first start and kept.

    Statuses and events carry it: when a node is re-imaged (state dir lost, seqs restart
    at 1) the new id tells the hub that this is a new life, not a late replay.
    """
    path = state_dir / "incarnation"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = secrets.token_hex(16)
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, text.encode() + b"\n", 0o600)
        except OSError as err:
            raise StateError(f"cannot write {path}: {err.strerror}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise StateError(f"cannot read {path}: {err}") from err
    if not valid_incarnation(text):
        raise StateError(f"{path} is corrupt; remove it (the hub then sees a new life)")
    return text
