"""Agent budgets: idle RSS on the files target, and commit pushed -> applied latency.

Method: a real ``edgefleet-agent run`` process (files target, MQTT to a local
mosquitto, a file:// fleet repo with SSH-signed commits, poll interval one hour so only
the ref notification can trigger a fetch). Latency = from the moment the commit is in
the bare repository to the agent's retained status saying ``applied == commit``; the
notification is published right after the push, as the hub's Git watcher does. Idle RSS
= VmRSS and PSS of the agent process 5 s after its last apply; the modules it loaded
are listed so a heavy import (kubernetes_asyncio, asyncssh, aiohttp) would show.
Run: ``python bench/bench_agent.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import wire
from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher


def rss_kib(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return rss, pss


async def main(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-agent-"))
    broker = Mosquitto(work / "mq")
    broker.start()
    repo = FleetRepo(work / "repos")
    key = SigningKey.create(work / "key")
    setup = write_agent_config(
        work / "agent",
        repo.url,
        node="bench",
        allowed_signers=key.allowed_signers,
        mqtt_url=broker.url,
        interval=3600,
    )
    path = f"common/files{setup.root}/app.conf"
    repo.commit({path: "v0\n"}, sign=key)
    watcher = Watcher(broker.port, [wire.status_topic("bench")])
    await watcher.ready()
    proc = setup.popen("run")
    latencies: list[float] = []
    try:

        async def applied(commit: str) -> None:
            while True:
                msg = await watcher.next(30)
                if json.loads(msg.payload).get("applied") == commit:
                    return

        await applied(repo.head())
        for i in range(runs):
            sha = repo.commit({path: f"v{i + 1}\n"}, sign=key, push=False)
            started = time.perf_counter()
            repo.push("stable")
            await watcher.publish(wire.ref_topic("stable"), wire.ref_payload(sha, time.time()))
            await applied(sha)
            latencies.append(time.perf_counter() - started)
        await asyncio.sleep(5)
        rss, pss = rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        watcher.close()
        broker.stop()
    lat = sorted(latencies)
    print("| measure | value |")
    print("|---|---:|")
    median_ms = statistics.median(lat) * 1000
    print(f"| commit pushed -> applied, median of {runs} | {median_ms:.0f} ms |")
    print(f"| commit pushed -> applied, max | {lat[-1] * 1000:.0f} ms |")
    print(f"| agent idle RSS (files target, MQTT) | {rss / 1024:.1f} MB |")
    print(f"| agent idle PSS | {pss / 1024:.1f} MB |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
