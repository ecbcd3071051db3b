"""The fleet model: effective node states, stages and aggregations for the API.

A node's state is what it last reported, overridden by ``offline`` (its LWT said 0)
and ``stale`` (not heard within its stale window); overridden nodes are never counted
healthy. Its stage is the fleet.toml stage whose branch it reported. Shapes returned
here are the API contract in docs/design.md ("Hub").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from common import wire
from hub.config import HubConfig, Stage
from hub.store import Store

ALL_STATES: tuple[str, ...] = (*wire.STATES, "stale", "offline")
HEALTHY = "synced"
_EXAMPLES = 5


def empty_states() -> dict[str, int]:
    return dict.fromkeys(ALL_STATES, 0)


class Fleet:
    def __init__(
        self,
        cfg: HubConfig,
        store: Store,
        heads: Callable[[], Mapping[str, str]] = dict,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._heads = heads
        self._clock = clock

    def stage_name(self, branch: str | None) -> str | None:
        stage = self._cfg.stage_for_branch(branch)
        return stage.name if stage else None

    async def summary(self, label: str | None = None) -> dict[str, Any]:
        now = self._clock()
        states = empty_states()
        heads = self._heads()
        stages: dict[str, dict[str, Any]] = {
            s.name: {"branch": s.branch, "head": heads.get(s.branch), "nodes": 0,
                     "states": empty_states(), "versions": {}}
            for s in self._cfg.stages
        }  # fmt: skip
        unstaged: dict[str, Any] = {"nodes": 0, "states": empty_states(), "versions": {}}
        total = 0
        for branch, state, n in await self._store.state_counts(now):
            total += n
            states[state] = states.get(state, 0) + n
            name = self.stage_name(branch)
            bucket = stages[name] if name is not None else unstaged
            bucket["nodes"] += n
            bucket["states"][state] = bucket["states"].get(state, 0) + n
        for branch, version, n in await self._store.version_counts():
            name = self.stage_name(branch)
            versions = (stages[name] if name is not None else unstaged)["versions"]
            versions[version or "unknown"] = versions.get(version or "unknown", 0) + n
        out: dict[str, Any] = {
            "nodes": total,
            "states": states,
            "healthy": states[HEALTHY],
            "stages": stages,
            "unstaged": unstaged,
            "generated_at": now,
        }
        if label is not None:
            values: dict[str, dict[str, Any]] = {}
            for value, state, n in await self._store.label_counts(label, now):
                key = "" if value is None else str(value)
                group = values.setdefault(key, {"nodes": 0, "states": empty_states()})
                group["nodes"] += n
                group["states"][state] += n
            out["labels"] = {label: values}
        return out

    async def nodes(
        self,
        stage: Stage | None = None,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
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
            "nodes": [self._node_row(r) for r in rows],
        }

    def _node_row(self, r: Any) -> dict[str, Any]:
        return {
            "node": r["node"],
            "stage": self.stage_name(r["branch"]),
            "branch": r["branch"],
            "state": r["effective"],
            "reported_state": r["state"],
            "online": bool(r["online"]),
            "applied": r["applied"],
            "desired": r["desired"],
            "in_sync": r["applied"] is not None and r["applied"] == r["desired"],
            "last_heard": r["last_heard"],
            "observed_at": r["observed_at"],
            "seq": r["seq"],
            "labels": json.loads(r["labels"]) if r["labels"] else {},
            "drift_count": r["drift_count"],
            "version": r["version"],
        }

    async def node(self, name: str, events: int = 20) -> dict[str, Any] | None:
        row = await self._store.get_node(name, self._clock())
        if row is None:
            return None
        out = self._node_row(row)
        status: dict[str, Any] = json.loads(row["doc"]) if row["doc"] else {}
        out["status"] = status
        out["drift"] = status.get("drift", [])
        out["stale_at"] = row["stale_at"]
        out["events"] = [event_dict(e) for e in await self._store.events(node=name, limit=events)]
        return out

    async def drift(self, stage: Stage | None = None) -> dict[str, Any]:
        """Drift grouped by (target, subject, kind) across nodes, biggest group first."""
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for node, branch, state, doc in await self._store.drifted(self._clock()):
            if stage is not None and branch != stage.branch:
                continue
            name = self.stage_name(branch)
            seen: set[tuple[str, str, str]] = set()
            for item in json.loads(doc).get("drift", []):
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
                group["by_state"][state] = group["by_state"].get(state, 0) + 1
                if len(group["examples"]) < _EXAMPLES:
                    group["examples"].append(node)
        ordered = sorted(groups.values(), key=lambda g: (-g["nodes"], g["target"], g["subject"]))
        return {"drift": ordered}

    async def stages(self) -> dict[str, Any]:
        summary = await self.summary()
        out = []
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
                    else {"days": list(s.window.days), "start": s.window.start,
                          "end": s.window.end},
                    "nodes": counts["nodes"],
                    "states": counts["states"],
                    "versions": counts["versions"],
                }
            )  # fmt: skip
        return {"stages": out}

    async def events(
        self,
        node: str | None = None,
        type_: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        rows = await self._store.events(node=node, type_=type_, since=since, limit=limit)
        return {"events": [event_dict(r) for r in rows]}


def event_dict(r: Any) -> dict[str, Any]:
    return {
        "node": r["node"],
        "seq": r["seq"],
        "at": r["at"],
        "type": r["type"],
        "commit": r["commit_sha"],
        "details": json.loads(r["details"]),
        "received": r["received"],
    }
