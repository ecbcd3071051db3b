"""``forget``: remove a node the hub will not hear from again (decommissioned, renamed).

Three steps, in this order:

1. empty retained messages on the node's ``status`` and ``online`` topics, so the broker
   stops replaying its last words to new subscribers (a hub without a shared
   subscription, a dashboard, ``enroll``'s first-status wait). Not connected to the
   broker: nothing is done and the caller is told to retry;
2. one DELETE of its ``nodes`` row on the store's writer connection, and ingest forgets
   its last seq and incarnation, so whatever the node sends next is new;
3. an audit record (action ``forget``): who, when, why, and what the node last said.

Its events stay: they are the record of what the node did, and age out with the normal
event retention. A node that is still running reappears with its next status (its
heartbeat at the latest): forget is bookkeeping, not a ban; revoke the node's broker
credential to keep it out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from common import wire
from hub.config import HubConfig
from hub.errors import HubError
from hub.store import AuditRow, Store

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], bool]
_DELETE_NODE = "DELETE FROM nodes WHERE node = ?"


class ForgetRefused(HubError):
    """The node cannot be forgotten now; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Forgetter:
    def __init__(
        self,
        cfg: HubConfig,
        store: Store,
        publish: Publish,
        forget_seq: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._publish = publish
        self._forget_seq = forget_seq
        self._clock = clock

    async def forget(
        self, node: str, who: str, reason: str, on_behalf: str | None = None
    ) -> dict[str, Any]:
        """``who``: the authenticated user; ``on_behalf``: what the caller says it is."""
        now = self._clock()
        detail = await self._store.get_node(node, now)
        if detail is None:
            raise ForgetRefused(f"no node named {node!r} has reported", 404)
        for topic in (wire.status_topic(node), wire.online_topic(node)):
            if not self._publish(topic, b"", 1, True):
                raise ForgetRefused(
                    f"MQTT broker not connected: {node}'s retained messages cannot be "
                    "cleared; nothing was forgotten, try again later",
                    503,
                )
        # Through the store's writer and its lock: never concurrent with an ingest batch.
        await self._store._write(_DELETE_NODE, (node,), f"forgetting node {node}")
        self._forget_seq(node)
        row = detail.row
        stage = self._cfg.stage_for_branch(row.branch)
        last = {
            "node": node,
            "branch": row.branch,
            "state": row.state,
            "seq": row.seq,
            "applied": row.applied,
            "last_heard": row.last_heard,
        }
        await self._store.add_audit(
            AuditRow(
                now, "forget", stage.name if stage else "", who, row.applied, None, "done",
                False, reason, json.dumps(last, sort_keys=True), on_behalf,
            )
        )  # fmt: skip
        log.warning("forgot node %s (last seq %d) by %s: %s", node, row.seq, who, reason)
        return {"node": node, "forgotten": True, "events_kept": True, "last": last}
