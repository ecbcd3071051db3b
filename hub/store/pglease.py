"""The leader lease on PostgreSQL: one row, renewed by its holder, with a fencing token.

Expiry is on the database's clock, so replicas need no synchronised clocks. The token
rises by one at every change of holder; a side effect checks it (:meth:`holds`) so a
replica that lost the lease while stalled cannot act on what it decided before.
"""

from __future__ import annotations

from hub.store.pgdb import PgDb

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
        rows = await self._all(_CLAIM, (holder, api_url, ttl))
        return (int(rows[0][0]), float(rows[0][1])) if rows else None

    async def request_refresh(self) -> None:
        """Ask the leader to re-read Git and announce new heads (at its next renewal)."""
        await self._write(
            f"UPDATE leader_lease SET refresh_requested = {_NOW} WHERE name = 'hub'",  # noqa: S608
            (),
            "asking the leader for a Git refresh",
        )

    async def holds(self, holder: str, token: int) -> bool:
        """Is ``holder`` still the leader under ``token``?"""
        rows = await self._all(
            f"SELECT 1 FROM leader_lease WHERE name = 'hub' AND holder = $1 AND token = $2 "  # noqa: S608
            f"AND expires_at > {_NOW}",
            (holder, token),
        )
        return bool(rows)

    async def leader_url(self) -> str | None:
        """The API address of the current leader, if any holds the lease."""
        rows = await self._all(
            f"SELECT api_url FROM leader_lease WHERE name = 'hub' AND expires_at > {_NOW}"  # noqa: S608
        )
        return str(rows[0][0]) if rows else None

    async def resign(self, holder: str) -> None:
        """Give the lease up at a clean stop, so a standby takes over at once."""
        await self._write(
            "UPDATE leader_lease SET expires_at = 0 WHERE name = 'hub' AND holder = $1",
            (holder,),
            "resigning the leader lease",
        )
