"""Delivering the outbox: every sink in order, at its own pace, retried with backoff.

Each sink is worked through oldest first; a failure stops that sink (later
notifications wait, so they arrive in order) until its backoff delay passed, without
holding up other sinks. A delivery counts once the receiver answered 2xx; webhooks get
the body signed (``X-Edgefleet-Signature: sha256=<HMAC-SHA256 hex>``, with the secret
file read at each delivery) and the event id (``X-Edgefleet-Event-Id``) to dedup by.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from common.backoff import Backoff, ErrorKind
from hub.config import read_secret
from hub.errors import HubError
from hub.leader import Leadership, NotLeader
from hub.notify.config import MQTT_SINK, Sink
from hub.notify.events import HUB_EVENTS_TOPIC
from hub.store.outbox import NotifyOutbox, OutboxEntry

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], bool]
_BATCH = 100


class DeliveryFailed(Exception):
    def __init__(self, message: str, kind: ErrorKind = ErrorKind.TRANSIENT) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class _SinkState:
    sink: Sink | None
    """None: the MQTT topic."""
    backoff: Backoff
    not_before: float = 0.0
    failing: bool = False


class Deliverer:
    def __init__(
        self,
        sinks: tuple[Sink, ...],
        store: NotifyOutbox,
        publish: Publish,
        clock: Callable[[], float],
        leader: Leadership | None = None,
    ) -> None:
        """``leader``: of several hub replicas only the leader delivers (fenced)."""
        self._store = store
        self._leader = leader or Leadership()
        self._publish = publish
        self._clock = clock
        self._states = {s.name: _SinkState(s, Backoff(1.0, s.max_backoff)) for s in sinks}
        self._states[MQTT_SINK] = _SinkState(None, Backoff(1.0, 60.0))
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                self.wake.clear()
                if self._leader.is_leader():  # a standby queues; the leader delivers
                    await self._round(session, stop)
                waits = [s.not_before - self._clock() for s in self._states.values() if s.failing]
                timeout = min([max(w, 0.05) for w in waits], default=5.0)
                waiter = asyncio.ensure_future(self.wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({waiter, stopper}, timeout=min(timeout, 5.0),
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                finally:
                    waiter.cancel()
                    stopper.cancel()

    async def _round(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for name in self._states:
                    tg.create_task(self._drain(session, name, stop), name=f"notify-{name}")
        except* NotLeader:
            log.info("notification delivery stopped: this hub is not the leader any more")
        except* HubError as group:
            log.warning("notification delivery failed: %s", group.exceptions[0])

    async def _drain(self, session: aiohttp.ClientSession, name: str, stop: asyncio.Event) -> None:
        state = self._states[name]
        if self._clock() < state.not_before:
            return
        pace = state.sink.min_interval if state.sink is not None else 0.0
        due = await self._store.outbox_due(self._clock(), [name], _BATCH)
        if len(due) == _BATCH:
            self.wake.set()  # more are waiting: no pause before the next round
        for entry in due:
            if stop.is_set():
                return
            await self._leader.fence()
            try:
                await self._send(session, state.sink, entry)
            except DeliveryFailed as err:
                delay = state.backoff.failure(err.kind)
                state.not_before = self._clock() + delay
                if not state.failing:
                    log.warning("notification sink %s failing (retrying): %s", name, err)
                state.failing = True
                await self._store.outbox_retry(entry.id, state.not_before, str(err))
                return
            await self._store.outbox_delivered(entry.id, self._clock())
            if state.failing:
                log.info("notification sink %s recovered", name)
            state.failing = False
            state.backoff.success()
            if pace:
                # The pace chat webhooks accept; stop ends the wait early.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pace)

    async def _send(
        self, session: aiohttp.ClientSession, sink: Sink | None, entry: OutboxEntry
    ) -> None:
        body = entry.item.body.encode()
        if sink is None:
            if not self._publish(HUB_EVENTS_TOPIC, body, 1, False):
                raise DeliveryFailed("MQTT broker not connected")
            return
        headers = {"Content-Type": "application/json", "X-Edgefleet-Event-Id": entry.item.event_id,
                   "User-Agent": "edgefleet-hub"}  # fmt: skip
        if sink.secret_file is not None:
            try:
                secret = read_secret(sink.secret_file)
            except OSError as err:
                raise DeliveryFailed(f"cannot read {sink.secret_file}: {err}") from err
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Edgefleet-Signature"] = f"sha256={digest}"
        try:
            async with session.post(
                sink.url, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=sink.timeout), allow_redirects=False,
            ) as resp:  # fmt: skip
                if 200 <= resp.status < 300:
                    return
                # A 4xx other than timeout / too many requests would fail the same way.
                terminal = 400 <= resp.status < 500 and resp.status not in (408, 429)
                raise DeliveryFailed(
                    f"{sink.url} answered HTTP {resp.status}",
                    ErrorKind.TERMINAL if terminal else ErrorKind.TRANSIENT,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise DeliveryFailed(f"{sink.url}: {err or type(err).__name__}") from err
