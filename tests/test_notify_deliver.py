"""The deliverer against a real SQLite outbox and a real HTTP receiver: one sink's
notifications arrive in order and no faster than its rate limit; a sink that is down
does not hold up another."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from hub.notify.config import Sink
from hub.notify.deliver import Deliverer
from hub.store import Store
from hub.store.outbox import OutboxItem
from tests.testbed.mosquitto import free_port
from tests.testbed.wait import until


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "hub.db")
    yield s
    await s.close()


async def test_in_order_paced_and_a_dead_sink_holds_up_nobody(store: Store) -> None:
    got: list[tuple[float, str]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((time.monotonic(), request.headers["X-Edgefleet-Event-Id"]))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    chat = Sink("chat", f"http://127.0.0.1:{port}/hook", min_interval=0.3)
    dead = Sink("dead", f"http://127.0.0.1:{free_port()}/hook", max_backoff=1.0)
    now = time.time()
    await store.outbox_add([OutboxItem(f"e{i}", s.name, "{}", now, now)
                            for i in range(4) for s in (chat, dead)])  # fmt: skip
    deliverer = Deliverer((chat, dead), store, lambda *_a: True, time.time)
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    try:
        await until(lambda: len(got) == 4, 10, "four deliveries to the chat sink")
        assert [e for _, e in got] == ["e0", "e1", "e2", "e3"]
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(got)]
        assert min(gaps) >= 0.3 * 0.95, gaps  # the pace is a lower bound
        due = await store.outbox_due(time.time() + 3600, ["dead"], 10)
        assert [e.item.event_id for e in due] == ["e0", "e1", "e2", "e3"]
        assert due[0].attempts >= 1 and all(e.attempts == 0 for e in due[1:])
    finally:
        stop.set()
        await task
        await runner.cleanup()
