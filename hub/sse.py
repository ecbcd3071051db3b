"""Live updates for the dashboard: server-sent events carrying the fleet summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web

from hub.errors import HubError
from hub.fleet import Fleet

log = logging.getLogger(__name__)

_KEEPALIVE = 15.0
_BUSY_SHARE = 0.25
"""At most this share of the time goes to summaries for live updates: a summary that
takes long (a million nodes: ~150 ms on PostgreSQL) spaces the pushes out."""


class Updates:
    """Pushes a fresh summary to SSE clients after ingest commits (at most every
    ``min_interval``, longer when a summary is slow) and every ``idle`` seconds anyway,
    since nodes go stale in silence."""

    def __init__(self, fleet: Fleet, min_interval: float = 0.25, idle: float = 5.0) -> None:
        self._fleet = fleet
        self._min_interval = min_interval
        self._idle = idle
        self._changed = asyncio.Event()
        self._clients: set[asyncio.Queue[str | None]] = set()

    def changed(self) -> None:
        self._changed.set()

    def subscribe(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._clients.discard(queue)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                waiter = asyncio.ensure_future(self._changed.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({waiter, stopper}, timeout=self._idle,
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                finally:
                    waiter.cancel()
                    stopper.cancel()
                if stop.is_set():
                    break
                self._changed.clear()
                took = 0.0
                if self._clients:
                    started = time.monotonic()
                    await self._push()
                    took = time.monotonic() - started
                await asyncio.sleep(max(self._min_interval, took * (1 / _BUSY_SHARE - 1)))
        finally:
            for queue in list(self._clients):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def _push(self) -> None:
        try:
            summary = await self._fleet.summary()
        except HubError as err:
            log.warning("summary for live updates failed: %s", err)
            return
        data = json.dumps(summary, separators=(",", ":"))
        for queue in list(self._clients):
            if queue.full():  # a slow client gets the newest state, not a backlog
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(data)


async def stream(request: web.Request, fleet: Fleet, updates: Updates) -> web.StreamResponse:
    """Server-sent events: ``event: summary`` with the summary JSON on every change."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                 "X-Accel-Buffering": "no"}
    )  # fmt: skip
    await resp.prepare(request)
    queue = updates.subscribe()
    try:
        first = json.dumps(await fleet.summary(), separators=(",", ":"))
        await resp.write(f"retry: 2000\nevent: summary\ndata: {first}\n\n".encode())
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), _KEEPALIVE)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if data is None:
                break
            await resp.write(f"event: summary\ndata: {data}\n\n".encode())
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        updates.unsubscribe(queue)
    return resp
