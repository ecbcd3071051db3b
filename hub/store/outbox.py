"""The notification outbox: one row per (event, sink) until the sink took it.

Rows are written when the event happens and marked delivered only after the receiver
answered 2xx, so a receiver that is down, or a hub that restarts, loses nothing
(delivery is at least once; receivers dedup by the event id).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from hub.errors import StoreError
from hub.store.db import Db


class OutboxItem(NamedTuple):
    """A notification to deliver; fields in SQL parameter order."""

    event_id: str
    sink: str
    body: str
    """The payload exactly as the sink gets it (its format already applied)."""
    created: float
    next_at: float
    """Not before this (Unix s): the retry schedule."""


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    item: OutboxItem
    attempts: int


class NotifyOutbox(Protocol):
    async def outbox_add(self, items: Sequence[OutboxItem]) -> None:
        """Store notifications (all or none)."""
        ...

    async def outbox_due(self, now: float, sinks: Iterable[str], limit: int) -> list[OutboxEntry]:
        """Undelivered entries of these sinks due at ``now``, oldest first."""
        ...

    async def outbox_delivered(self, entry_id: int, at: float) -> None: ...

    async def outbox_retry(self, entry_id: int, next_at: float, error: str) -> None:
        """Count a failed attempt and retry at ``next_at``."""
        ...

    async def outbox_prune(self, before: float) -> int:
        """Delete entries created before ``before`` (delivered or given up); how many."""
        ...


class SqliteOutbox(Db, NotifyOutbox):
    """Contract: :class:`NotifyOutbox`."""

    async def outbox_add(self, items: Sequence[OutboxItem]) -> None:
        if not items:
            return
        async with self._write_lock:
            try:
                await self._w.execute("BEGIN")
                try:
                    await self._w.executemany(
                        "INSERT INTO notify_outbox (event_id, sink, body, created, next_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        items,
                    )
                    await self._w.execute("COMMIT")
                except BaseException:
                    await self._rollback()
                    raise
            except sqlite3.Error as err:
                raise StoreError(f"queueing {len(items)} notifications failed: {err}") from err

    async def outbox_due(self, now: float, sinks: Iterable[str], limit: int) -> list[OutboxEntry]:
        names = list(sinks)
        if not names:
            return []
        marks = ", ".join("?" * len(names))
        rows = await self._all(
            "SELECT id, event_id, sink, body, created, next_at, attempts FROM notify_outbox "  # noqa: S608
            f"WHERE delivered IS NULL AND next_at <= ? AND sink IN ({marks}) ORDER BY id LIMIT ?",
            (now, *names, limit),
        )
        return [OutboxEntry(r[0], OutboxItem(*r[1:6]), r[6]) for r in rows]

    async def outbox_delivered(self, entry_id: int, at: float) -> None:
        await self._write(
            "UPDATE notify_outbox SET delivered = ?, attempts = attempts + 1, last_error = NULL "
            "WHERE id = ?",
            (at, entry_id),
            "marking a notification delivered",
        )

    async def outbox_retry(self, entry_id: int, next_at: float, error: str) -> None:
        await self._write(
            "UPDATE notify_outbox SET next_at = ?, attempts = attempts + 1, last_error = ? "
            "WHERE id = ?",
            (next_at, error[:500], entry_id),
            "scheduling a notification retry",
        )

    async def outbox_prune(self, before: float) -> int:
        async with self._write_lock:
            try:
                cur = await self._w.execute(
                    "DELETE FROM notify_outbox WHERE created < ?", (before,)
                )
            except sqlite3.Error as err:
                raise StoreError(f"pruning the notification outbox failed: {err}") from err
            return max(cur.rowcount, 0)
