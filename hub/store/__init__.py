"""The hub's persistence, split by concern: :mod:`~hub.store.schema` (versioned
migrations), :mod:`~hub.store.states` (state names and the effective-state rule),
:mod:`~hub.store.nodes` (ingest writes, node queries, summaries) and
:mod:`~hub.store.rollouts` (audit, pauses, stage heads). Everything crossing this
boundary is a typed row from :mod:`~hub.store.rows`.

:class:`Store` is the SQLite implementation; its public methods are the interface a
second backend implements.
"""

from __future__ import annotations

from pathlib import Path

from hub.store.db import Db
from hub.store.nodes import NodeStore
from hub.store.rollouts import RolloutStore
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
    StatusRow,
)

__all__ = [
    "AuditEntry",
    "AuditRow",
    "Batch",
    "DriftedNode",
    "EventRow",
    "LabelCount",
    "NodeDetail",
    "NodeRow",
    "NodeState",
    "Pause",
    "StateCount",
    "StatusRow",
    "Store",
]


class Store(NodeStore, RolloutStore):
    """Open with :meth:`open`; close with :meth:`close`."""

    @classmethod
    async def open(cls, path: Path) -> Store:
        return cls(*await Db.connect(path))
