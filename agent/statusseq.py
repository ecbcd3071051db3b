"""The status seq: increases across restarts, so the hub can drop a stale status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from agent.atomic import write_atomic
from agent.errors import StateError

SEQ_BLOCK: Final = 1000
"""Status seqs reserved per state write, so heartbeats do not write flash every time."""


class StatusSeq:
    """Status seq counter that keeps increasing across restarts (reserved in blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._next = int(json.loads(path.read_bytes())["reserved"])
        except FileNotFoundError:
            self._next = 0
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StateError(f"cannot read {path}: {err}") from err
        self._reserved = self._next

    def take(self) -> int:
        if self._next >= self._reserved:
            reserved = self._next + SEQ_BLOCK
            try:
                write_atomic(self.path, json.dumps({"reserved": reserved}).encode(), 0o600)
            except OSError as err:
                raise StateError(f"cannot write {self.path}: {err.strerror}") from err
            self._reserved = reserved
        self._next += 1
        return self._next
