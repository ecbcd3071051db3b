"""``edgefleet-hub migrate``: copy a SQLite hub's database into PostgreSQL.

Nodes, events, audit, pauses, stage heads, soak clocks, the notification outbox, state
samples, wave runs, latest plans and enrolled age recipients go over in one PostgreSQL
transaction, so an interrupted copy leaves the target empty and can simply be run
again. A target that already holds hub data is refused: merging two fleets' histories
is not a copy. The source is first brought to the current schema (as the upgraded hub
would at start).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from hub.errors import StoreError
from hub.store import Store
from hub.store.pgdb import DbErrors, PgDb
from hub.store.pgurl import redact

_CHUNK = 10_000
Row = tuple[Any, ...]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    order: str
    convert: Callable[[Row], Row] = tuple
    created_on_use: bool = False
    """Not part of the SQLite migrations (made when first written): may be absent."""


def _forced_as_bool(row: Row) -> Row:
    return (*row[:8], bool(row[8]), *row[9:])


TABLES: Final = (
    Table("nodes", ("node", "branch", "state", "seq", "applied", "desired", "drift_count",
                    "online", "heartbeat", "last_heard", "stale_at", "observed_at", "doc"),
          "node"),
    # Event ids are not copied: inserted in id order, they get new ids in the same order.
    Table("events", ("node", "seq", "at", "type", "commit_sha", "details", "received",
                     "incarnation"), "id"),
    Table("audit", ("id", "at", "action", "stage", "who", "from_commit", "to_commit",
                    "outcome", "forced", "reason", "evidence", "on_behalf"), "id",
          _forced_as_bool),
    Table("stage_pause", ("stage", "kind", "commit_sha", "at", "who", "reason"), "stage"),
    Table("stage_heads", ("stage", "commit_sha", "seen_at"), "stage, seen_at"),
    # Outbox ids are not copied either: delivery order is id order, kept as for events.
    Table("notify_outbox", ("event_id", "sink", "body", "created", "attempts", "next_at",
                            "delivered", "last_error"), "id"),
    Table("state_samples", ("at", "state", "nodes"), "at, state"),
    Table("wave_runs", ("stage", "candidate", "origin", "wave", "moved_at", "holding_since",
                        "state", "reason"), "stage"),
    Table("wave_members", ("stage", "node", "wave"), "stage, node"),
    Table("gate_holding", ("stage", "candidate", "since"), "stage"),
    Table("latest_plans", ("stage", "doc", "at"), "stage"),
    Table("enrolled_recipients", ("node", "recipient", "branch", "labels", "enrolled_at"),
          "node", created_on_use=True),
)  # fmt: skip


async def copy_to_postgres(source: Path, url: str, ca_file: Path | None = None) -> dict[str, int]:
    """Copy the existing SQLite file ``source`` into the (empty) database at ``url``;
    returns the rows copied per table."""
    await (await Store.open(source)).close()  # migrated to the current schema
    pool = await PgDb.connect(url, ca_file)
    try:
        async with pool.acquire() as conn:
            return await _copy(source, conn, url)
    except DbErrors as err:
        raise StoreError(f"copying into {redact(url)} failed: {err}") from err
    finally:
        await pool.close()


async def _copy(source: Path, conn: asyncpg.Connection, url: str) -> dict[str, int]:
    copied: dict[str, int] = {}
    async with conn.transaction():
        # Hubs starting on the target meanwhile would write into the copy: keep them out.
        names = ", ".join(t.name for t in TABLES)
        await conn.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
        held = {t.name: await conn.fetchval(f"SELECT count(*) FROM {t.name}") for t in TABLES}  # noqa: S608
        if any(held.values()):
            found = ", ".join(f"{n} {name}" for name, n in held.items() if n)
            raise StoreError(
                f"{redact(url)} already holds hub data ({found}): refusing to copy into a "
                "non-empty database; give an empty one"
            )
        for table in TABLES:
            copied[table.name] = 0
            for chunk in _read(source, table):
                await conn.copy_records_to_table(table.name, records=chunk, columns=table.columns)
                copied[table.name] += len(chunk)
        # Audit ids were copied: the next one continues after them.
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('audit', 'id'), coalesce(max(id), 0) + 1, false) "
            "FROM audit"
        )
    return copied


def _read(source: Path, table: Table) -> Iterator[list[Row]]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db:
            cur = db.execute(
                f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {table.order}"  # noqa: S608
            )
            while rows := cur.fetchmany(_CHUNK):
                yield [table.convert(r) for r in rows]
    except sqlite3.Error as err:
        if table.created_on_use and "no such table" in str(err):
            return  # nothing was ever written to it
        raise StoreError(f"reading {table.name} from {source} failed: {err}") from err
