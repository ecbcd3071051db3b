"""The gate into a stage (a pure function of fresh node reports) and what pauses it.

A stage with ``promote_from`` takes the head of its source stage (the candidate) when
the source stage's nodes run it healthily. Stale and offline nodes are in the
denominator and never in the numerator; the gate must hold continuously for ``soak``
seconds (the caller keeps ``holding_since`` between evaluations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hub.config import Gate, HubConfig, Stage
from hub.states import DEFERRED, HEALTHY, OFFLINE, STALE
from hub.store import NodeState, Pause

FAILED_STATES = ("failed", "refused")


@dataclass(frozen=True)
class GateResult:
    open: bool
    candidate: str | None
    total: int
    ready: int
    needed: int
    failed: int
    stale: int
    offline: int
    holding_since: float | None
    """Since when the condition (without soak) holds; None while it does not."""
    soak_left: float
    reason: str

    def evidence(self) -> dict[str, Any]:
        return asdict(self)


def duration(seconds: float) -> str:
    """Short human duration: 45s, 4m, 2h."""
    seconds = max(seconds, 0.0)
    if seconds < 100:
        return f"{math.ceil(seconds)}s"
    if seconds < 6000:
        return f"{math.ceil(seconds / 60)}m"
    return f"{seconds / 3600:.1f}h"


def failed_on(nodes: Sequence[NodeState], commit: str) -> list[str]:
    """Nodes whose last report says they failed on (or refused) ``commit``; a node that
    rolled back locally reports ``failed`` with ``desired`` = the bad commit."""
    return sorted(n.node for n in nodes if n.reported in FAILED_STATES and n.desired == commit)


def evaluate_gate(
    gate: Gate,
    candidate: str | None,
    nodes: Sequence[NodeState],
    holding_since: float | None,
    now: float,
) -> GateResult:
    """Is ``candidate`` healthy on enough ``nodes`` (the source stage), long enough?

    ``holding_since`` is the previous result's value for the same candidate (None at
    first); the returned one continues or restarts the soak.
    """
    total = len(nodes)
    stale = sum(n.state == STALE for n in nodes)
    offline = sum(n.state == OFFLINE for n in nodes)
    if candidate is None:
        return GateResult(False, None, total, 0, 0, 0, stale, offline, None, gate.soak,
                          "the source stage branch has no head yet")  # fmt: skip
    ready = sum(
        n.state == HEALTHY and n.applied == candidate and gate.agent_version in (None, n.version)
        for n in nodes
    )
    failed = len(failed_on(nodes, candidate))
    # 1e-9: 0.8 * 5 must need 4 nodes, not 5 through float rounding.
    needed = max(gate.min_nodes, math.ceil(gate.min_ready_ratio * total - 1e-9))
    short = candidate[:7]
    counts = f"{ready}/{total} nodes applied {short}"
    if gate.agent_version is not None:
        counts += f" on agent {gate.agent_version}"
    # Deferred nodes (a lock or window holds them) are pending: neither ready nor failed.
    deferred = sum(n.state == DEFERRED for n in nodes)
    unfresh = ", ".join(
        f"{n} {what}"
        for n, what in ((stale, "stale"), (offline, "offline"), (deferred, DEFERRED))
        if n
    )
    if failed > gate.max_failed:
        reason = f"{failed} node{'s' * (failed != 1)} failed on {short} (max {gate.max_failed})"
    elif ready < needed:
        reason = f"{counts}, need {needed}" + (f" ({unfresh})" if unfresh else "")
    else:
        since = now if holding_since is None else holding_since
        left = max(gate.soak - (now - since), 0.0)
        if left > 0:
            reason = f"{counts}, soak {duration(left)} left"
        else:
            reason = f"{counts}, healthy for {duration(now - since)}"
        return GateResult(left == 0, candidate, total, ready, needed, failed, stale, offline,
                          since, left, reason)  # fmt: skip
    return GateResult(False, candidate, total, ready, needed, failed, stale, offline, None,
                      gate.soak, reason)  # fmt: skip


def blocked_by(cfg: HubConfig, stage: Stage, pauses: Mapping[str, Pause]) -> str | None:
    """Why automatic promotion into ``stage`` is paused, or None."""
    pause = pauses.get(stage.name)
    if pause is not None:
        return (
            f"stage {stage.name} is paused ({pause.kind} by {pause.who}: {pause.reason}); "
            f"`edgefleet-hub resume {stage.name}` lifts it"
        )
    name = stage.promote_from
    while name is not None:
        pause = pauses.get(name)
        if pause is not None and pause.kind == "halt":
            return f"pipeline halted at {name}: {pause.reason}"
        upstream = cfg.stage(name)
        name = upstream.promote_from if upstream else None
    return None
