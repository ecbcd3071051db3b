"""The PostgreSQL connection pool every PostgreSQL store part shares (asyncpg).

Ingest batches and API reads each take a pooled connection, so a slow query never
holds up a write. TLS follows the URL's ``sslmode`` (and ``sslrootcert``); a CA file
given in ``[hub] database_ca_file`` makes the hub verify the server against it.
Errors leave as :class:`StoreError` naming what failed.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from hub.errors import StoreError
from hub.store.pgschema import migrate
from hub.store.pgurl import redact

POOL_SIZE = 8
"""Connections per hub: ingest holds one at a time, API reads and rollouts the rest."""
_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")

DbErrors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
"""What the driver raises for a failed statement or a lost connection."""
BindErrors = (UnicodeEncodeError, OverflowError, ValueError, TypeError)
"""What the driver raises for a value it cannot send (e.g. a NUL character in text)."""


def positional(sql: str, params: Mapping[str, object]) -> tuple[str, list[object]]:
    """``:name`` placeholders (shared with the SQLite queries) as asyncpg's ``$n``."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    text = _NAMED.sub(number, sql)
    return text, [params[name] for name in order]


class PgDb:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @staticmethod
    async def connect(url: str, ca_file: Path | None = None) -> asyncpg.Pool:
        """A pool on ``url`` with the schema migrated."""
        tls: ssl.SSLContext | None = None
        if ca_file is not None:
            tls = ssl.create_default_context(cafile=str(ca_file))
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=POOL_SIZE, ssl=tls, command_timeout=60
            )
        except (*DbErrors, ssl.SSLError, ValueError) as err:
            raise StoreError(f"cannot open database {redact(url)}: {err}") from err
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException as err:
            await pool.close()
            if isinstance(err, DbErrors):
                raise StoreError(f"cannot migrate database {redact(url)}: {err}") from err
            raise
        return pool

    async def close(self) -> None:
        await self._pool.close()

    async def _all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read; callers turn them into typed rows before they leave."""
        try:
            return [tuple(r) for r in await self._pool.fetch(sql, *params)]
        except (*DbErrors, *BindErrors) as err:
            raise StoreError(f"query failed: {err}") from err

    async def _named(self, sql: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        return await self._all(*positional(sql, params))

    async def _write(self, sql: str, params: Sequence[object], what: str) -> Any:
        """One statement (autocommit); returns its first column's value, if any."""
        try:
            return await self._pool.fetchval(sql, *params)
        except (*DbErrors, *BindErrors) as err:
            raise StoreError(f"{what} failed: {err}") from err

    async def _many(
        self,
        sql: str,
        rows: Sequence[Sequence[object]],
        what: str,
        first: tuple[str, Sequence[object]] | None = None,
    ) -> None:
        """``first`` (a statement and its parameters, if any), then ``sql`` once per
        row: one transaction, all or none."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if first is not None:
                    await conn.execute(first[0], *first[1])
                await conn.executemany(sql, rows)
        except (*DbErrors, *BindErrors) as err:
            raise StoreError(f"{what} failed: {err}") from err
