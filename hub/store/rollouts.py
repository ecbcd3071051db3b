"""Rollout records: the audit log, stage pauses and the heads each stage had."""

from __future__ import annotations

from dataclasses import astuple

from hub.store.db import Db
from hub.store.interface import GateClocks, RolloutRecords
from hub.store.rowparts import audit_entries
from hub.store.rows import AuditEntry, AuditRow, Pause


class SqliteRollouts(Db, RolloutRecords, GateClocks):
    """Contracts: :class:`~hub.store.interface.RolloutRecords` and
    :class:`~hub.store.interface.GateClocks`."""

    async def gate_holding(self) -> dict[str, tuple[str, float]]:
        rows = await self._all("SELECT stage, candidate, since FROM gate_holding")
        return {stage: (candidate, since) for stage, candidate, since in rows}

    async def set_gate_holding(self, stage: str, holding: tuple[str, float] | None) -> None:
        if holding is None:
            await self._write("DELETE FROM gate_holding WHERE stage = ?", (stage,), "soak clock")
        else:
            await self._write(
                "INSERT OR REPLACE INTO gate_holding (stage, candidate, since) VALUES (?, ?, ?)",
                (stage, *holding),
                f"recording the soak of {stage}",
            )

    async def add_audit(self, row: AuditRow) -> int:
        return await self._write(
            "INSERT INTO audit (at, action, stage, who, from_commit, to_commit, outcome, "
            "forced, reason, evidence, on_behalf) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
            "writing the audit log",
        )

    async def set_pause(self, pause: Pause) -> None:
        await self._write(
            "INSERT OR REPLACE INTO stage_pause (stage, kind, commit_sha, at, who, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            astuple(pause),
            f"pausing stage {pause.stage}",
        )

    async def clear_pause(self, stage: str) -> None:
        await self._write(
            "DELETE FROM stage_pause WHERE stage = ?", (stage,), f"resuming stage {stage}"
        )

    async def record_head(self, stage: str, commit: str, at: float) -> None:
        await self._write(
            "INSERT OR IGNORE INTO stage_heads (stage, commit_sha, seen_at) VALUES (?, ?, ?)",
            (stage, commit, at),
            f"recording the head of {stage}",
        )

    async def pauses(self) -> dict[str, Pause]:
        rows = await self._all("SELECT stage, kind, commit_sha, at, who, reason FROM stage_pause")
        return {r[0]: Pause(*r) for r in rows}

    async def head_history(self, stage: str) -> list[str]:
        rows = await self._all(
            "SELECT commit_sha FROM stage_heads WHERE stage = ? ORDER BY seen_at DESC",
            (stage,),
        )
        return [r[0] for r in rows]

    async def promotion_origin(self, stage: str, to_commit: str) -> str | None:
        rows = await self._all(
            "SELECT from_commit FROM audit WHERE stage = ? AND to_commit = ? "
            "AND action = 'promote' AND outcome = 'done' ORDER BY id DESC LIMIT 1",
            (stage, to_commit),
        )
        return rows[0][0] if rows else None

    async def history(self, stage: str | None = None, limit: int = 100) -> list[AuditEntry]:
        where = "WHERE stage = :stage" if stage is not None else ""
        rows = await self._all(
            "SELECT id, at, action, stage, who, from_commit, to_commit, outcome, forced, "  # noqa: S608
            f"reason, evidence, on_behalf FROM audit {where} ORDER BY id DESC LIMIT :limit",
            {"stage": stage, "limit": limit},
        )
        return audit_entries(rows)
