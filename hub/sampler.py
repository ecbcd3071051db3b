"""Fleet state counts over time for the dashboard chart: a sample every 5 minutes, kept
48 hours, served as ``GET /api/v1/samples?hours=N``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from hub.errors import HubError
from hub.store import NodeQueries
from hub.store.samples import SampleStore

log = logging.getLogger(__name__)

INTERVAL = 300.0
KEEP_HOURS = 48


class SamplerStore(NodeQueries, SampleStore, Protocol):
    """What the sampler reads and writes."""


class StateSampler:
    def __init__(
        self,
        store: SamplerStore,
        leads: Callable[[], bool] = lambda: True,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``leads``: whether this hub samples now (of several replicas, the leader)."""
        self._store = store
        self._leads = leads
        self._interval = interval
        self._clock = clock

    async def sample(self) -> None:
        now = self._clock()
        states: dict[str, int] = {}
        for c in await self._store.state_counts(now):
            states[c.state] = states.get(c.state, 0) + c.nodes
        await self._store.add_sample(now, states)
        await self._store.prune_samples(now - KEEP_HOURS * 3600)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if self._leads():
                    await self.sample()
            except HubError as err:
                log.warning("state sample failed: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)


SAMPLES: web.AppKey[SampleStore] = web.AppKey("samples", SampleStore)


async def samples(request: web.Request) -> web.Response:
    raw = request.query.get("hours", "24")
    if not raw.isdigit() or not 1 <= int(raw) <= KEEP_HOURS:
        raise web.HTTPBadRequest(reason=f"hours must be an integer from 1 to {KEEP_HOURS}")
    store = request.app.get(SAMPLES)
    if store is None:
        return web.json_response({"interval": INTERVAL, "samples": []})
    rows = await store.samples(time.time() - int(raw) * 3600)
    return web.json_response(
        {"interval": INTERVAL, "samples": [{"at": s.at, "states": s.states} for s in rows]}
    )
