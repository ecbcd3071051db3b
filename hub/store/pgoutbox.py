"""The notification outbox on PostgreSQL: the same contract as :mod:`hub.store.outbox`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hub.store.outbox import NotifyOutbox, OutboxEntry, OutboxItem
from hub.store.pgdb import PgDb


class PgOutbox(PgDb, NotifyOutbox):
    """Contract: :class:`~hub.store.outbox.NotifyOutbox`."""

    async def outbox_add(self, items: Sequence[OutboxItem]) -> None:
        if items:
            await self._many(
                "INSERT INTO notify_outbox (event_id, sink, body, created, next_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                items,
                f"queueing {len(items)} notifications",
            )

    async def outbox_due(self, now: float, sinks: Iterable[str], limit: int) -> list[OutboxEntry]:
        names = list(sinks)
        if not names:
            return []
        rows = await self._all(
            "SELECT id, event_id, sink, body, created, next_at, attempts FROM notify_outbox "
            "WHERE delivered IS NULL AND next_at <= $1 AND sink = ANY($2::text[]) "
            "ORDER BY id LIMIT $3",
            (now, names, limit),
        )
        return [OutboxEntry(r[0], OutboxItem(*r[1:6]), r[6]) for r in rows]

    async def outbox_delivered(self, entry_id: int, at: float) -> None:
        await self._write(
            "UPDATE notify_outbox SET delivered = $1, attempts = attempts + 1, "
            "last_error = NULL WHERE id = $2",
            (at, entry_id),
            "marking a notification delivered",
        )

    async def outbox_retry(self, entry_id: int, next_at: float, error: str) -> None:
        await self._write(
            "UPDATE notify_outbox SET next_at = $1, attempts = attempts + 1, last_error = $2 "
            "WHERE id = $3",
            (next_at, error[:500], entry_id),
            "scheduling a notification retry",
        )

    async def outbox_prune(self, before: float) -> int:
        count = await self._write(
            "WITH gone AS (DELETE FROM notify_outbox WHERE created < $1 RETURNING 1) "
            "SELECT count(*) FROM gone",
            (before,),
            "pruning the notification outbox",
        )
        return int(count)
