"""Opens the store the configuration names: SQLite (a file) or PostgreSQL (a URL)."""

from __future__ import annotations

from pathlib import Path

from hub.store import Store
from hub.store.interface import HubStore
from hub.store.pgurl import postgres_driver


async def open_store(
    database: Path, url: str | None = None, ca_file: Path | None = None
) -> HubStore:
    """The PostgreSQL store if ``url`` is set, else the SQLite file ``database``.

    asyncpg is imported only here, so a SQLite hub runs without the ``postgres`` extra."""
    if url is None:
        return await Store.open(database)
    with postgres_driver(url):
        from hub.store.pg import PgStore  # noqa: PLC0415

    return await PgStore.open(url, ca_file)
