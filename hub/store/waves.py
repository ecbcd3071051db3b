"""Wave runs: which wave of a stage holds the candidate, its soak clock, each node's wave."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from typing import Protocol

from hub.errors import StoreError
from hub.store.db import Db

ROLLING = "rolling"
HALTED = "halted"
DONE = "done"


@dataclass(frozen=True)
class WaveRun:
    """The latest promotion into a stage with waves; fields in SQL parameter order."""

    stage: str
    candidate: str
    origin: str | None
    """The stage head when the run started (where a rollback goes)."""
    wave: int
    """Index of the wave that received the candidate last."""
    moved_at: float
    holding_since: float | None
    """Since when that wave's gate holds (None: it does not)."""
    state: str
    """rolling | halted | done"""
    reason: str


class WaveRecords(Protocol):
    async def wave_run(self, stage: str) -> WaveRun | None: ...

    async def save_wave_run(self, run: WaveRun) -> None: ...

    async def set_wave_members(self, stage: str, members: Mapping[str, str]) -> None:
        """Replace the stage's node -> wave map (one transaction)."""

    async def wave_members(self, stage: str) -> dict[str, str]: ...


class SqliteWaves(Db, WaveRecords):
    """Contract: :class:`WaveRecords`."""

    async def wave_run(self, stage: str) -> WaveRun | None:
        rows = await self._all(
            "SELECT stage, candidate, origin, wave, moved_at, holding_since, state, reason "
            "FROM wave_runs WHERE stage = ?",
            (stage,),
        )
        return WaveRun(*rows[0]) if rows else None

    async def save_wave_run(self, run: WaveRun) -> None:
        await self._write(
            "INSERT OR REPLACE INTO wave_runs (stage, candidate, origin, wave, moved_at, "
            "holding_since, state, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            astuple(run),
            f"recording the waves of {run.stage}",
        )

    async def set_wave_members(self, stage: str, members: Mapping[str, str]) -> None:
        async with self._write_lock:
            try:
                await self._w.execute("BEGIN")
                await self._w.execute("DELETE FROM wave_members WHERE stage = ?", (stage,))
                await self._w.executemany(
                    "INSERT INTO wave_members (stage, node, wave) VALUES (?, ?, ?)",
                    [(stage, node, wave) for node, wave in members.items()],
                )
                await self._w.execute("COMMIT")
            except sqlite3.Error as err:
                await self._rollback()
                raise StoreError(f"recording the wave members of {stage} failed: {err}") from err

    async def wave_members(self, stage: str) -> dict[str, str]:
        rows = await self._all("SELECT node, wave FROM wave_members WHERE stage = ?", (stage,))
        return {r[0]: r[1] for r in rows}
