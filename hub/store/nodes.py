"""Nodes and events: the ingest write path and the fleet's queries.

A node's effective state comes from :mod:`hub.states` (the only definition).
``stale_at`` is precomputed at write time (last heard + the node's stale window) so
the summary is one pass over a covering index. SQL is assembled only from constant
fragments (hence the S608 noqa markers); every value is bound.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from hub.errors import StoreError
from hub.states import (
    EFFECTIVE_STATE_SQL,
    OVERRIDE_COUNTS_SQL,
    REPORTED_SQL,
    stale_window_sql,
)
from hub.store.db import Db
from hub.store.interface import IngestStore, NodeQueries
from hub.store.rowparts import event_filter, fold_state_counts, node_row
from hub.store.rows import (
    Batch,
    DriftedNode,
    EventRow,
    LabelCount,
    NodeDetail,
    NodeRow,
    NodeState,
    StateCount,
    VersionCount,
)

# Parameters: StatusRow's fields in order (?1 node ... ?13 live, ?14 agent_version).
_UPSERT_STATUS = f"""
INSERT INTO nodes (node, branch, state, seq, applied, desired, drift_count, online,
    heartbeat, last_heard, stale_at, observed_at, doc, agent_version)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9, ?9 + {stale_window_sql("?10", "?8")}, ?11, ?12,
    ?14)
ON CONFLICT(node) DO UPDATE SET
    branch = excluded.branch, state = excluded.state, seq = excluded.seq,
    applied = excluded.applied, desired = excluded.desired,
    drift_count = excluded.drift_count, heartbeat = excluded.heartbeat,
    observed_at = excluded.observed_at, doc = excluded.doc,
    agent_version = excluded.agent_version,
    online = CASE WHEN ?13 THEN 1 ELSE nodes.online END,
    last_heard = max(nodes.last_heard, ?9),
    stale_at = max(nodes.last_heard, ?9) + {stale_window_sql("?10", "?8")}
"""  # noqa: S608
_HEARTBEAT = f"""
UPDATE nodes SET online = 1, last_heard = max(last_heard, ?1),
    stale_at = max(last_heard, ?1) + {stale_window_sql("?2", "heartbeat")}
WHERE node = ?3
"""  # noqa: S608
_UPSERT_ONLINE = f"""
INSERT INTO nodes (node, online, last_heard, stale_at) VALUES (?1, ?2, ?3, ?3 + ?4)
ON CONFLICT(node) DO UPDATE SET online = excluded.online,
    last_heard = CASE WHEN ?5 THEN max(nodes.last_heard, ?3) ELSE nodes.last_heard END,
    stale_at = CASE WHEN ?5
        THEN max(nodes.last_heard, ?3) + {stale_window_sql("?4", "nodes.heartbeat")}
        ELSE nodes.stale_at END
"""  # noqa: S608
_INSERT_EVENT = """
INSERT OR IGNORE INTO events (node, seq, at, type, commit_sha, details, received, incarnation)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_NODE_COLUMNS = (
    f"node, branch, {EFFECTIVE_STATE_SQL}, state, applied, desired, "
    "json_extract(doc, '$.labels'), drift_count, online, last_heard, observed_at, seq, "
    "json_extract(doc, '$.version')"
)


class SqliteNodes(Db, IngestStore, NodeQueries):
    """Contracts: :class:`~hub.store.interface.IngestStore` and
    :class:`~hub.store.interface.NodeQueries`."""

    # -- writer ---------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> tuple[int, int]:
        """One transaction, one ``executemany`` per kind of row."""
        async with self._write_lock:
            try:
                await self._w.execute("BEGIN")
                try:
                    inserted = await self._write_rows(batch)
                    await self._w.execute("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
            except (sqlite3.Error, OverflowError, UnicodeEncodeError) as err:
                # A value SQLite cannot bind must fail the batch, not the ingest task.
                raise StoreError(f"writing a batch of {len(batch)} messages failed: {err}") from err
        return inserted, len(batch.events)

    async def _write_rows(self, batch: Batch) -> int:
        if batch.statuses:
            await self._w.executemany(_UPSERT_STATUS, batch.statuses)
        if batch.heartbeats:
            await self._w.executemany(_HEARTBEAT, batch.heartbeats)
        if batch.onlines:
            await self._w.executemany(_UPSERT_ONLINE, batch.onlines)
        if not batch.events:
            return 0
        cur = await self._w.executemany(_INSERT_EVENT, batch.events)
        return max(cur.rowcount, 0)

    async def forget_node(self, node: str) -> None:
        # Through the writer and its lock: never concurrent with an ingest batch.
        await self._write("DELETE FROM nodes WHERE node = ?", (node,), f"forgetting node {node}")

    async def node_seqs(self) -> dict[str, int]:
        async with self._w.execute("SELECT node, seq FROM nodes") as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def node_incarnations(self) -> dict[str, str]:
        # ``doc`` is the hub's strict re-encoding of a validated status, so json_extract
        # reads exactly what ingest checked.
        async with self._w.execute(
            "SELECT node, json_extract(doc, '$.incarnation') FROM nodes "
            "WHERE json_extract(doc, '$.incarnation') IS NOT NULL"
        ) as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def restale(self, stale_after: float) -> None:
        # Only rows whose deadline moves: a restart with the same stale_after writes nothing.
        window = stale_window_sql("?1", "heartbeat")
        try:
            await self._w.execute(
                f"UPDATE nodes SET stale_at = last_heard + {window} "  # noqa: S608
                f"WHERE stale_at <> last_heard + {window}",
                (stale_after,),
            )
        except sqlite3.Error as err:
            raise StoreError(f"updating stale deadlines failed: {err}") from err

    async def prune_events(self, before: float, keep: int) -> int:
        try:
            cur = await self._w.execute("DELETE FROM events WHERE received < ?", (before,))
            removed = max(cur.rowcount, 0)
            cur = await self._w.execute(
                "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (keep,)
            )
            return removed + max(cur.rowcount, 0)
        except sqlite3.Error as err:
            raise StoreError(f"pruning events failed: {err}") from err

    # -- reader ---------------------------------------------------------------------

    async def state_counts(self, now: float) -> list[StateCount]:
        """Grouped by the covering index's own columns so SQLite streams through it
        without a temporary B-tree; each group is split by the overrides' counts.
        """
        rows = await self._all(
            f"SELECT branch, {REPORTED_SQL}, count(*), {OVERRIDE_COUNTS_SQL} "  # noqa: S608
            "FROM nodes GROUP BY branch, online, state",
            {"now": now},
        )
        return fold_state_counts(rows)

    async def label_counts(self, key: str, now: float) -> list[LabelCount]:
        rows = await self._all(
            f"SELECT json_extract(doc, :path) AS v, {EFFECTIVE_STATE_SQL} AS st, count(*) "  # noqa: S608
            "FROM nodes GROUP BY v, st",
            {"now": now, "path": _json_path(key)},
        )
        return [LabelCount(None if v is None else str(v), st, n) for v, st, n in rows]

    async def version_counts(self) -> list[VersionCount]:
        rows = await self._all(
            "SELECT branch, agent_version, count(*) FROM nodes GROUP BY branch, agent_version"
        )
        return [VersionCount(b, None if v is None else str(v), n) for b, v, n in rows]

    async def stage_nodes(self, branch: str, now: float) -> list[NodeState]:
        rows = await self._all(
            f"SELECT node, {EFFECTIVE_STATE_SQL}, state, applied, desired, "  # noqa: S608
            "agent_version FROM nodes WHERE branch = :branch",
            {"now": now, "branch": branch},
        )
        return [NodeState(*r) for r in rows]

    async def list_nodes(
        self,
        now: float,
        branches: Iterable[str] | None = None,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[NodeRow]]:
        where, params = _node_filter(now, branches, state, labels)
        total = await self._all(f"SELECT count(*) FROM nodes {where}", params)  # noqa: S608
        rows = await self._all(
            f"SELECT {_NODE_COLUMNS} FROM nodes {where} "  # noqa: S608
            "ORDER BY node LIMIT :limit OFFSET :offset",
            {**params, "limit": limit, "offset": offset},
        )
        return int(total[0][0]), [node_row(r) for r in rows]

    async def get_node(self, node: str, now: float) -> NodeDetail | None:
        rows = await self._all(
            f"SELECT {_NODE_COLUMNS}, doc, stale_at FROM nodes WHERE node = :node",  # noqa: S608
            {"now": now, "node": node},
        )
        if not rows:
            return None
        *columns, doc, stale_at = rows[0]
        return NodeDetail(node_row(columns), doc, stale_at)

    async def drifted(self, now: float) -> list[DriftedNode]:
        rows = await self._all(
            f"SELECT node, branch, {EFFECTIVE_STATE_SQL}, doc FROM nodes WHERE drift_count > 0",  # noqa: S608
            {"now": now},
        )
        return [DriftedNode(*r) for r in rows]

    async def events(
        self,
        node: str | None = None,
        type_: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[EventRow]:
        where, params = event_filter(node, type_, since, limit)
        rows = await self._all(
            "SELECT node, seq, at, type, commit_sha, details, received FROM events "  # noqa: S608
            f"{where} ORDER BY id DESC LIMIT :limit",
            params,
        )
        return [EventRow(*r) for r in rows]


def _json_path(key: str) -> str:
    """Path of one label in the stored status document."""
    return '$.labels."' + key.replace('"', "") + '"'


def _node_filter(
    now: float,
    branches: Iterable[str] | None,
    state: str | None,
    labels: dict[str, str] | None,
) -> tuple[str, dict[str, object]]:
    clauses: list[str] = []
    params: dict[str, object] = {"now": now}
    if branches is not None:
        names = []
        for i, b in enumerate(branches):
            params[f"b{i}"] = b
            names.append(f":b{i}")
        clauses.append(f"branch IN ({', '.join(names)})" if names else "branch IS NULL")
    if state is not None:
        clauses.append(f"{EFFECTIVE_STATE_SQL} = :state")
        params["state"] = state
    for i, (key, value) in enumerate((labels or {}).items()):
        clauses.append(f"json_extract(doc, :lk{i}) = :lv{i}")
        params[f"lk{i}"] = _json_path(key)
        params[f"lv{i}"] = value
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
