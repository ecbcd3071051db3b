"""The node's side of a fleet-wide plan: dry-run the commit the hub names, answer what
applying it would change here.

The hub sends ``{"op": "plan", "id", "commit", "ref"}`` on the node's cmd topic
(:mod:`common.plan`). The commit is fetched by id without moving the branch ref, then
checked and planned by the reconciler's own steps (:meth:`Reconciler.prepare`:
signature, history policy against the applied commit, desired state, every target's
plan), under the reconciler lock, so a node busy applying answers once it is done.
Nothing is applied, recorded or sent as an event; the answer carries subjects and
actions only, never contents.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from agent.changeset import Action
from agent.errors import FetchError, StateError
from agent.reconcile import Outcome, Reconciler
from agent.source import GitSource
from common.plan import (
    MAX_TEXT,
    PlanAnswer,
    PlanChange,
    PlanRequest,
    Refusal,
    parse_request,
)
from common.plan import Action as PlanAction
from common.wire import plan_topic

log = logging.getLogger(__name__)

QUEUE_MAX: Final = 16
"""Plan requests waiting while one runs; more are dropped (the hub reports the node silent)."""

_ACTIONS: Final[dict[Action, PlanAction]] = {
    Action.CREATED: "created",
    Action.CONFIGURED: "configured",
    Action.DELETED: "deleted",
}
"""What a plan answer may say; ``unchanged`` is never sent."""

Send = Callable[[str, bytes], bool]
"""Publish (topic, payload) QoS 1, not retained; False when it cannot be sent now."""


class PlanRunner:
    """Answers plan commands one at a time (a named task of the agent's task group)."""

    def __init__(self, node: str, reconciler: Reconciler, source: GitSource, send: Send) -> None:
        self._node = node
        self._reconciler = reconciler
        self._source = source
        self._send = send
        self._queue: asyncio.Queue[PlanRequest] = asyncio.Queue(QUEUE_MAX)

    def submit(self, cmd: dict[str, Any]) -> None:
        """Queue a ``plan`` command from the hub (called on the loop thread)."""
        try:
            request = parse_request(cmd)
        except ValueError as err:
            log.warning("ignoring malformed plan command: %s", err)
            return
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            log.warning("plan %s dropped: %d plans already waiting", request.id, QUEUE_MAX)

    async def run(self) -> None:
        while True:
            request = await self._queue.get()
            answer = await self.answer(request)
            verdict = "ok" if answer.ok else f"refused ({answer.refused and answer.refused.reason})"
            log.info("plan %s of %s: %s, %d change(s)", request.id, request.commit[:12], verdict,
                     len(answer.changes))  # fmt: skip
            if not self._send(plan_topic(self._node), answer.payload()):
                log.warning("plan %s: answer not sent, broker not connected", request.id)

    async def answer(self, request: PlanRequest) -> PlanAnswer:
        """Dry-run ``request.commit`` as an apply would; nothing changes on the node."""
        reconciler = self._reconciler
        commit = request.commit
        async with reconciler.lock:
            try:
                await self._source.fetch_candidate(commit, request.ref)
                planned = await reconciler.prepare(commit, advance=False, candidate=True)
            except FetchError as err:
                planned = Outcome("error", "FetchFailed", str(err), commit)
            except StateError as err:
                planned = Outcome("error", "StateError", str(err), commit)
        if isinstance(planned, Outcome):
            refusal = Refusal(planned.reason, planned.message[:MAX_TEXT])
            return PlanAnswer(request.id, self._node, commit, refused=refusal)
        changes = tuple(
            PlanChange(plan.target, change.subject, _ACTIONS[change.action])
            for plan in planned[1].values()
            for change in plan.writes
        )
        return PlanAnswer(request.id, self._node, commit, changes)
