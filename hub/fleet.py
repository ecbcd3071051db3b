"""The fleet model: effective node states, stages and aggregations for the API.

A node's state is its effective state (:mod:`hub.states`: what it last
reported, overridden by ``offline`` and ``stale``); overridden nodes are never counted
healthy. Its stage is the fleet.toml stage whose branch it reported. Shapes returned
here are the API contract in docs/design.md ("Hub"), typed in :mod:`hub.shapes`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from hub.config import HubConfig, Stage
from hub.shapes import (
    Bucket,
    DriftGroup,
    EventJson,
    NodeDetailJson,
    NodeJson,
    NodePage,
    StageBucket,
    StageJson,
    StageRollout,
    Summary,
)
from hub.states import ALL_STATES, HEALTHY
from hub.store import EventRow, NodeQueries, NodeRow

_EXAMPLES = 5
_NODE_EVENTS = 20
"""Newest events shown with one node."""


def _empty_states() -> dict[str, int]:
    return dict.fromkeys(ALL_STATES, 0)


def _bucket() -> Bucket:
    return {"nodes": 0, "states": _empty_states()}


class Fleet:
    def __init__(
        self,
        cfg: HubConfig,
        store: NodeQueries,
        heads: Callable[[], Mapping[str, str]] = dict,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._heads = heads
        self._clock = clock

    def _stage_name(self, branch: str | None) -> str | None:
        stage = self._cfg.stage_for_branch(branch)
        return stage.name if stage else None

    async def summary(self, label: str | None = None) -> Summary:
        now = self._clock()
        states = _empty_states()
        heads = self._heads()
        stages: dict[str, StageBucket] = {
            s.name: {"branch": s.branch, "head": heads.get(s.branch), "nodes": 0,
                     "states": _empty_states(), "versions": {}}
            for s in self._cfg.stages
        }  # fmt: skip
        unstaged = _bucket()
        total = 0
        # Both scans at once: on PostgreSQL each takes its own pooled connection.
        state_counts, version_counts = await asyncio.gather(
            self._store.state_counts(now), self._store.version_counts()
        )
        for count in state_counts:
            total += count.nodes
            states[count.state] = states.get(count.state, 0) + count.nodes
            name = self._stage_name(count.branch)
            bucket: Bucket = stages[name] if name is not None else unstaged
            bucket["nodes"] += count.nodes
            bucket["states"][count.state] = bucket["states"].get(count.state, 0) + count.nodes
        for vc in version_counts:
            name = self._stage_name(vc.branch)
            if name is not None:
                versions = stages[name]["versions"]
                key = vc.version or "unknown"
                versions[key] = versions.get(key, 0) + vc.nodes
        out: Summary = {
            "nodes": total,
            "states": states,
            "healthy": states[HEALTHY],
            "stages": stages,
            "unstaged": unstaged,
            "generated_at": now,
        }
        if label is not None:
            values: dict[str, Bucket] = {}
            for lc in await self._store.label_counts(label, now):
                group = values.setdefault("" if lc.value is None else lc.value, _bucket())
                group["nodes"] += lc.nodes
                group["states"][lc.state] += lc.nodes
            out["labels"] = {label: values}
        return out

    async def nodes(
        self,
        stage: Stage | None = None,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> NodePage:
        total, rows = await self._store.list_nodes(
            self._clock(),
            branches=None if stage is None else [stage.branch],
            state=state,
            labels=labels,
            limit=limit,
            offset=offset,
        )
        return {
            "total": total,
            "limit": limit,
            "offset": offset,
            "nodes": [self._node_json(r) for r in rows],
        }

    def _node_json(self, r: NodeRow) -> NodeJson:
        return {
            "node": r.node,
            "stage": self._stage_name(r.branch),
            "branch": r.branch,
            "state": r.state,
            "reported_state": r.reported,
            "online": r.online,
            "applied": r.applied,
            "desired": r.desired,
            "in_sync": r.applied is not None and r.applied == r.desired,
            "last_heard": r.last_heard,
            "observed_at": r.observed_at,
            "seq": r.seq,
            "labels": r.labels,
            "drift_count": r.drift_count,
            "version": r.version,
        }

    async def exists(self, name: str) -> bool:
        return await self._store.get_node(name, self._clock()) is not None

    async def node(self, name: str) -> NodeDetailJson | None:
        detail = await self._store.get_node(name, self._clock())
        if detail is None:
            return None
        status: dict[str, Any] = json.loads(detail.doc) if detail.doc else {}
        return {
            **self._node_json(detail.row),
            "status": status,
            "drift": status.get("drift", []),
            "stale_at": detail.stale_at,
            "events": [
                _event_json(e) for e in await self._store.events(node=name, limit=_NODE_EVENTS)
            ],
        }

    async def drift(self, stage: Stage | None = None) -> dict[str, list[DriftGroup]]:
        """Drift grouped by (target, subject, kind) across nodes, biggest group first."""
        groups: dict[tuple[str, str, str], DriftGroup] = {}
        for drifted in await self._store.drifted(self._clock()):
            if stage is not None and drifted.branch != stage.branch:
                continue
            name = self._stage_name(drifted.branch)
            seen: set[tuple[str, str, str]] = set()
            for item in json.loads(drifted.doc).get("drift", []):
                key = (item["target"], item["subject"], item["kind"])
                if key in seen:
                    continue
                seen.add(key)
                group = groups.setdefault(
                    key,
                    {"target": key[0], "subject": key[1], "kind": key[2], "nodes": 0,
                     "by_stage": {}, "by_state": {}, "examples": []},
                )  # fmt: skip
                group["nodes"] += 1
                stage_key = name if name is not None else ""
                group["by_stage"][stage_key] = group["by_stage"].get(stage_key, 0) + 1
                group["by_state"][drifted.state] = group["by_state"].get(drifted.state, 0) + 1
                if len(group["examples"]) < _EXAMPLES:
                    group["examples"].append(drifted.node)
        ordered = sorted(groups.values(), key=lambda g: (-g["nodes"], g["target"], g["subject"]))
        return {"drift": ordered}

    async def stages(
        self, rollouts: Mapping[str, StageRollout] | None = None
    ) -> dict[str, list[StageJson]]:
        """Every stage's config and counts, joined with its rollout status (by name)."""
        summary = await self.summary()
        out: list[StageJson] = []
        for s in self._cfg.stages:
            counts = summary["stages"][s.name]
            out.append(
                {
                    "name": s.name,
                    "branch": s.branch,
                    "head": counts["head"],
                    "promote_from": s.promote_from,
                    "auto": s.auto,
                    "gate": {
                        "min_nodes": s.gate.min_nodes,
                        "min_ready_ratio": s.gate.min_ready_ratio,
                        "max_failed": s.gate.max_failed,
                        "soak": s.gate.soak,
                        "agent_version": s.gate.agent_version,
                    },
                    "window": None
                    if s.window is None
                    else {"windows": list(s.window_spec), "timezone": str(s.window.tz)},
                    "nodes": counts["nodes"],
                    "states": counts["states"],
                    "versions": counts["versions"],
                    "on_head": await self._on_head(s, counts["head"]),
                    **(rollouts or {}).get(s.name, {}),
                }
            )  # fmt: skip
        return {"stages": out}

    async def _on_head(self, stage: Stage, head: str | None) -> int:
        """Nodes of ``stage`` that applied its head: the rollout's progress."""
        if head is None:
            return 0
        nodes = await self._store.stage_nodes(stage.branch, self._clock())
        return sum(1 for n in nodes if n.applied == head)

    async def events(
        self,
        node: str | None = None,
        type_: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> dict[str, list[EventJson]]:
        rows = await self._store.events(node=node, type_=type_, since=since, limit=limit)
        return {"events": [_event_json(r) for r in rows]}


def _event_json(e: EventRow) -> EventJson:
    return {
        "node": e.node,
        "seq": e.seq,
        "at": e.at,
        "type": e.type,
        "commit": e.commit,
        "details": json.loads(e.details),
        "received": e.received,
    }
