"""Notification events: what happened, in which stage, to which commits and nodes, and
the two bodies receivers get (plain JSON, or Slack's ``{"text": ...}``)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from hub.notify.config import Format
from hub.store import AuditRow

HUB_EVENTS_TOPIC = "edgefleet/v1/hub/events"
"""MQTT topic of every notification (not retained, QoS 1), for local automation."""

_AUDIT_TYPES = {"promote": "promotion", "halt": "halt", "rollback": "rollback", "resume": "resume"}


@dataclass(frozen=True)
class NodeCounts:
    state: str
    count: int
    """Nodes that newly entered ``state`` in the burst this event sums up."""
    total: int
    """Nodes of the stage in ``state`` now."""
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    type: str
    stage: str | None
    reason: str
    at: float
    commit_from: str | None = None
    commit_to: str | None = None
    nodes: NodeCounts | None = None
    who: str | None = None
    on_behalf: str | None = None
    outcome: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Receivers dedup by it (``X-Edgefleet-Event-Id``): delivery is at least once."""

    def doc(self, public_url: str | None) -> dict[str, Any]:
        nodes = self.nodes
        return {
            "id": self.id,
            "type": self.type,
            "at": self.at,
            "stage": self.stage,
            "reason": self.reason,
            "commits": {"from": self.commit_from, "to": self.commit_to},
            "nodes": None if nodes is None else {
                "state": nodes.state, "count": nodes.count, "total": nodes.total,
                "examples": list(nodes.examples),
            },
            "who": self.who,
            "on_behalf": self.on_behalf,
            "outcome": self.outcome,
            "url": f"{public_url}/" if public_url else None,
        }  # fmt: skip

    def body(self, fmt: Format, public_url: str | None) -> str:
        if fmt == "slack":
            return json.dumps({"text": self.text(public_url)})
        return json.dumps(self.doc(public_url), sort_keys=True)

    def text(self, public_url: str | None) -> str:
        where = f"[{self.stage}] " if self.stage else ""
        text = f"edgefleet {where}{self.type.replace('_', ' ')}: {self.reason}"
        if self.nodes is not None and self.nodes.examples:
            text += f" (e.g. {', '.join(self.nodes.examples)})"
        if self.who:
            text += f" by {self.who}" + (f" for {self.on_behalf}" if self.on_behalf else "")
        return text + (f" <{public_url}/>" if public_url else "")


def from_audit(row: AuditRow) -> Event:
    """The event of a rollout decision; a promotion that was not done blocks the gate."""
    type_ = _AUDIT_TYPES.get(row.action, row.action)
    if row.action == "promote" and row.outcome != "done":
        type_ = "gate_blocked"
    return Event(
        type=type_,
        stage=row.stage,
        reason=row.reason if row.outcome == "done" else f"{row.outcome}: {row.reason}",
        at=row.at,
        commit_from=row.from_commit,
        commit_to=row.to_commit,
        nodes=_failed_nodes(row),
        who=row.who,
        on_behalf=row.on_behalf,
        outcome=row.outcome,
    )


def _failed_nodes(row: AuditRow) -> NodeCounts | None:
    """A halt's evidence lists the nodes that failed on the head."""
    failed = json.loads(row.evidence).get("failed") if row.action == "halt" else None
    if not isinstance(failed, list):
        return None
    return NodeCounts("failed", len(failed), len(failed), tuple(str(n) for n in failed[:5]))
