"""The agent's persistent state in ``state_dir/state.json``: inventory and commit history.

Format is versioned; every write goes through :func:`agent.atomic.write_atomic`, so a
``kill -9`` leaves either the previous or the next state, never a torn one. The
inventory lists everything the agent owns, per target, with a content digest and the
commit it came from; prune = owned before - desired now. A failed delete stays listed.
``state_dir/incarnation`` holds the random id of this state dir (:func:`load_incarnation`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.atomic import write_atomic
from agent.errors import StateError
from common.wire import valid_incarnation

FORMAT = 1
MAX_HISTORY = 50
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
    """Loads and saves :class:`NodeState` atomically under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"

    def ensure_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise StateError(f"cannot create state_dir {self.dir}: {err.strerror}") from err

    def load(self) -> NodeState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return NodeState()
        except OSError as err:
            raise StateError(f"cannot read {self.path}: {err.strerror}") from err
        try:
            return NodeState.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError) as err:
            raise StateError(f"{self.path} is corrupt ({err}); move it away to start over") from err

    def save(self, state: NodeState) -> None:
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        try:
            write_atomic(self.path, data, 0o600)
        except OSError as err:
            raise StateError(f"cannot write {self.path}: {err.strerror}") from err


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
