"""The hub's persistence, split by concern: :mod:`~hub.store.schema` (versioned
migrations), :mod:`~hub.states` (state names and the effective-state rule),
:mod:`~hub.store.nodes` (ingest writes, node queries, summaries) and
:mod:`~hub.store.rollouts` (audit, pauses, stage heads). Everything crossing this
boundary is a typed row from :mod:`~hub.store.rows`.

:mod:`~hub.store.interface` is the contract (Protocols) both backends implement:
:class:`Store` is the SQLite implementation, :class:`hub.store.pg.PgStore` the
PostgreSQL one (``pg*.py``); :func:`hub.store.factory.open_store` picks by
``[hub] database``.
"""

from __future__ import annotations

from pathlib import Path

from hub.store.db import Db
from hub.store.filelock import DatabaseLock
from hub.store.interface import HubStore, IngestStore, NodeQueries, RolloutRecords, RolloutStore
from hub.store.nodes import SqliteNodes
from hub.store.outbox import SqliteOutbox
from hub.store.plans import SqlitePlans
from hub.store.rollouts import SqliteRollouts
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
    VersionCount,
)
from hub.store.samples import SqliteSamples
from hub.store.waves import SqliteWaves

__all__ = [
    "AuditEntry",
    "AuditRow",
    "Batch",
    "DriftedNode",
    "EventRow",
    "HubStore",
    "IngestStore",
    "LabelCount",
    "NodeDetail",
    "NodeQueries",
    "NodeRow",
    "NodeState",
    "Pause",
    "RolloutRecords",
    "RolloutStore",
    "StateCount",
    "StatusRow",
    "Store",
    "VersionCount",
]


class Store(
    SqliteNodes, SqliteRollouts, SqliteOutbox, SqliteSamples, SqliteWaves, SqlitePlans, HubStore
):
    """The SQLite store. Open with :meth:`open`; close with :meth:`close`.

    Open, it holds the database's :class:`DatabaseLock`: a second hub is refused."""

    _lock: DatabaseLock | None = None

    @classmethod
    async def open(cls, path: Path) -> Store:
        lock = DatabaseLock.acquire(path)
        try:
            store = cls(*await Db.connect(path))
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._lock is not None:
                self._lock.release()
