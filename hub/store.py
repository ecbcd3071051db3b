"""SQLite persistence for the hub (aiosqlite, WAL): one writer connection, one reader.

The writer only runs :meth:`Store.write_batch` (one transaction per ingest batch, each
statement an ``executemany``) and housekeeping; API reads go through the reader so a
slow query never delays ingest. The schema is versioned (``schema_version``) and
migrated forward on open.

A node's effective state is computed in SQL from stored columns: ``online = 0`` ->
offline, ``stale_at < now`` -> stale, else what it reported (``progressing`` before its
first status). ``stale_at`` is precomputed at write time (last heard + the node's
stale window) so the summary is one pass over a covering index. SQL is assembled only
from constant fragments (hence the S608 noqa markers); every value is bound.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

from hub.errors import StoreError

EFFECTIVE_STATE = (
    "CASE WHEN online = 0 THEN 'offline' WHEN stale_at < :now THEN 'stale' "
    "ELSE coalesce(state, 'progressing') END"
)

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE nodes (
            node TEXT PRIMARY KEY,
            branch TEXT,
            state TEXT,
            seq INTEGER NOT NULL DEFAULT -1,
            applied TEXT,
            desired TEXT,
            drift_count INTEGER NOT NULL DEFAULT 0,
            online INTEGER NOT NULL DEFAULT 1,
            heartbeat REAL NOT NULL DEFAULT 0,
            last_heard REAL NOT NULL,
            stale_at REAL NOT NULL,
            observed_at REAL,
            doc TEXT
        ) WITHOUT ROWID""",
        # Covering index: the summary groups by branch and effective state from it alone.
        "CREATE INDEX nodes_summary ON nodes(branch, online, state, stale_at)",
        "CREATE INDEX nodes_drifted ON nodes(node) WHERE drift_count > 0",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            node TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at REAL,
            type TEXT NOT NULL,
            commit_sha TEXT,
            details TEXT NOT NULL,
            received REAL NOT NULL,
            UNIQUE (node, seq)
        )""",
        "CREATE INDEX events_node ON events(node, id)",
        "CREATE INDEX events_type ON events(type, id)",
        "CREATE INDEX events_received ON events(received)",
    ),
    (
        # Rollout audit: every promotion, halt, rollback and resume, refused ones too.
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            action TEXT NOT NULL,
            stage TEXT NOT NULL,
            who TEXT NOT NULL,
            from_commit TEXT,
            to_commit TEXT,
            outcome TEXT NOT NULL,
            forced INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL,
            evidence TEXT NOT NULL
        )""",
        "CREATE INDEX audit_stage ON audit(stage, id)",
        # A paused stage takes no automatic promotions; a halt also blocks downstream.
        """CREATE TABLE stage_pause (
            stage TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            commit_sha TEXT,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
        # Heads each stage branch had, to find "the previous commit" for a rollback.
        """CREATE TABLE stage_heads (
            stage TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (stage, commit_sha)
        )""",
    ),
)

_NODE_COLUMNS = (
    "node, branch, state, seq, applied, desired, drift_count, online, heartbeat, "
    "last_heard, stale_at, observed_at, doc"
)
_UPSERT_STATUS = f"""
INSERT INTO nodes ({_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)
ON CONFLICT(node) DO UPDATE SET
    branch = excluded.branch, state = excluded.state, seq = excluded.seq,
    applied = excluded.applied, desired = excluded.desired,
    drift_count = excluded.drift_count, heartbeat = excluded.heartbeat,
    observed_at = excluded.observed_at, doc = excluded.doc,
    online = CASE WHEN ? THEN 1 ELSE nodes.online END,
    last_heard = max(nodes.last_heard, excluded.last_heard),
    stale_at = max(nodes.last_heard, excluded.last_heard)
        + (excluded.stale_at - excluded.last_heard)
"""  # noqa: S608
_HEARTBEAT = """
UPDATE nodes SET online = 1, last_heard = max(last_heard, ?1),
    stale_at = max(last_heard, ?1) + max(?2, 3 * heartbeat)
WHERE node = ?3
"""
_UPSERT_ONLINE = """
INSERT INTO nodes (node, online, last_heard, stale_at) VALUES (?1, ?2, ?3, ?3 + ?4)
ON CONFLICT(node) DO UPDATE SET online = excluded.online,
    last_heard = CASE WHEN ?5 THEN max(nodes.last_heard, ?3) ELSE nodes.last_heard END,
    stale_at = CASE WHEN ?5 THEN max(nodes.last_heard, ?3) + max(?4, 3 * nodes.heartbeat)
        ELSE nodes.stale_at END
"""
_INSERT_EVENT = """
INSERT OR IGNORE INTO events (node, seq, at, type, commit_sha, details, received)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""


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
    stale_at: float
    observed_at: float | None
    doc: str
    live: bool
    """False for a retained message replayed by the broker (it proves nothing about now)."""


class EventRow(NamedTuple):
    """One event; fields in SQL parameter order."""

    node: str
    seq: int
    at: float | None
    type: str
    commit: str | None
    details: str
    received: float


@dataclass
class Batch:
    statuses: list[StatusRow] = field(default_factory=list)
    heartbeats: list[tuple[float, float, str]] = field(default_factory=list)
    """(heard at, stale_after, node): a re-published status with the stored seq."""
    onlines: list[tuple[str, int, float, float, bool]] = field(default_factory=list)
    """(node, online, heard at, stale_after, live)."""
    events: list[EventRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.statuses) + len(self.heartbeats) + len(self.onlines) + len(self.events)


class AuditRow(NamedTuple):
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


class Pause(NamedTuple):
    stage: str
    kind: str
    """halt (blocks the stage and its downstream) | rollback (blocks the stage)"""
    commit: str | None
    at: float
    who: str
    reason: str


class Store:
    """Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._w = writer
        self._r = reader
        # Ingest runs multi-statement transactions on the writer; rollout writes wait.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        opened: list[aiosqlite.Connection] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = await aiosqlite.connect(path, isolation_level=None)
            opened.append(writer)
            await writer.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a committed batch survives a hub crash; only an OS crash
            # can lose the last transactions (the broker still holds unacked ones).
            await writer.execute("PRAGMA synchronous=NORMAL")
            await writer.execute("PRAGMA busy_timeout=5000")
            await _migrate(writer)
            reader = await aiosqlite.connect(path, isolation_level=None)
            opened.append(reader)
            await reader.execute("PRAGMA busy_timeout=5000")
            await reader.execute("PRAGMA query_only=ON")
            reader.row_factory = sqlite3.Row
        except (sqlite3.Error, OSError, StoreError) as err:
            for conn in opened:
                await conn.close()
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"cannot open database {path}: {err}") from err
        return cls(writer, reader)

    async def close(self) -> None:
        await self._r.close()
        await self._w.close()

    # -- writer ---------------------------------------------------------------------

    async def write_batch(self, batch: Batch) -> tuple[int, int]:
        """Commit one batch in one transaction; returns (events inserted, events seen)."""
        async with self._write_lock:
            return await self._write_batch(batch)

    async def _write_batch(self, batch: Batch) -> tuple[int, int]:
        try:
            await self._w.execute("BEGIN")
            try:
                if batch.statuses:
                    await self._w.executemany(_UPSERT_STATUS, batch.statuses)
                if batch.heartbeats:
                    await self._w.executemany(_HEARTBEAT, batch.heartbeats)
                if batch.onlines:
                    await self._w.executemany(_UPSERT_ONLINE, batch.onlines)
                inserted = 0
                if batch.events:
                    cur = await self._w.executemany(_INSERT_EVENT, batch.events)
                    inserted = max(cur.rowcount, 0)
                await self._w.execute("COMMIT")
            except BaseException:
                await self._w.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OverflowError, UnicodeEncodeError) as err:
            # A value SQLite cannot bind must fail the batch, not the ingest task.
            raise StoreError(f"writing a batch of {len(batch)} messages failed: {err}") from err
        return inserted, len(batch.events)

    async def node_seqs(self) -> dict[str, int]:
        """Last stored status seq per node (ingest keeps this in memory)."""
        async with self._w.execute("SELECT node, seq FROM nodes") as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def restale(self, stale_after: float) -> None:
        """Recompute stale deadlines after a config change (stale_after may differ)."""
        try:
            await self._w.execute(
                "UPDATE nodes SET stale_at = last_heard + max(?, 3 * heartbeat)", (stale_after,)
            )
        except sqlite3.Error as err:
            raise StoreError(f"updating stale deadlines failed: {err}") from err

    async def prune_events(self, before: float, keep: int) -> int:
        """Delete events received before ``before`` and all but the newest ``keep``."""
        try:
            cur = await self._w.execute("DELETE FROM events WHERE received < ?", (before,))
            removed = max(cur.rowcount, 0)
            cur = await self._w.execute(
                "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (keep,)
            )
            return removed + max(cur.rowcount, 0)
        except sqlite3.Error as err:
            raise StoreError(f"pruning events failed: {err}") from err

    async def _write(self, sql: str, params: Sequence[Any], what: str) -> int:
        async with self._write_lock:
            try:
                cur = await self._w.execute(sql, params)
            except sqlite3.Error as err:
                raise StoreError(f"{what} failed: {err}") from err
            return int(cur.lastrowid or 0)

    async def add_audit(self, row: AuditRow) -> int:
        return await self._write(
            "INSERT INTO audit (at, action, stage, who, from_commit, to_commit, outcome, "
            "forced, reason, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
            "writing the audit log",
        )

    async def set_pause(self, pause: Pause) -> None:
        await self._write(
            "INSERT OR REPLACE INTO stage_pause (stage, kind, commit_sha, at, who, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            pause,
            f"pausing stage {pause.stage}",
        )

    async def clear_pause(self, stage: str) -> None:
        await self._write(
            "DELETE FROM stage_pause WHERE stage = ?", (stage,), f"resuming stage {stage}"
        )

    async def record_head(self, stage: str, commit: str, at: float) -> None:
        """Remember that ``stage`` had ``commit`` (first sighting wins)."""
        await self._write(
            "INSERT OR IGNORE INTO stage_heads (stage, commit_sha, seen_at) VALUES (?, ?, ?)",
            (stage, commit, at),
            f"recording the head of {stage}",
        )

    # -- reader ---------------------------------------------------------------------

    async def pauses(self) -> dict[str, Pause]:
        rows = await self._all("SELECT stage, kind, commit_sha, at, who, reason FROM stage_pause")
        return {r[0]: Pause(*r) for r in rows}

    async def head_history(self, stage: str) -> list[str]:
        """Commits the stage branch pointed at, newest first."""
        rows = await self._all(
            "SELECT commit_sha FROM stage_heads WHERE stage = ? ORDER BY seen_at DESC",
            (stage,),
        )
        return [r[0] for r in rows]

    async def last_promotion(self, stage: str, to_commit: str) -> sqlite3.Row | None:
        rows = await self._all(
            "SELECT from_commit, to_commit, at FROM audit WHERE stage = ? AND to_commit = ? "
            "AND action = 'promote' AND outcome = 'done' ORDER BY id DESC LIMIT 1",
            (stage, to_commit),
        )
        return rows[0] if rows else None

    async def history(self, stage: str | None = None, limit: int = 100) -> list[sqlite3.Row]:
        where = "WHERE stage = :stage" if stage is not None else ""
        return await self._all(
            "SELECT id, at, action, stage, who, from_commit, to_commit, outcome, forced, "  # noqa: S608
            f"reason, evidence FROM audit {where} ORDER BY id DESC LIMIT :limit",
            {"stage": stage, "limit": limit},
        )

    async def stage_nodes(self, branch: str, now: float) -> list[sqlite3.Row]:
        """Every node of one branch: effective and reported state, applied, desired."""
        return await self._all(
            f"SELECT node, {EFFECTIVE_STATE} AS effective, state, applied, desired, "  # noqa: S608
            "json_extract(doc, '$.version') AS version FROM nodes WHERE branch = :branch",
            {"now": now, "branch": branch},
        )

    async def _all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        try:
            async with self._r.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as err:
            raise StoreError(f"query failed: {err}") from err

    async def state_counts(self, now: float) -> list[tuple[str | None, str, int]]:
        """(branch, effective state, nodes) for every combination present.

        Grouped by the covering index's own columns so SQLite streams through it
        without a temporary B-tree; the effective state is folded in here.
        """
        rows = await self._all(
            "SELECT branch, online, state, count(*), sum(stale_at < :now) FROM nodes "
            "GROUP BY branch, online, state",
            {"now": now},
        )
        counts: dict[tuple[str | None, str], int] = {}
        for branch, online, state, n, stale in rows:
            if not online:
                parts = [("offline", n)]
            else:
                parts = [("stale", stale), (state or "progressing", n - stale)]
            for effective, count in parts:
                if count:
                    key = (branch, effective)
                    counts[key] = counts.get(key, 0) + count
        return [(b, s, n) for (b, s), n in counts.items()]

    async def version_counts(self) -> list[tuple[str | None, str | None, int]]:
        """(branch, agent version, nodes): which agent versions each stage runs."""
        rows = await self._all(
            "SELECT branch, json_extract(doc, '$.version') AS v, count(*) FROM nodes "
            "GROUP BY branch, v"
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def label_counts(self, key: str, now: float) -> list[tuple[str | None, str, int]]:
        """(label value, effective state, nodes) for one label key."""
        rows = await self._all(
            f"SELECT json_extract(doc, :path) AS v, {EFFECTIVE_STATE} AS st, count(*) "  # noqa: S608
            "FROM nodes GROUP BY v, st",
            {"now": now, "path": _json_path(key)},
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def list_nodes(
        self,
        now: float,
        branches: Iterable[str] | None = None,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[sqlite3.Row]]:
        where, params = _node_filter(now, branches, state, labels)
        total = await self._all(f"SELECT count(*) FROM nodes {where}", params)  # noqa: S608
        rows = await self._all(
            f"SELECT node, branch, {EFFECTIVE_STATE} AS effective, state, applied, desired, "  # noqa: S608
            "json_extract(doc, '$.labels') AS labels, drift_count, online, last_heard, "
            "json_extract(doc, '$.version') AS version, "
            f"observed_at, seq FROM nodes {where} "
            "ORDER BY node LIMIT :limit OFFSET :offset",
            {**params, "limit": limit, "offset": offset},
        )
        return int(total[0][0]), rows

    async def get_node(self, node: str, now: float) -> sqlite3.Row | None:
        rows = await self._all(
            f"SELECT node, branch, {EFFECTIVE_STATE} AS effective, state, applied, desired, "  # noqa: S608
            "json_extract(doc, '$.labels') AS labels, drift_count, online, last_heard, "
            "observed_at, seq, doc, stale_at, json_extract(doc, '$.version') AS version "
            "FROM nodes WHERE node = :node",
            {"now": now, "node": node},
        )
        return rows[0] if rows else None

    async def drifted(self, now: float) -> list[tuple[str, str | None, str, str]]:
        """(node, branch, effective state, status doc) of nodes that reported drift."""
        rows = await self._all(
            f"SELECT node, branch, {EFFECTIVE_STATE}, doc FROM nodes WHERE drift_count > 0",  # noqa: S608
            {"now": now},
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def events(
        self,
        node: str | None = None,
        type_: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[sqlite3.Row]:
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        for column, value in (("node", node), ("type", type_)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if since is not None:
            clauses.append("at >= :since")
            params["since"] = since
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._all(
            "SELECT node, seq, at, type, commit_sha, details, received FROM events "  # noqa: S608
            f"{where} ORDER BY id DESC LIMIT :limit",
            params,
        )


def _json_path(key: str) -> str:
    """Path of one label in the stored status document."""
    return '$.labels."' + key.replace('"', "") + '"'


def _node_filter(
    now: float,
    branches: Iterable[str] | None,
    state: str | None,
    labels: dict[str, str] | None,
) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {"now": now}
    if branches is not None:
        names = []
        for i, b in enumerate(branches):
            params[f"b{i}"] = b
            names.append(f":b{i}")
        clauses.append(f"branch IN ({', '.join(names)})" if names else "branch IS NULL")
    if state is not None:
        clauses.append(f"{EFFECTIVE_STATE} = :state")
        params["state"] = state
    for i, (key, value) in enumerate((labels or {}).items()):
        clauses.append(f"json_extract(doc, :lk{i}) = :lv{i}")
        params[f"lk{i}"] = _json_path(key)
        params[f"lv{i}"] = value
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


async def _migrate(db: aiosqlite.Connection) -> None:
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    async with db.execute("SELECT max(version) FROM schema_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    if current > len(_MIGRATIONS):
        raise StoreError(
            f"database schema version {current} is newer than this hub ({len(_MIGRATIONS)})"
        )
    for version in range(current + 1, len(_MIGRATIONS) + 1):
        await db.execute("BEGIN")
        try:
            for statement in _MIGRATIONS[version - 1]:
                await db.execute(statement)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
