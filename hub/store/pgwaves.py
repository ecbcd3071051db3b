"""Wave runs on PostgreSQL: the same contract as :mod:`hub.store.waves`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple

from hub.store.pgdb import PgDb
from hub.store.waves import WaveRecords, WaveRun


class PgWaves(PgDb, WaveRecords):
    """Contract: :class:`~hub.store.waves.WaveRecords`."""

    async def wave_run(self, stage: str) -> WaveRun | None:
        rows = await self._all(
            "SELECT stage, candidate, origin, wave, moved_at, holding_since, state, reason "
            "FROM wave_runs WHERE stage = $1",
            (stage,),
        )
        return WaveRun(*rows[0]) if rows else None

    async def save_wave_run(self, run: WaveRun) -> None:
        await self._write(
            "INSERT INTO wave_runs (stage, candidate, origin, wave, moved_at, holding_since, "
            "state, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (stage) DO "
            "UPDATE SET candidate = excluded.candidate, origin = excluded.origin, "
            "wave = excluded.wave, moved_at = excluded.moved_at, "
            "holding_since = excluded.holding_since, state = excluded.state, "
            "reason = excluded.reason",
            astuple(run),
            f"recording the waves of {run.stage}",
        )

    async def set_wave_members(self, stage: str, members: Mapping[str, str]) -> None:
        await self._many(
            "INSERT INTO wave_members (stage, node, wave) VALUES ($1, $2, $3)",
            [(stage, node, wave) for node, wave in members.items()],
            f"recording the wave members of {stage}",
            first=("DELETE FROM wave_members WHERE stage = $1", (stage,)),
        )

    async def wave_members(self, stage: str) -> dict[str, str]:
        rows = await self._all("SELECT node, wave FROM wave_members WHERE stage = $1", (stage,))
        return {r[0]: r[1] for r in rows}
