"""The SQLite store on a real file: migrations, ordering rules, retention."""

from __future__ import annotations

import ast
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from common import wire
from hub.errors import StoreError
from hub.states import ALL_STATES
from hub.store import Batch, EventRow, Pause, StatusRow, Store
from hub.store.schema import MIGRATIONS, SCHEMA_VERSION


def row(node: str, seq: int, state: str, heard: float, live: bool = True) -> StatusRow:
    return StatusRow(node, "stable", state, seq, "a", "a", 0, 0.0, heard, 90.0, heard,
                     '{"labels": {"site": "x"}}', live)  # fmt: skip


def event(node: str, seq: int, received: float) -> EventRow:
    return EventRow(node, seq, received, "applied", None, "{}", received)


async def test_schema_migrated_once_and_newer_schema_refused(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    store = await Store.open(db)
    await store.write_batch(Batch(statuses=[row("n1", 1, "synced", time.time())]))
    await store.close()
    store = await Store.open(db)  # reopening keeps data, runs no migration twice
    assert await store.node_seqs() == {"n1": 1}
    await store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        # one schema_version row per migration (2: rollout audit, 3: event incarnation,
        # 4: audit on_behalf, notification outbox, state samples, 5: wave runs)
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (5,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("INSERT INTO schema_version VALUES (99)")
        conn.commit()
    with pytest.raises(StoreError, match="newer"):
        await Store.open(db)


async def test_effective_states_and_offline_override(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "hub.db")
    now = time.time()
    try:
        await store.write_batch(Batch(statuses=[
            row("fresh", 1, "synced", now), row("old", 1, "synced", now - 1000),
            row("down", 1, "failed", now),
        ], onlines=[("down", 0, now, 90.0, False), ("new", 1, now, 90.0, True)]))  # fmt: skip
        counts = {(c.branch, c.state): c.nodes for c in await store.state_counts(now)}
        assert counts == {("stable", "synced"): 1, ("stable", "stale"): 1,
                          ("stable", "offline"): 1, (None, "progressing"): 1}  # fmt: skip
        # a heartbeat (same seq) revives the stale node
        await store.write_batch(Batch(heartbeats=[(now, 90.0, "old")]))
        counts = {(c.branch, c.state): c.nodes for c in await store.state_counts(now)}
        assert counts[("stable", "synced")] == 2
        total, rows = await store.list_nodes(now, labels={"site": "x"})
        assert total == 3 and rows[0].node == "down" and rows[0].labels == {"site": "x"}
    finally:
        await store.close()


async def test_event_dedup_and_retention(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "hub.db")
    now = time.time()
    try:
        inserted, seen = await store.write_batch(
            Batch(events=[event("n", s, now - 100 + s) for s in (1, 2, 2, 3)])
        )
        assert (inserted, seen) == (3, 4)
        assert await store.prune_events(before=now - 98.5, keep=10) == 1  # seq 1 too old
        for seq in range(4, 20):
            await store.write_batch(Batch(events=[event("n", seq, now)]))
        assert await store.prune_events(before=0, keep=5) == 13
        assert [r.seq for r in await store.events(node="n")] == [19, 18, 17, 16, 15]
    finally:
        await store.close()


async def test_a_version_1_database_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(
            "INSERT INTO nodes (node, state, seq, last_heard, stale_at) "
            "VALUES ('kept', 'synced', 3, 0, 0)"
        )
        conn.commit()
    store = await Store.open(db)
    try:
        assert await store.node_seqs() == {"kept": 3}
        await store.set_pause(Pause("beta", "halt", None, 1.0, "auto", "why"))
        assert await store.pauses() == {"beta": Pause("beta", "halt", None, 1.0, "auto", "why")}
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_summary_counts_and_state_filter_apply_the_same_rule(tmp_path: Path) -> None:
    """The summary folds per-override counts; listings filter with the SQL CASE: both
    come from states.OVERRIDES and must put every node in the same state."""
    store = await Store.open(tmp_path / "hub.db")
    now = time.time()
    try:
        await store.write_batch(Batch(
            statuses=[row(f"n{i}", 1, wire.STATES[i % len(wire.STATES)], now - 500 * (i % 3))
                      for i in range(30)],
            # offline and stale at once: offline wins; online without status: progressing
            onlines=[("n1", 0, now, 90.0, False), ("n2", 0, now, 90.0, False),
                     ("fresh", 1, now, 90.0, True), ("gone", 1, now - 900, 90.0, True)],
        ))  # fmt: skip
        summed = dict.fromkeys(ALL_STATES, 0)
        for count in await store.state_counts(now):
            summed[count.state] += count.nodes
        for state in ALL_STATES:
            total, rows = await store.list_nodes(now, state=state, limit=1000)
            assert total == summed[state], state
            assert all(r.state == state for r in rows)
        assert summed["offline"] == 2 and summed["stale"] > 0 and sum(summed.values()) == 32
    finally:
        await store.close()


_DRIVERS = ("sqlite3", "aiosqlite")


def test_only_the_store_touches_sqlite() -> None:
    """Rows leave the store typed: no other hub module may import the database driver."""
    hub = Path(__file__).resolve().parents[1] / "hub"
    offenders = []
    for path in hub.rglob("*.py"):
        if path.is_relative_to(hub / "store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in _DRIVERS]
    assert offenders == []
