"""Fleet-wide plans: what promoting a commit into a stage would change on each node.

Rendering is per node, so only the nodes can say what a commit means for them: the hub
names the candidate (the source stage's head, or a ref / commit the operator gives,
resolved here with one ls-remote), sends ``plan`` to the stage's online nodes (all, or a
stable sample) on their cmd topics, collects the answers from their plan topics until
all answered or the timeout, and groups them by resource and action. Nothing is applied
and no branch moves. The latest plan per stage is kept in the store, so every hub
replica shows it whichever made it (answers come to every replica: plan topics are not
shared, and a replica keeps only the answers to its own requests).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypedDict

from common import wire
from common.backoff import ErrorKind
from common.gittransport import GitError, GitRemote
from common.plan import PlanAnswer, PlanRequest, parse_answer, valid_ref, valid_sha
from common.status import ContractError
from hub.config import HubConfig, Stage
from hub.errors import HubError, StoreError
from hub.states import OFFLINE, STALE
from hub.store import NodeState
from hub.store.plans import PlanRecords

log = logging.getLogger(__name__)

PLAN_TOPICS: Final = (wire.plan_topic("+"),)
"""Subscribed by every hub without the share group: answers go to the hub that asked."""
EXAMPLES: Final = 5
"""Node names listed per grouped change."""
SEND_RETRIES: Final = 20
SEND_PAUSE: Final = 0.05
"""Seconds between attempts to queue a request the MQTT client has no room for."""
DEFAULT_TIMEOUT: Final = 30.0
MAX_TIMEOUT: Final = 600.0


class PlanChangeJson(TypedDict):
    target: str
    subject: str
    action: str
    nodes: int
    examples: list[str]


class PlanRefusalJson(TypedDict):
    node: str
    reason: str
    message: str


PlanJson = TypedDict(
    "PlanJson",
    {
        "stage": str,
        "from": str | None,
        "to": str,
        "ref": str | None,
        "asked": int,
        "answered": int,
        "changes": list[PlanChangeJson],
        "refused": list[PlanRefusalJson],
        "silent": list[str],
        "omitted": int,
        "at": float,
    },
)
"""``from`` is the stage's head now, ``to`` the candidate (the keys are API names)."""


class PlanRefused(HubError):
    """The plan cannot be made (unknown ref, no candidate, broker down); says why."""

    def __init__(self, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class Sample:
    """How many of the stage's online nodes to ask: a count, or a percentage."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> Sample:
        """``"5"`` or ``"20%"``; ValueError says what is wrong."""
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:  # also refuses nan
                raise ValueError(f"sample percentage must be in (0, 100], got {text!r}")
            return cls(percent=percent)
        count = int(text)
        if count < 1:
            raise ValueError(f"sample must be at least 1 node, got {text!r}")
        return cls(count=count)

    def size(self, online: int) -> int:
        if self.count is not None:
            return min(self.count, online)
        assert self.percent is not None
        return min(online, max(1, math.ceil(online * self.percent / 100 - 1e-9)))


def pick(nodes: Iterable[str], sample: Sample | None) -> list[str]:
    """The nodes to ask: all, or the first of a stable hash order (the same nodes every
    time, whatever order the store lists them in)."""
    names = sorted(nodes)
    if sample is None:
        return names
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).digest())
    return sorted(ranked[: sample.size(len(names))])


def aggregate(
    stage: str,
    before: str | None,
    commit: str,
    asked: Iterable[str],
    answers: Mapping[str, PlanAnswer],
) -> PlanJson:
    """Group the answers: changes by (target, subject, action) with node counts,
    refusals with their cause, and the nodes that did not answer."""
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    refused: list[PlanRefusalJson] = []
    omitted = 0
    for node in sorted(answers):
        answer = answers[node]
        if answer.refused is not None:
            refused.append(
                {"node": node, "reason": answer.refused.reason, "message": answer.refused.message}
            )
            continue
        omitted += answer.omitted
        for c in answer.changes:
            groups[(c.target, c.subject, c.action)].append(node)
    changes: list[PlanChangeJson] = [
        {"target": t, "subject": s, "action": a, "nodes": len(ns), "examples": ns[:EXAMPLES]}
        for (t, s, a), ns in sorted(groups.items())
    ]
    asked = sorted(asked)
    return {
        "stage": stage,
        "from": before,
        "to": commit,
        "asked": len(asked),
        "answered": len(answers),
        "changes": changes,
        "refused": refused,
        "silent": [n for n in asked if n not in answers],
        "omitted": omitted,
        "at": time.time(),
        "ref": None,
    }


def refusal_summary(plan: PlanJson) -> str | None:
    """Why ``plan`` stops a promotion (nodes that would refuse it), or None."""
    refused = plan["refused"]
    if not refused:
        return None
    names = ", ".join(f"{r['node']} ({r['reason']})" for r in refused[:EXAMPLES])
    count = len(refused)
    return f"{count} node{'s' * (count != 1)} would refuse {plan['to'][:7]}: {names}"


def plan_evidence(plan: PlanJson) -> dict[str, object]:
    """What the audit log keeps of a plan (no per-change lists)."""
    return {"asked": plan["asked"], "answered": plan["answered"], "refused": plan["refused"],
            "silent": plan["silent"], "changes": len(plan["changes"])}  # fmt: skip


@dataclass
class _Waiting:
    commit: str
    asked: frozenset[str]
    answers: dict[str, PlanAnswer] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


Publish = Callable[[str, bytes, int, bool], bool]
StageNodes = Callable[[str, float], Awaitable[list[NodeState]]]


class Planner:
    """Asks nodes for plans and collects their answers (see module doc)."""

    def __init__(
        self,
        cfg: HubConfig,
        stage_nodes: StageNodes,
        publish: Publish,
        heads: Callable[[], Mapping[str, str]],
        records: PlanRecords,
    ) -> None:
        self._cfg = cfg
        self._stage_nodes = stage_nodes
        self._records = records
        self._publish = publish
        self._heads = heads
        self._remote = GitRemote(cfg.git) if cfg.git.url is not None else None
        self._waiting: dict[str, _Waiting] = {}

    def take(self, topic: str, payload: bytes) -> bool:
        """Handle ``payload`` if ``topic`` is a node's plan topic; False for other topics."""
        if not topic.endswith("/plan"):  # the ingest hot path: statuses, events
            return False
        parsed = wire.parse_node_topic(topic)
        if parsed is None or parsed[1] != "plan":
            return False
        self.receive(parsed[0], payload)
        return True

    def receive(self, node: str, payload: bytes) -> None:
        """One message from ``edgefleet/v1/node/<node>/plan`` (on the loop)."""
        try:
            answer = parse_answer(node, payload)
        except ContractError as err:
            # Loud only while a plan waits: otherwise nobody asked, and a flood stays quiet.
            level = logging.WARNING if self._waiting else logging.DEBUG
            log.log(level, "dropped plan answer of %s: %s", node[:64], err)
            return
        waiting = self._waiting.get(answer.id)
        if waiting is None or node not in waiting.asked or answer.commit != waiting.commit:
            return  # another hub's plan, or one that timed out already
        waiting.answers[node] = answer
        if len(waiting.answers) == len(waiting.asked):
            waiting.done.set()

    async def plan(
        self,
        name: str,
        commit: str | None = None,
        sample: Sample | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - how long nodes may take
    ) -> PlanJson:
        """Plan the candidate of stage ``name`` (or ``commit``: a ref or a full id)."""
        stage = self._cfg.stage(name)
        if stage is None:
            raise PlanRefused(f"unknown stage {name!r}")
        sha, ref = await self._candidate(stage, commit)
        online = [
            n.node
            for n in await self._stage_nodes(stage.branch, time.time())
            if n.state not in (STALE, OFFLINE)
        ]
        asked = pick(online, sample)
        request = PlanRequest(secrets.token_hex(8), sha, ref)
        waiting = self._waiting[request.id] = _Waiting(sha, frozenset(asked))
        try:
            try:
                async with asyncio.timeout(timeout):
                    for node in asked:
                        await self._send(wire.cmd_topic(node), request.payload())
                    if asked:
                        await waiting.done.wait()
            except TimeoutError:
                pass
        finally:
            del self._waiting[request.id]
        result = aggregate(name, self._heads().get(stage.branch), sha, asked, waiting.answers)
        result["ref"] = ref
        try:
            await self._records.save_plan(name, json.dumps(result), result["at"])
        except StoreError as err:  # the caller still gets its plan
            log.warning("plan of %s not kept for other viewers: %s", name, err)
        log.info("plan of %s for %s: %d/%d answered, %d change group(s), %d refused",
                 sha[:12], name, result["answered"], result["asked"], len(result["changes"]),
                 len(result["refused"]))  # fmt: skip
        return result

    async def _send(self, topic: str, payload: bytes) -> None:
        """Publish a request; a full client queue (thousands of nodes) drains as the
        broker acks, so wait for room rather than fail (bounded by the plan's timeout)."""
        for attempt in range(SEND_RETRIES + 1):
            if self._publish(topic, payload, 1, False):
                return
            if attempt < SEND_RETRIES:
                await asyncio.sleep(SEND_PAUSE)
        raise PlanRefused("MQTT broker not connected; try again later", True)

    async def _candidate(self, stage: Stage, commit: str | None) -> tuple[str, str | None]:
        """(commit id, ref it was resolved from) for the nodes."""
        if commit is None:
            source = self._cfg.stage(stage.promote_from) if stage.promote_from else None
            if source is None:
                raise PlanRefused(f"stage {stage.name} has no promote_from: name a --commit")
            head = self._heads().get(source.branch)
            if head is None:
                raise PlanRefused(f"the head of {source.branch} is not known yet", True)
            return head, f"refs/heads/{source.branch}"
        if valid_sha(commit):
            return commit, None
        names = [commit] if commit.startswith("refs/") else [f"refs/heads/{commit}",
                                                             f"refs/tags/{commit}"]  # fmt: skip
        if not all(valid_ref(n) for n in names):
            raise PlanRefused(f"{commit[:100]!r} is neither a full commit id nor a ref name")
        found = await asyncio.to_thread(self._ls_remote, names)
        for ref in names:
            # An annotated tag names a tag object; its commit is listed as ref^{}.
            sha = found.get(f"{ref}^{{}}") or found.get(ref)
            if sha is not None:
                return sha, ref
        raise PlanRefused(f"the Git server has no ref {commit[:100]!r}")

    async def latest(self) -> dict[str, PlanJson]:
        """Each stage's latest plan, whichever replica made it."""
        kept = await self._records.latest_plans()
        return {stage: json.loads(doc) for stage, doc in kept.items()}

    def _ls_remote(self, names: list[str]) -> dict[str, str]:
        if self._remote is None:
            raise PlanRefused("no [git] url configured: give a full commit id")
        try:
            refs = self._remote.refs("plan", [n.encode() for n in names])
        except GitError as err:
            raise PlanRefused(str(err), err.kind is ErrorKind.TRANSIENT) from err
        return {ref.decode(): sha.decode() for ref, sha in refs.items()}
