"""The typed status and event of the MQTT contract and the one status builder.

The agent builds a status from two parts: the reconciler's :class:`NodeReport` (what the
node looks like) and the reporter's delivery fields (seq, observed_at, heartbeat,
incarnation), joined in :class:`Status` and encoded by :func:`encode_status`, the one
place where drift lists are cut to fit MAX_PAYLOAD. The hub parses payloads into these
types with :mod:`common.strict` and stores :func:`status_json` / :func:`details_json` of
the validated value, never the raw payload (SQLite's JSON functions read the stored text
too, and must see exactly what was validated).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from common.wire import MAX_PAYLOAD, SCHEMA, DriftItem, HealthDoc, StatusDoc


class ContractError(Exception):
    """A payload that breaks the contract; ``reason`` names the hub's drop counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# NamedTuples, not frozen dataclasses: the hub builds these for every message it
# ingests, and a tuple is built in about half the time (no __setattr__ per field).
_EMPTY: Mapping[Any, Any] = MappingProxyType({})
"""Default of the mapping fields: shared, so read-only."""


class HealthProblem(NamedTuple):
    target: str
    subject: str
    reason: str


class Health(NamedTuple):
    ok: bool = True
    problems: tuple[HealthProblem, ...] = ()


class NodeReport(NamedTuple):
    """What the reconciler reports about the node (everything but delivery fields)."""

    node: str
    state: str
    """One of wire.STATES from this agent; a hub keeps any short state a newer agent sends."""
    labels: Mapping[str, str] = _EMPTY
    version: str | None = None
    branch: str | None = None
    paths: tuple[str, ...] = ()
    desired: str | None = None
    applied: str | None = None
    last_good: str | None = None
    reason: str = ""
    message: str = ""
    drift: tuple[DriftItem, ...] = ()
    drift_total: int = 0
    """How many objects drifted; ``drift`` may hold fewer once cut to fit a payload."""
    resources: Mapping[str, int] = _EMPTY
    health: Health = Health()
    deferred_until: float | None = None
    """State ``deferred``: when the node expects to apply (window opening, lock expiry)."""
    recipient: str | None = None
    """The node's age recipient, when it has an identity (agent 0.2)."""


class Status(NamedTuple):
    """One status message: the node's report plus what the reporter adds per delivery."""

    report: NodeReport
    seq: int
    observed_at: float | None = None
    heartbeat: float = 0.0
    incarnation: str | None = None
    """Random id of the agent's state dir; a new one means the seqs restarted."""


class Event(NamedTuple):
    node: str
    seq: int
    type: str
    at: float | None = None
    commit: str | None = None
    details: Mapping[str, Any] = _EMPTY
    incarnation: str | None = None


# -- builder ---------------------------------------------------------------------------


def status_doc(status: Status, keep: int | None = None) -> StatusDoc:
    """The wire document of ``status``, with only the first ``keep`` drift items."""
    r = status.report
    drift = list(r.drift if keep is None else r.drift[:keep])
    health: HealthDoc = {
        "ok": r.health.ok,
        "problems": [
            {"target": p.target, "subject": p.subject, "reason": p.reason}
            for p in r.health.problems
        ],
    }
    doc: StatusDoc = {
        "schema": SCHEMA,
        "node": r.node,
        "seq": status.seq,
        "state": r.state,
        "labels": dict(r.labels),
        "version": r.version,
        "branch": r.branch,
        "paths": list(r.paths),
        "desired": r.desired,
        "applied": r.applied,
        "last_good": r.last_good,
        "reason": r.reason,
        "message": r.message,
        "drift": drift,
        "drift_total": r.drift_total,
        "resources": dict(r.resources),
        "health": health,
        "heartbeat": status.heartbeat,
        "observed_at": status.observed_at,
    }
    if len(drift) < r.drift_total:
        doc["drift_omitted"] = r.drift_total - len(drift)
    if status.incarnation is not None:
        doc["incarnation"] = status.incarnation
    if r.deferred_until is not None:
        doc["deferred_until"] = r.deferred_until
    if r.recipient is not None:
        doc["recipient"] = r.recipient
    return doc


# check_circular off: a status built from parsed JSON or dataclasses has no cycles.
_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
).encode


def encode_status(status: Status, limit: int = MAX_PAYLOAD) -> bytes:
    """The agent's payload: drift halved until it fits ``limit``; drift_total stays true.

    Characters UTF-8 cannot carry (lone surrogates from undecodable file names) become
    "?": the hub refuses them, and one odd name must not silence the whole status.
    """
    keep = len(status.report.drift)
    while True:
        data = _encode(status_doc(status, keep)).encode("utf-8", "replace")
        if len(data) <= limit or keep == 0:
            return data
        keep //= 2


def status_json(status: Status) -> str:
    """Strict JSON of a parsed status (what the hub stores and serves)."""
    return _encode(status_doc(status))


def details_json(event: Event) -> str:
    return json.dumps(
        dict(event.details),
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
        sort_keys=True,
    )
