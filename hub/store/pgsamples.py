"""State samples on PostgreSQL: the same contract as :mod:`hub.store.samples`."""

from __future__ import annotations

from collections.abc import Mapping

from hub.store.pgdb import PgDb
from hub.store.samples import SampleStore, StateSample, grouped_samples


class PgSamples(PgDb, SampleStore):
    """Contract: :class:`~hub.store.samples.SampleStore`."""

    async def add_sample(self, at: float, states: Mapping[str, int]) -> None:
        # As on SQLite: the empty state marks a sample of an empty fleet.
        rows = [(at, state, n) for state, n in states.items() if n] or [(at, "", 0)]
        await self._many(
            "INSERT INTO state_samples (at, state, nodes) VALUES ($1, $2, $3) "
            "ON CONFLICT (at, state) DO UPDATE SET nodes = excluded.nodes",
            rows,
            "writing a state sample",
        )

    async def samples(self, since: float) -> list[StateSample]:
        rows = await self._all(
            "SELECT at, state, nodes FROM state_samples WHERE at >= $1 ORDER BY at", (since,)
        )
        return grouped_samples(rows)

    async def prune_samples(self, before: float) -> None:
        await self._write(
            "DELETE FROM state_samples WHERE at < $1", (before,), "pruning state samples"
        )
