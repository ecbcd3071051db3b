"""``edgefleet-hub migrate``: a SQLite hub's database copied into a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hub.store import AuditRow, Batch, EventRow, HubStore, Pause, StatusRow, Store
from hub.store.pg import PgStore
from hub.store.pgrecipients import read_recipients
from hub.store.recipients import record_recipient
from tests.testbed.hubproc import REPO_ROOT

AGE = "age1" + "q" * 58


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", "migrate", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT,
    )  # fmt: skip


async def fill(store: HubStore, now: float) -> None:
    doc = '{"labels": {"site": "x"}, "incarnation": "life-2"}'
    await store.write_batch(Batch(
        statuses=[StatusRow(f"n{i}", "stable", "synced", 5, "a", "a", 0, 30.0, now, 90.0, now,
                            doc, True) for i in range(25_000)],
        onlines=[("n3", 0, now, 90.0, True), ("bare", 1, now, 90.0, True)],
        events=[EventRow("n1", s, now, "applied", None, "{}", now + s, "life-2")
                for s in range(12_000)],
    ))  # fmt: skip
    for outcome in ("done", "refused"):
        await store.add_audit(AuditRow(now, "promote", "beta", "auto", "a", "b", outcome, False,
                                       "why", "{}"))  # fmt: skip
    await store.set_pause(Pause("beta", "halt", "b", now, "ops", "broken"))
    await store.record_head("beta", "a", now - 10)
    await store.record_head("beta", "b", now)
    await store.set_gate_holding("stable", ("b", now - 60))  # a soak under way
    await store.save_plan("stable", '{"to": "b"}', now)


async def snapshot(store: HubStore, now: float) -> tuple[object, ...]:
    return (
        await store.node_seqs(),
        await store.node_incarnations(),
        sorted((c.branch or "", c.state, c.nodes) for c in await store.state_counts(now)),
        await store.list_nodes(now, labels={"site": "x"}, limit=10),
        await store.get_node("n7", now),
        await store.events(limit=20_000),
        await store.history(),
        await store.pauses(),
        await store.head_history("beta"),
        await store.gate_holding(),
        await store.latest_plans(),
    )


async def test_a_sqlite_hub_is_copied_whole_and_a_second_copy_is_refused(
    tmp_path: Path, pg_database: str
) -> None:
    now = time.time()
    source = await Store.open(tmp_path / "hub.db")
    await fill(source, now)
    expected = await snapshot(source, now)
    await source.close()
    record_recipient(tmp_path / "hub.db", "n1", AGE, "stable", {"site": "x"})

    done = migrate("--from", str(tmp_path / "hub.db"), "--to", pg_database)
    assert done.returncode == 0, done.stderr
    assert "25001 nodes, 12000 events, 2 audit, 1 stage_pause, 2 stage_heads" in done.stdout

    target = await PgStore.open(pg_database)
    try:
        assert await snapshot(target, now) == expected
        enrolled, _reported = await read_recipients(pg_database, None)
        assert enrolled == [("n1", AGE, "stable", '{"site": "x"}')]
        # the next decision continues the audit ids
        audit = AuditRow(now, "resume", "beta", "ops", None, None, "done", False, "ok", "{}")
        assert await target.add_audit(audit) == 3
    finally:
        await target.close()

    again = migrate("--from", str(tmp_path / "hub.db"), "--to", pg_database)
    assert again.returncode == 1
    assert "already holds hub data (25001 nodes" in again.stderr
    assert "refusing to copy into a non-empty database" in again.stderr


async def test_a_hub_that_never_enrolled_a_node_is_copied(tmp_path: Path, pg_database: str) -> None:
    """The recipients table is made by the first enroll: a hub without it copies too."""
    await (await Store.open(tmp_path / "hub.db")).close()
    done = migrate("--from", str(tmp_path / "hub.db"), "--to", pg_database)
    assert done.returncode == 0, done.stderr
    assert "0 enrolled_recipients" in done.stdout


def test_bad_arguments_are_clear_errors(tmp_path: Path, pg_database: str) -> None:
    missing = migrate("--from", str(tmp_path / "nope.db"), "--to", pg_database)
    assert (missing.returncode, missing.stderr.strip()) == (
        2, f"edgefleet-hub: configuration error: migrate: --from: {tmp_path}/nope.db: "
           "no such SQLite database",
    )  # fmt: skip
    (tmp_path / "hub.db").touch()
    not_pg = migrate("--from", str(tmp_path / "hub.db"), "--to", "mysql://x/y")
    assert not_pg.returncode == 2 and "is not a postgresql:// URL" in not_pg.stderr
