"""What the hub needs from a store, as Protocols: the contract a second backend
(PostgreSQL) implements. :class:`hub.store.Store` is the SQLite implementation.

Times are Unix seconds; ``now`` is passed in (the effective state depends on it, see
:mod:`hub.states`). Every method raises :class:`hub.errors.StoreError` on a
database failure, with the database's own reason in the message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from hub.store.outbox import NotifyOutbox
from hub.store.plans import PlanRecords
from hub.store.rows import (
    AuditEntry,
    AuditRow,
    Batch,
    DriftedNode,
    EventRow,
    LabelCount,
    NodeDetail,
    NodeRow,
    NodeState,
    Pause,
    StateCount,
    VersionCount,
)
from hub.store.samples import SampleStore
from hub.store.waves import WaveRecords


class IngestStore(Protocol):
    async def write_batch(self, batch: Batch) -> tuple[int, int]:
        """Store one batch atomically; returns (events inserted, events seen).

        Statuses only ever raise a node's seq (the caller filters); an event whose
        (node, seq) is stored already is skipped. On failure nothing of the batch is
        stored, so the caller keeps its messages unacked and retries."""
        ...

    async def node_seqs(self) -> dict[str, int]:
        """Last stored status seq per node."""
        ...

    async def node_incarnations(self) -> dict[str, str]:
        """Incarnation of each node's stored status, for agents that send one."""
        ...

    async def forget_node(self, node: str) -> None:
        """Delete the node's row (its events stay); never concurrent with a batch on
        SQLite (one writer)."""
        ...

    async def restale(self, stale_after: float) -> None:
        """Recompute every node's stale deadline for a (possibly new) ``stale_after``."""
        ...

    async def prune_events(self, before: float, keep: int) -> int:
        """Delete events received before ``before`` and all but the newest ``keep``;
        returns how many went."""
        ...


class NodeQueries(Protocol):
    async def state_counts(self, now: float) -> list[StateCount]:
        """Nodes per (branch, effective state), for every combination present."""
        ...

    async def label_counts(self, key: str, now: float) -> list[LabelCount]:
        """Nodes per (value of label ``key``, effective state)."""
        ...

    async def version_counts(self) -> list[VersionCount]:
        """Nodes per (branch, agent version they report), stale and offline included."""
        ...

    async def stage_nodes(self, branch: str, now: float) -> list[NodeState]:
        """Every node that last reported ``branch``."""
        ...

    async def list_nodes(
        self,
        now: float,
        branches: Iterable[str] | None = None,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[NodeRow]]:
        """(nodes matching all filters, one page of them ordered by name)."""
        ...

    async def get_node(self, node: str, now: float) -> NodeDetail | None: ...

    async def drifted(self, now: float) -> list[DriftedNode]:
        """Nodes whose last status reported drift."""
        ...

    async def events(
        self,
        node: str | None = None,
        type_: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[EventRow]:
        """Events matching all filters, newest first."""
        ...


class RolloutRecords(Protocol):
    async def add_audit(self, row: AuditRow) -> int:
        """Record a rollout decision; returns its id."""
        ...

    async def set_pause(self, pause: Pause) -> None:
        """Pause a stage (replacing its current pause)."""
        ...

    async def clear_pause(self, stage: str) -> None: ...

    async def record_head(self, stage: str, commit: str, at: float) -> None:
        """Remember that ``stage`` had ``commit`` (the first sighting's time is kept)."""
        ...

    async def pauses(self) -> dict[str, Pause]:
        """Current pauses by stage name."""
        ...

    async def head_history(self, stage: str) -> list[str]:
        """Commits the stage branch pointed at, newest first."""
        ...

    async def promotion_origin(self, stage: str, to_commit: str) -> str | None:
        """The commit the last successful promotion of ``stage`` to ``to_commit`` left."""
        ...

    async def history(self, stage: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audit entries (of one stage, or all), newest first."""
        ...


class GateClocks(Protocol):
    """Since when each stage's gate holds, kept in the database so a restarted hub (or
    a new leader) continues a soak instead of restarting it."""

    async def gate_holding(self) -> dict[str, tuple[str, float]]:
        """stage -> (candidate, holding since)."""
        ...

    async def set_gate_holding(self, stage: str, holding: tuple[str, float] | None) -> None:
        """Record (candidate, since) for ``stage``, or forget it (None)."""
        ...


class RolloutStore(NodeQueries, RolloutRecords, GateClocks, Protocol):
    """What the rollout engine reads and writes."""


class HubStore(
    IngestStore,
    NodeQueries,
    RolloutRecords,
    GateClocks,
    NotifyOutbox,
    SampleStore,
    WaveRecords,
    PlanRecords,
    Protocol,
):
    """Everything, for the service that opens one store and hands it around."""

    async def close(self) -> None: ...
