"""The MQTT wire contract shared by agent and hub (the only agent module the hub imports).

Topics and payload shapes are defined in docs/design.md ("MQTT contract"). Keep this
module free of I/O and third-party imports so the hub can use it cheaply.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Literal, TypedDict

SCHEMA: Final = 1
PREFIX: Final = "edgefleet/v1"
MAX_PAYLOAD: Final = 256 * 1024
"""Larger payloads are dropped by the hub; the agent truncates drift lists to stay below."""

State = Literal["synced", "progressing", "failed", "drifted", "refused", "error"]
STATES: Final[tuple[State, ...]] = (
    "synced",
    "progressing",
    "failed",
    "drifted",
    "refused",
    "error",
)
DriftKind = Literal["modified", "missing", "stopped", "extra", "disabled", "masked"]

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def valid_node_name(node: str) -> bool:
    """Node names become MQTT topic levels: no wildcards, separators or spaces."""
    return bool(_NODE_RE.match(node))


def status_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/status"


def online_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/online"


def events_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/events"


def cmd_topic(node: str) -> str:
    return f"{PREFIX}/node/{node}/cmd"


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


class StatusDoc(TypedDict, total=False):
    schema: int
    node: str
    labels: dict[str, str]
    version: str
    branch: str
    paths: list[str]
    desired: str | None
    applied: str | None
    last_good: str | None
    state: State
    reason: str
    message: str
    drift: list[DriftItem]
    drift_omitted: int
    """Drift items cut from ``drift`` to keep the payload under MAX_PAYLOAD."""
    resources: dict[str, int]
    health: dict[str, Any]
    heartbeat: float
    recipient: str
    """The node's age recipient (age1...), when it has an identity."""
    observed_at: float
    seq: int


class EventDoc(TypedDict, total=False):
    schema: int
    node: str
    seq: int
    at: float
    type: str
    commit: str | None
    details: dict[str, Any]


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
