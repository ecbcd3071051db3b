"""The plan contract: the hub asks nodes to dry-run a commit, each answers what it would do.

Request: ``{"op": "plan", "id", "commit", "ref"}`` on the node's ``cmd`` topic (nodes
already subscribe to it). Answer: ``{"id", "node", "commit", "ok", "changes":
[{"target", "subject", "action"}], "refused": {"reason", "message"} | null}`` on
``edgefleet/v1/node/<node>/plan`` (QoS 1, not retained). Answers carry subjects and
actions only, never file contents or diffs: a plan must not leak secrets. The hub parses
answers with the strict JSON reader of :mod:`common.strict`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from common.status import ContractError
from common.strict import load_object
from common.wire import MAX_PAYLOAD, encode

PLAN_OP: Final = "plan"
Action = Literal["created", "configured", "deleted"]
ACTIONS: Final[tuple[Action, ...]] = ("created", "configured", "deleted")
MAX_TEXT: Final = 4096
"""Longest target, subject, reason or message accepted in an answer."""

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
# A ref the node may fetch by name: no option-looking, relative or wildcard parts.
_REF_RE = re.compile(r"refs/[A-Za-z0-9._/-]{1,250}")


def valid_ref(ref: str) -> bool:
    """A full ref name (``refs/heads/x``, ``refs/tags/v1``, ``refs/pull/7/head``)."""
    return (
        _REF_RE.fullmatch(ref) is not None
        and ".." not in ref
        and "//" not in ref
        and not ref.endswith(("/", ".lock", "."))
    )


def valid_sha(sha: str) -> bool:
    return _SHA_RE.fullmatch(sha) is not None


@dataclass(frozen=True)
class PlanRequest:
    id: str
    commit: str
    ref: str | None = None
    """The ref the hub resolved ``commit`` from: the node may fetch it by that name."""

    def payload(self) -> bytes:
        return encode({"op": PLAN_OP, "id": self.id, "commit": self.commit, "ref": self.ref})


def parse_request(cmd: dict[str, Any]) -> PlanRequest:
    """A ``plan`` command (already a JSON object); ValueError says what is wrong."""
    rid, commit, ref = cmd.get("id"), cmd.get("commit"), cmd.get("ref")
    if not isinstance(rid, str) or not _ID_RE.fullmatch(rid):
        raise ValueError("id must be 1 to 64 of A-Z a-z 0-9 _ -")
    if not isinstance(commit, str) or not valid_sha(commit):
        raise ValueError("commit must be a full 40-character commit id")
    if ref is not None and (not isinstance(ref, str) or not valid_ref(ref)):
        raise ValueError("ref must be a full ref name such as refs/heads/main")
    return PlanRequest(rid, commit, ref)


@dataclass(frozen=True, slots=True)
class PlanChange:
    target: str
    subject: str
    action: Action


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    """The agent's refusal reason (Untrusted, InvalidCommit, GitUnreachable...)."""
    message: str


@dataclass(frozen=True)
class PlanAnswer:
    id: str
    node: str
    commit: str
    changes: tuple[PlanChange, ...] = ()
    refused: Refusal | None = None
    omitted: int = 0
    """Changes cut so the answer fits one MQTT message (counted, not listed)."""

    @property
    def ok(self) -> bool:
        return self.refused is None

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "commit": self.commit,
            "ok": self.ok,
            "changes": [
                {"target": c.target, "subject": c.subject, "action": c.action} for c in self.changes
            ],
            "refused": None
            if self.refused is None
            else {"reason": self.refused.reason, "message": self.refused.message},
            "omitted": self.omitted,
        }

    def payload(self) -> bytes:
        """The encoded answer; changes past what fits MAX_PAYLOAD are counted in omitted."""
        data = encode(self.doc())
        if len(data) <= MAX_PAYLOAD:
            return data
        kept = list(self.changes)
        while kept and len(data) > MAX_PAYLOAD:
            kept = kept[: len(kept) * 3 // 4]
            cut = PlanAnswer(self.id, self.node, self.commit, tuple(kept), self.refused,
                             self.omitted + len(self.changes) - len(kept))  # fmt: skip
            data = encode(cut.doc())
        return data


def _bad(detail: str) -> NoReturn:
    raise ContractError("bad_type", detail)


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if type(value) is not str or len(value) > MAX_TEXT:
        _bad(f"{key} must be a string of at most {MAX_TEXT} characters")
    return value


def _change(item: object) -> PlanChange:
    if type(item) is not dict:
        _bad("a change must be an object")
    action = item.get("action")
    if action not in ACTIONS:
        _bad(f"action {str(action)[:32]!r} is not one of {', '.join(ACTIONS)}")
    return PlanChange(_text(item, "target"), _text(item, "subject"), action)


def parse_answer(node: str, payload: bytes) -> PlanAnswer:
    """The strict reading of one answer on ``node``'s plan topic; ContractError if bad."""
    if len(payload) > MAX_PAYLOAD:
        raise ContractError("too_large", f"{len(payload)} bytes")
    doc = load_object(payload)
    if doc.get("node") != node:
        raise ContractError("node_mismatch", f"answer names {str(doc.get('node'))[:64]!r}")
    rid, commit, ok = doc.get("id"), doc.get("commit"), doc.get("ok")
    if type(rid) is not str or not _ID_RE.fullmatch(rid):
        _bad("id must be 1 to 64 of A-Z a-z 0-9 _ -")
    if type(commit) is not str or not valid_sha(commit):
        _bad("commit must be a full commit id")
    if type(ok) is not bool:
        _bad("ok must be true or false")
    changes = doc.get("changes")
    if type(changes) is not list:
        _bad("changes must be a list")
    refused_doc = doc.get("refused")
    refused = None
    if refused_doc is not None:
        if type(refused_doc) is not dict:
            _bad("refused must be an object or null")
        refused = Refusal(_text(refused_doc, "reason"), _text(refused_doc, "message"))
    if ok != (refused is None):
        _bad("ok must be true exactly when refused is null")
    omitted = doc.get("omitted", 0)
    if type(omitted) is not int or omitted < 0:
        _bad("omitted must be a non-negative integer")
    return PlanAnswer(rid, node, commit, tuple(_change(c) for c in changes), refused, omitted)
