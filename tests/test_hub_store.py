"""The SQLite store on a real file: migrations, ordering rules, retention."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from hub.errors import StoreError
from hub.store import Batch, EventRow, StatusRow, Store


def row(node: str, seq: int, state: str, heard: float, live: bool = True) -> StatusRow:
    return StatusRow(node, "stable", state, seq, "a", "a", 0, 0.0, heard, heard + 90, heard,
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
        # one schema_version row per migration (2: rollout audit, 3: event incarnation)
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (3,)
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
        counts = {(b, s): n for b, s, n in await store.state_counts(now)}
        assert counts == {("stable", "synced"): 1, ("stable", "stale"): 1,
                          ("stable", "offline"): 1, (None, "progressing"): 1}  # fmt: skip
        # a heartbeat (same seq) revives the stale node
        await store.write_batch(Batch(heartbeats=[(now, 90.0, "old")]))
        counts = {(b, s): n for b, s, n in await store.state_counts(now)}
        assert counts[("stable", "synced")] == 2
        total, rows = await store.list_nodes(now, labels={"site": "x"})
        assert total == 3 and rows[0]["node"] == "down"
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
        assert [r["seq"] for r in await store.events(node="n")] == [19, 18, 17, 16, 15]
    finally:
        await store.close()
