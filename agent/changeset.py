"""ChangeSet: what one reconcile does to one target, as (subject, action) pairs.

Modelled on Flux's ssa ChangeSet. ``unchanged`` entries are kept so the summary can
say how much was checked, but they never cause a write, a reload or a restart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class Action(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    DELETED = "deleted"


@dataclass(frozen=True)
class Change:
    subject: str
    """What changes, named the way an operator would: a host path, a unit, kind/ns/name."""
    action: Action
    detail: str = ""


@dataclass
class ChangeSet:
    target: str
    changes: list[Change] = field(default_factory=list)

    def add(self, subject: str, action: Action, detail: str = "") -> None:
        self.changes.append(Change(subject, action, detail))

    def of(self, *actions: Action) -> list[Change]:
        return [c for c in self.changes if c.action in actions]

    @property
    def writes(self) -> list[Change]:
        """Changes that touch the node (everything but unchanged)."""
        return [c for c in self.changes if c.action is not Action.UNCHANGED]

    @property
    def empty(self) -> bool:
        return not self.writes

    def counts(self) -> dict[str, int]:
        counter = Counter(c.action.value for c in self.changes)
        return {a.value: counter.get(a.value, 0) for a in Action}

    def summary(self) -> str:
        """One line: ``files: 2 created, 1 configured, 5 unchanged``."""
        parts = [f"{n} {action}" for action, n in self.counts().items() if n]
        return f"{self.target}: {', '.join(parts) if parts else 'nothing'}"

    def lines(self) -> list[str]:
        """The writes, one per line, for ``sync --dry-run`` and logs."""
        return [
            f"{c.action.value:<10} {self.target}:{c.subject}"
            + (f" ({c.detail})" if c.detail else "")
            for c in self.writes
        ]
