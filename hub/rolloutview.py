"""What the rollout engine shows: each stage's gate, pause, blockers and waves for the
API and CLI, and the audit log as JSON. Read-only: nothing here moves a branch."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

from hub.config import HubConfig, Stage
from hub.gate import GateResult, blocked_by
from hub.shapes import AuditJson, PauseJson, StageRollout
from hub.store import Pause, RolloutStore
from hub.waves import Waves


def pause_json(p: Pause) -> PauseJson:
    return {"stage": p.stage, "kind": p.kind, "commit": p.commit, "at": p.at, "who": p.who,
            "reason": p.reason}  # fmt: skip


async def stage_status(
    cfg: HubConfig,
    store: RolloutStore,
    heads: Mapping[str, str],
    now: float,
    evaluate: Callable[[Stage], Awaitable[GateResult]],
    waves: Waves | None,
) -> dict[str, StageRollout]:
    """Per stage: gate (if it has a source), pause, what blocks auto promotion."""
    pauses = await store.pauses()
    out: dict[str, StageRollout] = {}
    for stage in cfg.stages:
        pause = pauses.get(stage.name)
        blocked = blocked_by(cfg, stage, pauses)
        info: StageRollout = {
            "auto_rollback": stage.auto_rollback,
            "paused": None if pause is None else pause_json(pause),
            "blocked": blocked,
            "in_window": stage.window is None or stage.window.contains(now),
            "gate_status": None,
        }
        if stage.promote_from is not None:
            gate = await evaluate(stage)
            status = gate.evidence()
            candidate = gate.candidate or ""
            up_to_date = bool(candidate) and heads.get(stage.branch) == candidate
            status["up_to_date"] = up_to_date
            if up_to_date:
                status["reason"] = f"{stage.name} is at {candidate[:7]} already"
            elif blocked and gate.open:
                status["reason"] = f"gate open, but {blocked}"
            info["gate_status"] = status
        if stage.waves and waves is not None:
            info["waves"] = await waves.status(stage)
        out[stage.name] = info
    return out


async def audit_history(store: RolloutStore, stage: str | None, limit: int) -> list[AuditJson]:
    return [
        {"id": e.id, "at": e.row.at, "action": e.row.action, "stage": e.row.stage,
         "who": e.row.who, "on_behalf": e.row.on_behalf, "from": e.row.from_commit,
         "to": e.row.to_commit,
         "outcome": e.row.outcome, "forced": e.row.forced, "reason": e.row.reason,
         "evidence": json.loads(e.row.evidence)}
        for e in await store.history(stage, limit)
    ]  # fmt: skip
