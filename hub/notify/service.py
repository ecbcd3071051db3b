"""The notifier ``serve`` runs: takes events (rollout audit rows, node bursts), writes
one outbox row per interested sink, and runs the watcher and the deliverer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from hub.config import HubConfig
from hub.errors import HubError
from hub.leader import Leadership
from hub.notify.config import MQTT_SINK
from hub.notify.deliver import Deliverer, Publish
from hub.notify.events import Event, from_audit
from hub.notify.watch import NodeWatch
from hub.store import AuditRow, NodeQueries
from hub.store.outbox import NotifyOutbox, OutboxItem

log = logging.getLogger(__name__)

KEEP = 7 * 86400.0
"""Seconds outbox rows are kept (a receiver down longer loses its oldest notifications)."""


class NotifyStore(NodeQueries, NotifyOutbox, Protocol):
    """What notifications read and write."""


class Notifier:
    def __init__(
        self,
        cfg: HubConfig,
        store: NotifyStore,
        publish: Publish,
        clock: Callable[[], float] = time.time,
        leader: Leadership | None = None,
    ) -> None:
        """``leader``: of several hub replicas only the leader watches and delivers;
        every replica queues the audit rows it writes."""
        self._cfg = cfg
        self._leader = leader or Leadership()
        self._store = store
        self._clock = clock
        self._deliverer = Deliverer(cfg.notify, store, publish, clock, self._leader)
        self._watch = NodeWatch(cfg, store, clock)

    async def audited(self, row: AuditRow) -> None:
        """Hook of the rollout engine: each stored audit row becomes an event. The
        decision is made and audited already: a failure here must not undo it."""
        try:
            await self.send([from_audit(row)])
        except HubError as err:
            log.error("notification of %s %s lost: %s", row.action, row.stage, err)

    async def send(self, events: list[Event]) -> None:
        """Queue ``events`` in the outbox for every sink that wants them (and MQTT)."""
        now = self._clock()
        url = self._cfg.hub.public_url
        items = []
        for event in events:
            items.append(OutboxItem(event.id, MQTT_SINK, event.body("json", url), now, now))
            for sink in self._cfg.notify:
                if sink.wants(event.type, event.stage) and _above(event, sink.drift_threshold):
                    items.append(
                        OutboxItem(event.id, sink.name, event.body(sink.format, url), now, now)
                    )
        await self._store.outbox_add(items)
        self._deliverer.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deliverer.run(stop), name="notify-deliver")
            tg.create_task(self._watch_loop(stop), name="notify-watch")

    async def _watch_loop(self, stop: asyncio.Event) -> None:
        interval = self._cfg.hub.notify_interval
        while not stop.is_set():
            try:
                # A standby keeps its baseline too: elected, it reports only what is new.
                events = await self._watch.check()
                if events and self._leader.is_leader():
                    await self.send(events)
                await self._store.outbox_prune(self._clock() - KEEP)
            except HubError as err:
                log.warning("notification check failed: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def _above(event: Event, threshold: int) -> bool:
    """Drift is sent when a stage's drifted nodes cross the sink's threshold upwards."""
    if event.type != "drift" or event.nodes is None:
        return True
    before = event.nodes.total - event.nodes.count
    return before <= threshold < event.nodes.total
