"""The JSON shapes of the API (docs/design.md, "Hub") as TypedDicts.

Handlers send these as they are; building them from typed store rows happens in
:mod:`hub.fleet` and :mod:`hub.rollout`, once per shape.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Bucket(TypedDict):
    nodes: int
    states: dict[str, int]


class StageBucket(Bucket):
    branch: str
    head: str | None
    versions: dict[str, int]
    """Nodes per agent version they report ("unknown": none reported)."""


class _SummaryBase(TypedDict):
    nodes: int
    states: dict[str, int]
    healthy: int
    stages: dict[str, StageBucket]
    unstaged: Bucket
    generated_at: float


class Summary(_SummaryBase, total=False):
    labels: dict[str, dict[str, Bucket]]


class NodeJson(TypedDict):
    node: str
    stage: str | None
    branch: str | None
    state: str
    reported_state: str | None
    online: bool
    applied: str | None
    desired: str | None
    in_sync: bool
    last_heard: float
    observed_at: float | None
    seq: int
    labels: dict[str, str]
    drift_count: int
    version: str | None


class EventJson(TypedDict):
    node: str
    seq: int
    at: float | None
    type: str
    commit: str | None
    details: Any
    received: float


class NodeDetailJson(NodeJson):
    status: dict[str, Any]
    drift: list[Any]
    stale_at: float
    events: list[EventJson]


class NodePage(TypedDict):
    total: int
    limit: int
    offset: int
    nodes: list[NodeJson]


class DriftGroup(TypedDict):
    target: str
    subject: str
    kind: str
    nodes: int
    by_stage: dict[str, int]
    by_state: dict[str, int]
    examples: list[str]


# Functional syntax: "from" is a Python keyword.
AuditJson = TypedDict(
    "AuditJson",
    {"id": int, "at": float, "action": str, "stage": str, "who": str, "on_behalf": str | None,
     "from": str | None, "to": str | None, "outcome": str, "forced": bool, "reason": str,
     "evidence": Any},
)  # fmt: skip


class PauseJson(TypedDict):
    stage: str
    kind: str
    commit: str | None
    at: float
    who: str
    reason: str


class StageRollout(TypedDict, total=False):
    """A stage's rollout status: all keys present when rollouts run, none otherwise."""

    auto_rollback: bool
    paused: PauseJson | None
    blocked: str | None
    in_window: bool
    gate_status: dict[str, Any] | None
    """The gate evaluation (free-form evidence, as audited) plus ``up_to_date``."""
    waves: list[dict[str, Any]]
    """Stages with waves: name, nodes, on_candidate, gate, soak_left, state per wave."""


class GateConfigJson(TypedDict):
    min_nodes: int
    min_ready_ratio: float
    max_failed: int
    soak: float
    agent_version: str | None


class WindowJson(TypedDict):
    windows: list[str]
    """As written in fleet.toml, e.g. ``mon-fri 22:00-05:00``."""
    timezone: str


class StageJson(StageRollout):
    name: str
    branch: str
    head: str | None
    promote_from: str | None
    auto: bool
    gate: GateConfigJson
    window: WindowJson | None
    nodes: int
    states: dict[str, int]
    versions: dict[str, int]
    on_head: int
    """Nodes of the stage that applied its head."""


PromoteJson = TypedDict(
    "PromoteJson",
    {"stage": str, "from": str | None, "to": str, "forced": bool, "gate": dict[str, Any]},
)
RollbackJson = TypedDict("RollbackJson", {"stage": str, "from": str, "to": str, "paused": bool})


class ResumeJson(TypedDict):
    stage: str
    resumed: bool
    was: PauseJson
