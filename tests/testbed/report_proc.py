"""Run a Reporter in its own process so tests can SIGKILL it.

Usage: report_proc.py URL NODE STATE_DIR EVENTS
Prints ``CONNECTED`` once connected (if the broker is up) and ``EMITTED s1,s2,...``
after EVENTS events are durably in the outbox, then runs until killed (SIGTERM: clean
close).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from agent.config import MqttConfig
from agent.report import Reporter
from common.status import NodeReport


async def main(url: str, node: str, state_dir: Path, events: int) -> None:
    reporter = Reporter(MqttConfig(url=url), node, "stable", state_dir, print, print)
    await reporter.start()
    seqs = [reporter.emit_event("test", None, {"i": i}) for i in range(events)]
    print("EMITTED " + ",".join(map(str, seqs)), flush=True)
    reporter.publish_status(NodeReport(node, "synced", branch="stable"))
    if await reporter.wait_connected(10):
        print("CONNECTED", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await reporter.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])))
