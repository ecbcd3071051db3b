"""The MQTT wire contract shared by agent and hub: topics, node names, payload shapes.

Topics and payload shapes are defined in docs/design.md ("MQTT contract"); the typed
status and event model, its one builder and its one strict parser are in
:mod:`common.status`. Keep this module free of I/O and third-party imports so the hub
can use it cheaply.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Literal, TypedDict

SCHEMA: Final = 1
PREFIX: Final = "edgefleet/v1"
MAX_PAYLOAD: Final = 256 * 1024
"""Larger payloads are dropped by the hub; the agent cuts drift lists to stay below."""

State = Literal["synced", "progressing", "failed", "drifted", "refused", "error", "deferred"]
STATES: Final[tuple[State, ...]] = (
    "synced",
    "progressing",
    "failed",
    "drifted",
    "refused",
    "error",
    "deferred",
)
DriftKind = Literal["modified", "missing", "stopped", "extra", "disabled", "masked"]

NODE_NAME_RULE: Final = (
    "1 to 128 ASCII letters, digits and . _ : -, starting with a letter or digit"
)
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def valid_node_name(node: str) -> bool:
    """The one node-name rule (agent config and hub): names become MQTT topic levels and
    URL path segments, so no wildcards, separators, spaces or non-ASCII."""
    return _NODE_RE.fullmatch(node) is not None


_INCARNATION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_incarnation(incarnation: str) -> bool:
    """An agent's incarnation: the random id of its state dir (see StatusDoc)."""
    return _INCARNATION_RE.fullmatch(incarnation) is not None


def status_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/status"


def online_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/online"


def events_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/events"


def cmd_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/cmd"


def wave_topic(node: str) -> str:
    """Retained, from the hub: the wave ref this node follows (``{"ref": ...}``)."""
    return f"{PREFIX}/node/{node}/wave"


def ref_topic(branch: str) -> str:
    return f"{PREFIX}/ref/{branch}"


def parse_node_topic(topic: str) -> tuple[str, str] | None:
    """``edgefleet/v1/node/<node>/<kind>`` -> (node, kind), else None."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != "node":
        return None
    return parts[3], parts[4]


class DriftItem(TypedDict):
    target: str
    subject: str
    kind: DriftKind
    detail: str


class HealthProblemDoc(TypedDict):
    target: str
    subject: str
    reason: str


class HealthDoc(TypedDict):
    ok: bool
    problems: list[HealthProblemDoc]


class StatusDoc(TypedDict, total=False):
    schema: int
    node: str
    labels: dict[str, str]
    version: str | None
    branch: str | None
    paths: list[str]
    desired: str | None
    applied: str | None
    last_good: str | None
    state: str
    """One of STATES from this agent; a newer agent may send a state this side does not know."""
    reason: str
    message: str
    drift: list[DriftItem]
    drift_total: int
    """How many objects drifted; ``drift`` may carry fewer (cut to fit MAX_PAYLOAD)."""
    drift_omitted: int
    """``drift_total - len(drift)`` when items were cut; kept for hubs before drift_total."""
    resources: dict[str, int]
    health: HealthDoc
    deferred_until: float | None
    """State ``deferred``: when the node expects to apply (window opening, lock expiry)."""
    heartbeat: float
    recipient: str
    """The node's age recipient (age1...), when it has an identity (agent 0.2)."""
    observed_at: float | None
    seq: int
    incarnation: str
    """Random id of the agent's state dir: a new one (re-imaged node) restarts the seqs."""


class EventDoc(TypedDict, total=False):
    schema: int
    node: str
    seq: int
    at: float
    type: str
    commit: str | None
    details: dict[str, Any]
    incarnation: str


def encode(doc: StatusDoc | EventDoc | dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def ref_payload(commit: str, at: float) -> bytes:
    return encode({"commit": commit, "at": at})


def parse_ref_payload(payload: bytes) -> str | None:
    """The commit named by a ``ref/<branch>`` message, or None if it is malformed."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    commit = doc.get("commit") if isinstance(doc, dict) else None
    if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit):
        return commit
    return None


def plan_topic(node: str) -> str:
    """A node's answers to the hub's ``plan`` commands (see :mod:`common.plan`)."""
    return f"{PREFIX}/node/{node}/plan"
