"""The leader lease on PostgreSQL: one row, renewed by its holder, with a fencing token.

Expiry is on the database's clock, so replicas need no synchronised clocks. The token
rises by one at every change of holder; a side effect checks it (:meth:`holds`) so a
replica that lost the lease while stalled cannot act on what it decided before.

Every lease statement gives up after :data:`WAIT` seconds by closing its connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from hub.errors import StoreError
from hub.store.pgdb import DbErrors, PgDb

WAIT: Final = 4.0
"""Seconds a lease statement may take. Across a network partition a query waits on a dead
connection (up to the pool's command timeout, a minute): a standby's refusal, which
names the leader, would wait that long, a leader's fencing check too, and after the
network heals the replica would stay out of the election until that query ends. Below
the lease term (``ttl - margin``, 5 s in :mod:`hub.leader`): a claim answered later
could not extend the role anyway. A claim given up on may still commit in the database:
that keeps the other replicas out until it expires, and never makes this one act (it
only acts on a claim it saw succeed)."""

_NOW = "extract(epoch FROM clock_timestamp())"
_CLAIM = f"""
UPDATE leader_lease SET
    token = CASE WHEN holder = $1 AND expires_at > {_NOW} THEN token ELSE token + 1 END,
    holder = $1, api_url = $2, expires_at = {_NOW} + $3
WHERE name = 'hub' AND (holder = $1 OR expires_at <= {_NOW})
RETURNING token, refresh_requested
"""  # noqa: S608


class PgLease(PgDb):
    async def claim(self, holder: str, api_url: str, ttl: float) -> tuple[int, float] | None:
        """Take or renew the lease for ``ttl`` seconds: (fencing token, when a Git
        refresh was last requested), or None while another holder's lease runs."""
        rows = await self._lease(_CLAIM, (holder, api_url, ttl), "claiming the leader lease")
        return (int(rows[0][0]), float(rows[0][1])) if rows else None

    async def request_refresh(self) -> None:
        """Ask the leader to re-read Git and announce new heads (at its next renewal)."""
        await self._lease(
            f"UPDATE leader_lease SET refresh_requested = {_NOW} WHERE name = 'hub'",  # noqa: S608
            (),
            "asking the leader for a Git refresh",
        )

    async def holds(self, holder: str, token: int) -> bool:
        """Is ``holder`` still the leader under ``token``?"""
        rows = await self._lease(
            f"SELECT 1 FROM leader_lease WHERE name = 'hub' AND holder = $1 AND token = $2 "  # noqa: S608
            f"AND expires_at > {_NOW}",
            (holder, token),
            "checking the leader lease",
        )
        return bool(rows)

    async def leader_url(self) -> str | None:
        """The API address of the current leader, if any holds the lease."""
        rows = await self._lease(
            f"SELECT api_url FROM leader_lease WHERE name = 'hub' AND expires_at > {_NOW}",  # noqa: S608
            (),
            "looking up the leader",
        )
        return str(rows[0][0]) if rows else None

    async def resign(self, holder: str) -> None:
        """Give the lease up at a clean stop, so a standby takes over at once."""
        await self._lease(
            "UPDATE leader_lease SET expires_at = 0 WHERE name = 'hub' AND holder = $1",
            (holder,),
            "resigning the leader lease",
        )

    async def _lease(self, sql: str, params: Sequence[object], what: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, or StoreError once :data:`WAIT` seconds have passed. The
        connection is closed then, not cancelled: asyncpg's cancel request would itself
        wait on the partitioned network before the pool let the query go."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        try:
            async with self._pool.acquire(timeout=WAIT) as conn:
                timer = loop.call_later(deadline - loop.time(), conn.terminate)
                try:
                    return [tuple(r) for r in await conn.fetch(sql, *params)]
                finally:
                    timer.cancel()
        except (TimeoutError, *DbErrors) as err:
            if loop.time() >= deadline:
                raise StoreError(f"{what}: the database did not answer within {WAIT:g} s") from err
            raise StoreError(f"{what} failed: {err}") from err
