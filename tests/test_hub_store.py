"""The store on a real SQLite file and a real PostgreSQL database: migrations,
ordering rules, retention (tests marked ``both_backends`` run on each)."""

from __future__ import annotations

import ast
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from common import wire
from hub.errors import StoreError
from hub.states import ALL_STATES
from hub.store import AuditRow, Batch, EventRow, HubStore, Pause, StatusRow, Store
from hub.store.outbox import OutboxItem
from hub.store.pg import PgStore
from hub.store.pgschema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from hub.store.samples import StateSample
from hub.store.schema import MIGRATIONS, SCHEMA_VERSION
from hub.store.waves import ROLLING, WaveRun
from tests.testbed.hubproc import HubProc
from tests.testbed.postgres import Postgres


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
        # 4: audit on_behalf, notification outbox, state samples, 5: wave runs,
        # 6: agent version column, 7: soak clocks, 8: latest plans)
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (8,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("INSERT INTO schema_version VALUES (99)")
        conn.commit()
    with pytest.raises(StoreError, match="newer"):
        await Store.open(db)


@pytest.mark.both_backends
async def test_effective_states_and_offline_override(any_store: HubStore) -> None:
    store = any_store
    now = time.time()
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


@pytest.mark.both_backends
async def test_event_dedup_and_retention(any_store: HubStore) -> None:
    store = any_store
    now = time.time()
    inserted, seen = await store.write_batch(
        Batch(events=[event("n", s, now - 100 + s) for s in (1, 2, 2, 3)])
    )
    assert (inserted, seen) == (3, 4)
    assert await store.prune_events(before=now - 98.5, keep=10) == 1  # seq 1 too old
    for seq in range(4, 20):
        await store.write_batch(Batch(events=[event("n", seq, now)]))
    assert await store.prune_events(before=0, keep=5) == 13
    assert [r.seq for r in await store.events(node="n")] == [19, 18, 17, 16, 15]


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


@pytest.mark.both_backends
async def test_summary_counts_and_state_filter_apply_the_same_rule(any_store: HubStore) -> None:
    """The summary folds per-override counts; listings filter with the SQL CASE: both
    come from states.OVERRIDES and must put every node in the same state."""
    store = any_store
    now = time.time()
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


async def test_postgres_schema_migrated_once_and_newer_schema_refused(
    postgres: Postgres, pg_database: str
) -> None:
    store = await PgStore.open(pg_database)
    await store.write_batch(Batch(statuses=[row("n1", 1, "synced", time.time())]))
    await store.close()
    store = await PgStore.open(pg_database)  # reopening keeps data, runs no migration twice
    assert await store.node_seqs() == {"n1": 1}
    await store.close()
    database = pg_database.rsplit("/", 1)[1]
    count = postgres.psql("SELECT count(*) FROM schema_version", database).strip()
    assert count == str(PG_SCHEMA_VERSION) == "6"
    postgres.psql("INSERT INTO schema_version VALUES (99)", database)
    with pytest.raises(StoreError, match="newer"):
        await PgStore.open(pg_database)


async def test_postgres_restale_rewrites_only_rows_whose_deadline_moves(
    postgres: Postgres, pg_database: str
) -> None:
    store = await PgStore.open(pg_database)
    now = time.time()
    await store.write_batch(Batch(statuses=[row("n1", 1, "synced", now),
                                            row("n2", 1, "synced", now - 120)]))  # fmt: skip
    database = pg_database.rsplit("/", 1)[1]
    written = postgres.psql("SELECT node, xmin FROM nodes ORDER BY node", database)
    try:
        await store.restale(90.0)  # the window the rows were written with: nothing moves
        assert postgres.psql("SELECT node, xmin FROM nodes ORDER BY node", database) == written
        await store.restale(150.0)  # n2, heard 120 s ago, is fresh again
        assert {(c.state, c.nodes) for c in await store.state_counts(now)} == {("synced", 2)}
        assert postgres.psql("SELECT node, xmin FROM nodes ORDER BY node", database) != written
    finally:
        await store.close()


async def test_sqlite_restale_writes_only_rows_whose_deadline_moves(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "hub.db")
    now = time.time()
    await store.write_batch(Batch(statuses=[row("n1", 1, "synced", now),
                                            row("n2", 1, "synced", now - 120)]))  # fmt: skip
    # data_version moves when another connection changed the file
    with contextlib.closing(sqlite3.connect(tmp_path / "hub.db")) as watcher:
        before = watcher.execute("PRAGMA data_version").fetchone()
        try:
            await store.restale(90.0)  # the window the rows were written with
            assert watcher.execute("PRAGMA data_version").fetchone() == before
            await store.restale(150.0)  # n2, heard 120 s ago, is fresh again
            assert {(c.state, c.nodes) for c in await store.state_counts(now)} == {("synced", 2)}
            assert watcher.execute("PRAGMA data_version").fetchone() != before
        finally:
            await store.close()


async def test_postgres_unreachable_is_a_clear_error(postgres: Postgres) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{postgres.port}/no_such_db"
    with pytest.raises(StoreError, match="cannot open database") as err:
        await PgStore.open(url)
    assert "hunter2" not in str(err.value)


@pytest.mark.both_backends
async def test_rollout_records_round_trip(any_store: HubStore) -> None:
    store = any_store
    audit = AuditRow(1.0, "promote", "beta", "auto", "a" * 40, "b" * 40, "done", True, "ok", "{}")
    first = await store.add_audit(audit._replace(on_behalf="cli:alice"))
    assert await store.add_audit(audit._replace(outcome="refused")) == first + 1
    history = await store.history("beta")
    assert [(e.row.outcome, e.row.on_behalf) for e in history] == [
        ("refused", None),
        ("done", "cli:alice"),
    ]
    assert await store.promotion_origin("beta", "b" * 40) == "a" * 40
    await store.set_pause(Pause("beta", "halt", None, 1.0, "auto", "why"))
    await store.set_pause(Pause("beta", "rollback", "c" * 40, 2.0, "ops", "again"))
    assert await store.pauses() == {
        "beta": Pause("beta", "rollback", "c" * 40, 2.0, "ops", "again")
    }
    await store.clear_pause("beta")
    assert await store.pauses() == {}
    for at, commit in ((1.0, "x"), (2.0, "y"), (3.0, "x")):
        await store.record_head("beta", commit, at)  # a head seen again keeps its first time
    assert await store.head_history("beta") == ["y", "x"]


@pytest.mark.both_backends
async def test_outbox_samples_waves_and_plans_round_trip(any_store: HubStore) -> None:
    store = any_store
    await store.outbox_add([OutboxItem("e1", "chat", "one", 1.0, 1.0),
                            OutboxItem("e2", "chat", "two", 2.0, 2.0),
                            OutboxItem("e1", "ops", "one", 1.0, 5.0)])  # fmt: skip
    due = await store.outbox_due(3.0, ["chat", "ops"], 10)
    assert [(e.item.event_id, e.item.sink) for e in due] == [("e1", "chat"), ("e2", "chat")]
    await store.outbox_retry(due[0].id, 9.0, "HTTP 503")
    await store.outbox_delivered(due[1].id, 3.0)
    assert await store.outbox_due(6.0, ["chat", "ops"], 10) != []
    again = await store.outbox_due(9.0, ["chat"], 10)
    assert [(e.item.body, e.attempts) for e in again] == [("one", 1)]
    assert await store.outbox_prune(1.5) == 2
    assert await store.outbox_due(9.0, ["chat", "ops"], 10) == []

    await store.add_sample(10.0, {"synced": 3, "failed": 0})
    await store.add_sample(20.0, {})
    assert await store.samples(0.0) == [StateSample(10.0, {"synced": 3}), StateSample(20.0, {})]
    await store.prune_samples(15.0)
    assert await store.samples(0.0) == [StateSample(20.0, {})]

    run = WaveRun("beta", "c" * 40, None, 0, 1.0, None, ROLLING, "wave w1")
    await store.save_wave_run(run)
    await store.save_wave_run(replace(run, holding_since=2.0))
    assert await store.wave_run("beta") == replace(run, holding_since=2.0)
    assert await store.wave_run("stable") is None
    await store.set_wave_members("beta", {"n1": "w1", "n2": "w2"})
    await store.set_wave_members("beta", {"n3": "w1"})
    assert await store.wave_members("beta") == {"n3": "w1"}

    assert await store.latest_plans() == {}
    await store.save_plan("beta", '{"to": "a"}', 1.0)
    await store.save_plan("stable", '{"to": "b"}', 1.0)
    await store.save_plan("beta", '{"to": "c"}', 2.0)  # a new plan replaces the stage's last
    assert await store.latest_plans() == {"beta": '{"to": "c"}', "stable": '{"to": "b"}'}


@pytest.mark.both_backends
async def test_versions_counted_and_a_forgotten_node_gone(any_store: HubStore) -> None:
    store = any_store
    now = time.time()
    versioned = row("v1", 1, "synced", now)._replace(
        doc='{"version": "1.4.0"}', agent_version="1.4.0"
    )
    await store.write_batch(Batch(statuses=[versioned, row("old", 1, "synced", now)]))
    counts = {(c.branch, c.version): c.nodes for c in await store.version_counts()}
    assert counts == {("stable", "1.4.0"): 1, ("stable", None): 1}
    assert [n.version for n in await store.stage_nodes("stable", now)].count("1.4.0") == 1
    await store.forget_node("v1")
    assert await store.get_node("v1", now) is None
    assert await store.get_node("old", now) is not None


_DRIVERS = ("sqlite3", "aiosqlite", "asyncpg")


def test_only_the_store_touches_a_database_driver() -> None:
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


async def test_a_second_store_on_one_sqlite_file_is_refused_with_the_holders_pid(
    tmp_path: Path,
) -> None:
    first = await Store.open(tmp_path / "hub.db")
    try:
        with pytest.raises(StoreError) as err:
            await Store.open(tmp_path / "hub.db")
        assert str(err.value) == (
            f"{tmp_path}/hub.db is in use by hub pid {os.getpid()} (lock {tmp_path}/hub.db.lock): "
            "one hub per SQLite database; several hubs need a PostgreSQL database"
        )
    finally:
        await first.close()
    await (await Store.open(tmp_path / "hub.db")).close()  # released at close


def test_a_second_hub_process_on_one_sqlite_file_exits_with_a_clear_error(
    hub_factory: Callable[..., HubProc],
) -> None:
    first = hub_factory()
    second = hub_factory(start=False, database=str(first.directory / "hub.db"))
    second.start(wait=False)
    assert second.proc is not None and second.proc.wait(30) == 1
    assert f"hub.db is in use by hub pid {first.proc.pid}" in second.log_text()
    assert first.try_get("/api/v1/health").get("mqtt") == "connected"
