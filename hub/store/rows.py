"""Typed values going into and coming out of the store (never ``sqlite3.Row``).

Rows written in bulk are NamedTuples in SQL parameter order (``executemany`` takes them
as they are); rows read are frozen dataclasses. JSON columns stay JSON text where the
caller only passes them on, and are parsed here where the caller needs the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class StatusRow(NamedTuple):
    """A new status for a node (higher seq than stored); fields in SQL parameter order."""

    node: str
    branch: str | None
    state: str
    seq: int
    applied: str | None
    desired: str | None
    drift_count: int
    heartbeat: float
    last_heard: float
    stale_after: float
    """The hub's ``stale_after``; the store derives the node's stale window from it."""
    observed_at: float | None
    doc: str
    live: bool
    """False for a retained message replayed by the broker (it proves nothing about now)."""
    agent_version: str | None = None
    """The agent's version as reported (``doc``'s ``version``), for counts per stage."""


class EventRow(NamedTuple):
    """One event (written and read); fields in SQL parameter order."""

    node: str
    seq: int
    at: float | None
    type: str
    commit: str | None
    details: str
    """JSON object text."""
    received: float
    incarnation: str = ""
    """The agent's life the seq belongs to ('' for agents that send none)."""


@dataclass
class Batch:
    """What one ingest transaction writes."""

    statuses: list[StatusRow] = field(default_factory=list)
    heartbeats: list[tuple[float, float, str]] = field(default_factory=list)
    """(heard at, stale_after, node): a re-published status with the stored seq."""
    onlines: list[tuple[str, int, float, float, bool]] = field(default_factory=list)
    """(node, online, heard at, stale_after, live)."""
    events: list[EventRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.statuses) + len(self.heartbeats) + len(self.onlines) + len(self.events)


@dataclass(frozen=True)
class StateCount:
    """Nodes of one branch (None: never reported one) in one effective state."""

    branch: str | None
    state: str
    nodes: int


@dataclass(frozen=True)
class LabelCount:
    """Nodes with one value of a label (None: label absent) in one effective state."""

    value: str | None
    state: str
    nodes: int


@dataclass(frozen=True)
class NodeState:
    """A node as the rollout gate sees it."""

    node: str
    state: str
    """Effective state: what the node said, overridden by stale/offline."""
    reported: str | None
    """What the node last said, however old (a failure stays evidence)."""
    applied: str | None
    desired: str | None
    version: str | None = None
    """The agent version it reports (None: its status has none)."""


@dataclass(frozen=True)
class VersionCount:
    """Nodes of one branch (None: never reported one) reporting one agent version."""

    branch: str | None
    version: str | None
    nodes: int


@dataclass(frozen=True)
class NodeRow:
    """One node in a listing."""

    node: str
    branch: str | None
    state: str
    """Effective state."""
    reported: str | None
    applied: str | None
    desired: str | None
    labels: dict[str, str]
    drift_count: int
    online: bool
    last_heard: float
    observed_at: float | None
    seq: int
    version: str | None = None
    """The agent version it reports."""


@dataclass(frozen=True)
class NodeDetail:
    """One node with its full last status document."""

    row: NodeRow
    doc: str | None
    """The stored status document (JSON text); None before the first status."""
    stale_at: float


@dataclass(frozen=True)
class DriftedNode:
    node: str
    branch: str | None
    state: str
    """Effective state."""
    doc: str
    """The stored status document (JSON text) holding the drift list."""


class AuditRow(NamedTuple):
    """One rollout decision to record; fields in SQL parameter order."""

    at: float
    action: str
    """promote | halt | rollback | resume"""
    stage: str
    who: str
    from_commit: str | None
    to_commit: str | None
    outcome: str
    """done | refused | failed"""
    forced: bool
    reason: str
    evidence: str
    """JSON: the gate evaluation or failure counts behind the decision."""
    on_behalf: str | None = None
    """What the caller said about itself ("cli:alice"); ``who`` is the authenticated user."""


@dataclass(frozen=True)
class AuditEntry:
    """A recorded rollout decision (:class:`AuditRow` with its id)."""

    id: int
    row: AuditRow


@dataclass(frozen=True)
class Pause:
    stage: str
    kind: str
    """halt (blocks the stage and its downstream) | rollback (blocks the stage)"""
    commit: str | None
    at: float
    who: str
    reason: str
