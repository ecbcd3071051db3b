"""Rollout records: the audit log, stage pauses and the heads each stage had."""

from __future__ import annotations

from dataclasses import astuple

from hub.store.db import Db
from hub.store.interface import RolloutRecords
from hub.store.rows import AuditEntry, AuditRow, Pause


class SqliteRollouts(Db, RolloutRecords):
    """Contract: :class:`~hub.store.interface.RolloutRecords`."""

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
        return [
            AuditEntry(id_, AuditRow(at, action, stage_, who, from_, to, outcome, bool(forced),
                                     reason, evidence, on_behalf))
            for id_, at, action, stage_, who, from_, to, outcome, forced, reason, evidence,
            on_behalf in rows
        ]  # fmt: skip
