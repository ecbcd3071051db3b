"""Rollout records on PostgreSQL: the same contract as :mod:`hub.store.rollouts`."""

from __future__ import annotations

from dataclasses import astuple

from hub.store.interface import GateClocks, RolloutRecords
from hub.store.pgdb import PgDb
from hub.store.rowparts import audit_entries
from hub.store.rows import AuditEntry, AuditRow, Pause


class PgRollouts(PgDb, RolloutRecords, GateClocks):
    """Contracts: :class:`~hub.store.interface.RolloutRecords` and
    :class:`~hub.store.interface.GateClocks`."""

    async def gate_holding(self) -> dict[str, tuple[str, float]]:
        rows = await self._all("SELECT stage, candidate, since FROM gate_holding")
        return {stage: (candidate, since) for stage, candidate, since in rows}

    async def set_gate_holding(self, stage: str, holding: tuple[str, float] | None) -> None:
        if holding is None:
            await self._write("DELETE FROM gate_holding WHERE stage = $1", (stage,), "soak clock")
        else:
            await self._write(
                "INSERT INTO gate_holding (stage, candidate, since) VALUES ($1, $2, $3) "
                "ON CONFLICT (stage) DO UPDATE SET candidate = excluded.candidate, "
                "since = excluded.since",
                (stage, *holding),
                f"recording the soak of {stage}",
            )

    async def add_audit(self, row: AuditRow) -> int:
        return int(
            await self._write(
                "INSERT INTO audit (at, action, stage, who, from_commit, to_commit, outcome, "
                "forced, reason, evidence, on_behalf) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
                "RETURNING id",
                row,
                "writing the audit log",
            )
        )

    async def set_pause(self, pause: Pause) -> None:
        await self._write(
            "INSERT INTO stage_pause (stage, kind, commit_sha, at, who, reason) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stage) DO UPDATE SET "
            "kind = excluded.kind, commit_sha = excluded.commit_sha, at = excluded.at, "
            "who = excluded.who, reason = excluded.reason",
            astuple(pause),
            f"pausing stage {pause.stage}",
        )

    async def clear_pause(self, stage: str) -> None:
        await self._write(
            "DELETE FROM stage_pause WHERE stage = $1", (stage,), f"resuming stage {stage}"
        )

    async def record_head(self, stage: str, commit: str, at: float) -> None:
        await self._write(
            "INSERT INTO stage_heads (stage, commit_sha, seen_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            (stage, commit, at),
            f"recording the head of {stage}",
        )

    async def pauses(self) -> dict[str, Pause]:
        rows = await self._all("SELECT stage, kind, commit_sha, at, who, reason FROM stage_pause")
        return {r[0]: Pause(*r) for r in rows}

    async def head_history(self, stage: str) -> list[str]:
        rows = await self._all(
            "SELECT commit_sha FROM stage_heads WHERE stage = $1 ORDER BY seen_at DESC",
            (stage,),
        )
        return [r[0] for r in rows]

    async def promotion_origin(self, stage: str, to_commit: str) -> str | None:
        rows = await self._all(
            "SELECT from_commit FROM audit WHERE stage = $1 AND to_commit = $2 "
            "AND action = 'promote' AND outcome = 'done' ORDER BY id DESC LIMIT 1",
            (stage, to_commit),
        )
        return rows[0][0] if rows else None

    async def history(self, stage: str | None = None, limit: int = 100) -> list[AuditEntry]:
        rows = await self._all(
            "SELECT id, at, action, stage, who, from_commit, to_commit, outcome, forced, "
            "reason, evidence, on_behalf FROM audit WHERE $1::text IS NULL OR stage = $1 "
            "ORDER BY id DESC LIMIT $2",
            (stage, limit),
        )
        return audit_entries(rows)
