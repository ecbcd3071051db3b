"""Node transitions as notifications, derived from state counts on the hub side.

Ingest stays as fast as it is: every ``notify_interval`` this compares the store's state
counts per stage with the previous ones. Nodes newly failed, refused or stale (and
nodes back to synced) are summed per stage and type while the counts keep moving, and
sent as ONE event once they held still for an interval: a broker restart that makes
10,000 nodes stale is one notification with counts and examples, not 10,000.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hub.config import HubConfig
from hub.notify.events import Event, NodeCounts
from hub.store import NodeQueries

Key = tuple[str | None, str]
"""(stage name or None for nodes of no stage, effective state)"""

WATCHED = {"failed": "node_failed", "refused": "node_refused", "stale": "node_stale",
           "drifted": "drift", "synced": "node_recovered"}  # fmt: skip
_BAD = ("failed", "refused", "error")
_MAX_HOLD = 10
"""Intervals a burst may keep growing before it is sent anyway."""


@dataclass
class _Burst:
    count: int
    ticks: int = 0


class NodeWatch:
    def __init__(self, cfg: HubConfig, store: NodeQueries, clock: Callable[[], float]) -> None:
        self._cfg = cfg
        self._store = store
        self._clock = clock
        self._last: dict[Key, int] | None = None
        """Counts of the previous check; None until the first (a baseline, no events)."""
        self._bursts: dict[Key, _Burst] = {}

    async def _counts(self, now: float) -> dict[Key, int]:
        counts: dict[Key, int] = {}
        for c in await self._store.state_counts(now):
            stage = self._cfg.stage_for_branch(c.branch)
            key = (stage.name if stage else None, c.state)
            counts[key] = counts.get(key, 0) + c.nodes
        return counts

    async def check(self) -> list[Event]:
        """One comparison; returns the events of the bursts that ended."""
        now = self._clock()
        counts = await self._counts(now)
        last, self._last = self._last, counts
        if last is None:
            return []
        moved: set[Key] = set()
        for stage, state in {*counts, *last}:
            if state not in WATCHED:
                continue
            rise = self._rise(counts, last, stage, state)
            if rise > 0:
                self._bursts.setdefault((stage, state), _Burst(0)).count += rise
                moved.add((stage, state))
        events = []
        for key, burst in list(self._bursts.items()):
            burst.ticks += 1
            if key in moved and burst.ticks < _MAX_HOLD:
                continue
            del self._bursts[key]
            events.append(await self._event(key, burst.count, counts.get(key, 0), now))
        return events

    @staticmethod
    def _rise(counts: dict[Key, int], last: dict[Key, int], stage: str | None, state: str) -> int:
        rise = counts.get((stage, state), 0) - last.get((stage, state), 0)
        if state != "synced":
            return rise
        # Recovered: back to synced from a bad state, not new nodes or finished rollouts.
        fell = sum(max(last.get((stage, s), 0) - counts.get((stage, s), 0), 0) for s in _BAD)
        return min(rise, fell)

    async def _event(self, key: Key, count: int, total: int, now: float) -> Event:
        stage_name, state = key
        stage = self._cfg.stage(stage_name) if stage_name else None
        examples: tuple[str, ...] = ()
        if stage is not None and state != "synced":
            _, rows = await self._store.list_nodes(now, [stage.branch], state, limit=5)
            examples = tuple(r.node for r in rows)
        plural = "s" * (count != 1)
        reason = {
            "failed": f"{count} node{plural} failed",
            "refused": f"{count} node{plural} refused a commit",
            "stale": f"{count} node{plural} went stale (not heard from)",
            "drifted": f"{count} more node{plural} drifted",
            "synced": f"{count} node{plural} recovered",
        }[state] + f"; {total} {state} now"
        return Event(WATCHED[state], stage_name, reason, now,
                     nodes=NodeCounts(state, count, total, examples))  # fmt: skip
