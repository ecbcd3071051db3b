"""The two SQLite connections every store part shares (aiosqlite, WAL).

The writer runs ingest batches, housekeeping and rollout records under one lock; API
reads go through the query-only reader so a slow query never delays ingest. Errors
leave as :class:`StoreError` naming what failed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from hub.errors import StoreError
from hub.store.schema import migrate

Params = Sequence[object] | Mapping[str, object]


class Db:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._w = writer
        self._r = reader
        # Ingest runs multi-statement transactions on the writer; rollout writes wait.
        self._write_lock = asyncio.Lock()

    @staticmethod
    async def connect(path: Path) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        """Open (creating and migrating) the database: (writer, reader)."""
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
            await migrate(writer)
            reader = await aiosqlite.connect(path, isolation_level=None)
            opened.append(reader)
            await reader.execute("PRAGMA busy_timeout=5000")
            await reader.execute("PRAGMA query_only=ON")
        except (sqlite3.Error, OSError, StoreError) as err:
            for conn in opened:
                await conn.close()
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"cannot open database {path}: {err}") from err
        return writer, reader

    async def close(self) -> None:
        await self._r.close()
        await self._w.close()

    async def _all(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Rows of a read; callers turn them into typed rows before they leave."""
        try:
            async with self._r.execute(sql, params) as cur:
                return [tuple(row) for row in await cur.fetchall()]
        except sqlite3.Error as err:
            raise StoreError(f"query failed: {err}") from err

    async def _write(self, sql: str, params: Params, what: str) -> int:
        """One statement on the writer (autocommit); returns the last row id."""
        async with self._write_lock:
            try:
                cur = await self._w.execute(sql, params)
            except sqlite3.Error as err:
                raise StoreError(f"{what} failed: {err}") from err
            return int(cur.lastrowid or 0)

    async def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already (it rolls back by
        itself on SQLITE_FULL and similar): a second ROLLBACK would raise and hide the
        real error."""
        if self._w.in_transaction:
            await self._w.execute("ROLLBACK")
