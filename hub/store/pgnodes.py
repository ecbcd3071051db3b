"""Nodes and events on PostgreSQL: the same contract and effective-state rule as
:mod:`hub.store.nodes`, in PostgreSQL's dialect.

Several replicas may write the same node: the status upsert itself keeps the highest
seq (or a new incarnation), rows are written in node order so two batches never
deadlock, and events go in one ``INSERT ... SELECT unnest`` that reports how many
were new. SQL is assembled only from constant fragments (hence the S608 noqa markers);
every value is bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hub.errors import StoreError
from hub.states import (
    EFFECTIVE_STATE_SQL,
    OVERRIDE_FILTERS_SQL,
    OVERRIDES,
    REPORTED_SQL,
    UNREPORTED,
    stale_window_sql,
)
from hub.store.interface import IngestStore, NodeQueries
from hub.store.pgdb import BindErrors, DbErrors, PgDb
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

_WINDOW = stale_window_sql("$10::float8", "$8::float8", larger="greatest")
# Parameters: StatusRow's fields in order ($1 node ... $13 live).
_UPSERT_STATUS = f"""
INSERT INTO nodes (node, branch, state, seq, applied, desired, drift_count, online,
    heartbeat, last_heard, stale_at, observed_at, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $9::float8 + {_WINDOW}, $11, $12::json)
ON CONFLICT (node) DO UPDATE SET
    branch = excluded.branch, state = excluded.state, seq = excluded.seq,
    applied = excluded.applied, desired = excluded.desired,
    drift_count = excluded.drift_count, heartbeat = excluded.heartbeat,
    observed_at = excluded.observed_at, doc = excluded.doc,
    online = CASE WHEN $13::bool THEN 1 ELSE nodes.online END,
    last_heard = greatest(nodes.last_heard, $9),
    stale_at = greatest(nodes.last_heard, $9) + {_WINDOW}
WHERE nodes.seq < excluded.seq
    OR (excluded.doc ->> 'incarnation') IS DISTINCT FROM (nodes.doc ->> 'incarnation')
"""  # noqa: S608
_HEARTBEAT = f"""
UPDATE nodes SET online = 1, last_heard = greatest(last_heard, $1),
    stale_at = greatest(last_heard, $1) + {stale_window_sql("$2::float8", "heartbeat", "greatest")}
WHERE node = $3
"""  # noqa: S608
_UPSERT_ONLINE = f"""
INSERT INTO nodes (node, online, last_heard, stale_at) VALUES ($1, $2, $3, $3::float8 + $4)
ON CONFLICT (node) DO UPDATE SET online = excluded.online,
    last_heard = CASE WHEN $5 THEN greatest(nodes.last_heard, $3) ELSE nodes.last_heard END,
    stale_at = CASE WHEN $5
        THEN greatest(nodes.last_heard, $3)
            + {stale_window_sql("$4::float8", "nodes.heartbeat", "greatest")}
        ELSE nodes.stale_at END
"""  # noqa: S608
_INSERT_EVENTS = """
INSERT INTO events (node, seq, at, type, commit_sha, details, received, incarnation)
SELECT node, seq, at, type, commit_sha, details, received, incarnation
FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::text[], $5::text[], $6::text[],
            $7::float8[], $8::text[])
    WITH ORDINALITY AS e(node, seq, at, type, commit_sha, details, received, incarnation, n)
ORDER BY n
ON CONFLICT DO NOTHING
"""
_OVERRIDDEN = frozenset(state for state, _cond in OVERRIDES)
_NODE_COLUMNS = (
    f"node, branch, {EFFECTIVE_STATE_SQL}, state, applied, desired, "
    "doc -> 'labels', drift_count, online, last_heard, observed_at, seq, agent_version"
)


class PgNodes(PgDb, IngestStore, NodeQueries):
    """Contracts: :class:`~hub.store.interface.IngestStore` and
    :class:`~hub.store.interface.NodeQueries`."""

    # -- writes ---------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> tuple[int, int]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                inserted = await _write_rows(conn, batch)
        except (*DbErrors, *BindErrors) as err:
            # A value PostgreSQL cannot take must fail the batch, not the ingest task.
            raise StoreError(f"writing a batch of {len(batch)} messages failed: {err}") from err
        return inserted, len(batch.events)

    async def forget_node(self, node: str) -> None:
        await self._write("DELETE FROM nodes WHERE node = $1", (node,), f"forgetting node {node}")

    async def node_seqs(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self._all("SELECT node, seq FROM nodes")}

    async def node_incarnations(self) -> dict[str, str]:
        rows = await self._all(
            "SELECT node, doc ->> 'incarnation' FROM nodes WHERE doc ->> 'incarnation' IS NOT NULL"
        )
        return {r[0]: r[1] for r in rows}

    async def restale(self, stale_after: float) -> None:
        # Only rows whose deadline moves: a restart with the same stale_after writes
        # nothing, instead of a new version of every row (dead tuples, and index-only
        # scans back to reading the table until autovacuum has run).
        window = stale_window_sql("$1::float8", "heartbeat", "greatest")
        await self._write(
            f"UPDATE nodes SET stale_at = last_heard + {window} "  # noqa: S608
            f"WHERE stale_at <> last_heard + {window}",
            (stale_after,),
            "updating stale deadlines",
        )

    async def prune_events(self, before: float, keep: int) -> int:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                old = await conn.execute("DELETE FROM events WHERE received < $1", before)
                over = await conn.execute(
                    "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - $1", keep
                )
        except DbErrors as err:
            raise StoreError(f"pruning events failed: {err}") from err
        return _count(old) + _count(over)

    # -- reads ----------------------------------------------------------------------

    async def state_counts(self, now: float) -> list[StateCount]:
        """One pass over the summary index, grouped by its own columns; each group
        is split by the overrides' counts (as in :mod:`hub.store.nodes`)."""
        rows = await self._named(
            f"SELECT branch, {REPORTED_SQL}, count(*), {OVERRIDE_FILTERS_SQL} "  # noqa: S608
            "FROM nodes GROUP BY branch, online, state",
            {"now": now},
        )
        return fold_state_counts(rows)

    async def label_counts(self, key: str, now: float) -> list[LabelCount]:
        rows = await self._named(
            f"SELECT doc -> 'labels' ->> :key::text AS v, {EFFECTIVE_STATE_SQL} AS st, count(*) "  # noqa: S608
            "FROM nodes GROUP BY v, st",
            {"now": now, "key": key},
        )
        return [LabelCount(v, st, n) for v, st, n in rows]

    async def version_counts(self) -> list[VersionCount]:
        rows = await self._all(
            "SELECT branch, agent_version, count(*) FROM nodes GROUP BY branch, agent_version"
        )
        return [VersionCount(b, v, n) for b, v, n in rows]

    async def stage_nodes(self, branch: str, now: float) -> list[NodeState]:
        rows = await self._named(
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
        total = await self._named(f"SELECT count(*) FROM nodes {where}", params)  # noqa: S608
        rows = await self._named(
            f"SELECT {_NODE_COLUMNS} FROM nodes {where} "  # noqa: S608
            'ORDER BY node COLLATE "C" LIMIT :limit OFFSET :offset',
            {**params, "limit": limit, "offset": offset},
        )
        return int(total[0][0]), [node_row(r) for r in rows]

    async def get_node(self, node: str, now: float) -> NodeDetail | None:
        rows = await self._named(
            f"SELECT {_NODE_COLUMNS}, doc::text, stale_at FROM nodes WHERE node = :node",  # noqa: S608
            {"now": now, "node": node},
        )
        if not rows:
            return None
        *columns, doc, stale_at = rows[0]
        return NodeDetail(node_row(columns), doc, stale_at)

    async def drifted(self, now: float) -> list[DriftedNode]:
        rows = await self._named(
            f"SELECT node, branch, {EFFECTIVE_STATE_SQL}, doc::text FROM nodes "  # noqa: S608
            "WHERE drift_count > 0",
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
        rows = await self._named(
            "SELECT node, seq, at, type, commit_sha, details, received FROM events "  # noqa: S608
            f"{where} ORDER BY id DESC LIMIT :limit",
            params,
        )
        return [EventRow(*r) for r in rows]


async def _write_rows(conn: Any, batch: Batch) -> int:
    # Node order: two replicas' transactions lock shared rows in the same order.
    if batch.statuses:
        # agent_version is a generated column here: StatusRow's last field is no parameter.
        rows = [s[:-1] for s in sorted(batch.statuses, key=lambda s: s.node)]
        await conn.executemany(_UPSERT_STATUS, rows)
    if batch.heartbeats:
        await conn.executemany(_HEARTBEAT, sorted(batch.heartbeats, key=lambda h: h[2]))
    if batch.onlines:
        await conn.executemany(_UPSERT_ONLINE, sorted(batch.onlines, key=lambda o: o[0]))
    if not batch.events:
        return 0
    columns = [list(column) for column in zip(*batch.events, strict=True)]
    return _count(await conn.execute(_INSERT_EVENTS, *columns))


def _count(status: str) -> int:
    """Rows a command touched, from its status tag ("INSERT 0 12", "DELETE 3")."""
    return int(status.rsplit(" ", 1)[-1])


def _node_filter(
    now: float,
    branches: Iterable[str] | None,
    state: str | None,
    labels: dict[str, str] | None,
) -> tuple[str, dict[str, object]]:
    clauses: list[str] = []
    params: dict[str, object] = {"now": now}
    if branches is not None:
        names = list(branches)
        params["branches"] = names
        clauses.append("branch = ANY(:branches::text[])" if names else "branch IS NULL")
    if state is not None:
        clauses.append(f"{EFFECTIVE_STATE_SQL} = :state")
        params["state"] = state
        if state not in _OVERRIDDEN:
            # Not an override: the node reported it. Said again in a form the
            # nodes_by_state index serves, already in the listing's order.
            clauses.append("(state = :state OR state IS NULL)" if state == UNREPORTED
                           else "state = :state")  # fmt: skip
    for i, (key, value) in enumerate((labels or {}).items()):
        clauses.append(f"doc -> 'labels' ->> :lk{i}::text = :lv{i}")
        params[f"lk{i}"] = key
        params[f"lv{i}"] = value
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
