"""Live updates (pure logic, a stand-in fleet): a slow summary spaces the pushes out, so
a dashboard on a very large fleet does not keep the database busy with summaries."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hub.sse import Updates


class SlowFleet:
    def __init__(self, takes: float) -> None:
        self.takes = takes
        self.summaries = 0

    async def summary(self) -> dict[str, Any]:
        self.summaries += 1
        await asyncio.sleep(self.takes)
        return {"nodes": self.summaries}


async def test_a_slow_summary_is_pushed_at_most_a_quarter_of_the_time() -> None:
    fleet = SlowFleet(takes=0.2)
    updates = Updates(fleet, min_interval=0.01, idle=60)  # type: ignore[arg-type]
    client = updates.subscribe()
    stop = asyncio.Event()
    runner = asyncio.create_task(updates.run(stop))
    try:
        for _ in range(40):  # commits keep coming for 2 s
            updates.changed()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    # each push is followed by 3x its time of rest: <= 3 in 2 s (10 without the rule)
    assert 1 <= fleet.summaries <= 3, fleet.summaries
    assert not client.empty()
