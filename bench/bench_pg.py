"""Hub replicas on PostgreSQL: ingest with 1, 2 and 3 replicas, summary and drift
latency at fleet scale, leader failover time.

A real PostgreSQL 15 (a private cluster, as the tests run it: ``fsync=off``), a real
mosquitto, real hub processes on one database and a shared subscription, and
``mosquitto_sub -q 1`` on the same stream as the reference. Ingest is live: publishers
send N QoS1 status messages while every consumer is connected; a run ends when the
replicas' ``/metrics`` add up to N committed. Run from the repository root (as root:
initdb runs as ``postgres``):

    .venv/bin/python bench/bench_pg.py [--messages 60000] [--nodes 10000] [--fleet 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ingest import committed, cpu_seconds, publish
from bench.bench_summary import timed_get
from hub.store import Batch, StatusRow
from hub.store.pg import PgStore
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.postgres import Postgres


def ingest(root: Path, pg: Postgres, replicas: int, n: int, nodes: int) -> str:
    # A broker per run: the stopped replicas' persistent sessions of an earlier run would
    # stay in the shared group and take their share of the messages.
    broker = Mosquitto(root / f"mosquitto-{replicas}", extra="max_queued_messages 0\n")
    broker.start()
    url = pg.new_database()
    hubs = [HubProc(root / f"ingest{replicas}-{k}", broker, token=None, database=url)
            for k in range(replicas)]  # fmt: skip
    for hub in hubs:
        hub.start()
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(broker.port), "-q", "1", "-C", str(n),
         "-t", "edgefleet/v1/node/+/status"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # mosquitto_sub has no readiness signal
    try:
        cpu0 = [cpu_seconds(h.proc.pid)[1] for h in hubs if h.proc]
        start, _end = publish(broker.port, n, nodes, 2)
        sub_done = hub_done = None
        while sub_done is None or hub_done is None:
            if sub_done is None and sub.poll() is not None:
                sub_done = time.time()
            if hub_done is None and sum(committed(h) for h in hubs) >= n:
                hub_done = time.time()
                cpu1 = [cpu_seconds(h.proc.pid)[1] for h in hubs if h.proc]
                shares = [committed(h) for h in hubs]
            time.sleep(0.01)
    finally:
        for hub in hubs:
            hub.stop()
        broker.stop()
    hub_rate, sub_rate = n / (hub_done - start), n / (sub_done - start)
    per_msg = ", ".join(
        f"{(c1 - c0) / max(s, 1) * 1e6:.0f}" for c0, c1, s in zip(cpu0, cpu1, shares, strict=True)
    )
    return (f"| {replicas} | {hub_rate:,.0f} | {sub_rate:,.0f} | {hub_rate / sub_rate:.2f} | "
            f"{per_msg} |")  # fmt: skip


async def fill(url: str, n: int) -> None:
    store = await PgStore.open(url)
    now = time.time()
    states = ("synced",) * 90 + ("progressing",) * 4 + ("failed", "drifted") * 2 + ("error",)
    branches = ("canary", "beta") + ("stable",) * 6
    try:
        for first in range(0, n, 20_000):
            batch = Batch()
            for i in range(first, min(first + 20_000, n)):
                state, node = states[i % len(states)], f"node-{i:07d}"
                item = {"target": "systemd", "subject": f"app{i % 7}.service", "kind": "modified"}
                drift = [{**item, "detail": ""}] if state == "drifted" else []
                doc = {"schema": 1, "node": node, "seq": 1, "state": state,
                       "branch": branches[i % 8], "labels": {"site": f"s{i % 40}"},
                       "drift": drift, "applied": "a" * 40, "desired": "a" * 40}  # fmt: skip
                heard = now - 3600 if i % 100 == 7 else now
                batch.statuses.append(StatusRow(node, doc["branch"], state, 1, "a" * 40, "a" * 40,
                                                len(drift), 30.0, heard, 90.0, now,
                                                json.dumps(doc), True))  # fmt: skip
            await store.write_batch(batch)
    finally:
        await store.close()


def latency(root: Path, pg: Postgres, broker: Mosquitto, fleet: int) -> list[str]:
    url = pg.new_database()
    t = time.perf_counter()
    asyncio.run(fill(url, fleet))
    fill_s = time.perf_counter() - t
    pg.psql("VACUUM ANALYZE nodes", url.rsplit("/", 1)[1])  # what autovacuum does soon after
    hub = HubProc(root / f"fleet{fleet}", broker, token=None, database=url)
    hub.start()
    try:
        assert json.loads(timed_get(hub.url + "/api/v1/summary")[1])["nodes"] == fleet
        rows = []
        for path in ("/api/v1/summary", "/api/v1/drift", "/api/v1/nodes?state=failed&limit=100"):
            lat = sorted(timed_get(hub.url + path)[0] for _ in range(20))
            rows.append(f"| {path} at {fleet:,} nodes | {statistics.median(lat):.0f} ms | "
                        f"{lat[int(len(lat) * 0.95) - 1]:.0f} ms |")  # fmt: skip
    finally:
        hub.stop()
    return [*rows, f"| (database filled in {fill_s:.0f} s) | | |"]


def failover(root: Path, pg: Postgres, broker: Mosquitto, runs: int) -> list[float]:
    times = []
    for run in range(runs):
        url = pg.new_database()
        hubs = [HubProc(root / f"failover{run}-{k}", broker, token=None, database=url)
                for k in range(2)]  # fmt: skip
        for hub in hubs:
            hub.start()
        try:
            while not any(h.try_get("/api/v1/health").get("role") == "leader" for h in hubs):
                time.sleep(0.05)
            leader = next(h for h in hubs if h.try_get("/api/v1/health").get("role") == "leader")
            other = next(h for h in hubs if h is not leader)
            t = time.perf_counter()
            leader.kill()
            while other.try_get("/api/v1/health").get("role") != "leader":
                time.sleep(0.05)
            times.append(time.perf_counter() - t)
        finally:
            for hub in hubs:
                hub.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--fleet", type=int, action="append", help="default 100000")
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pg = Postgres.create()
        broker = Mosquitto(root / "mosquitto", extra="max_queued_messages 0\n")
        broker.start()
        load = os.getloadavg()[0]
        try:
            ingest_rows = [ingest(root, pg, r, args.messages, args.nodes) for r in (1, 2, 3)]
            latency_rows = [row for n in args.fleet or [100_000]
                            for row in latency(root, pg, broker, n)]  # fmt: skip
            times = failover(root, pg, broker, args.failovers)
        finally:
            broker.stop()
            pg.stop()
            shutil.rmtree(pg.directory, ignore_errors=True)
    print(f"### Ingest on PostgreSQL: {args.messages:,} QoS1 statuses, {args.nodes:,} nodes, "
          "live\n")  # fmt: skip
    print("| replicas | committed msg/s | mosquitto_sub msg/s | ratio | CPU µs/msg per replica |")
    print("|---:|---:|---:|---:|---|")
    print("\n".join(ingest_rows))
    print("\n### Reads (one replica)\n\n| request | median | p95 |\n|---|---:|---:|")
    print("\n".join(latency_rows))
    print(
        f"\n### Failover (kill -9 of the leader until the other says leader), {len(times)} runs\n"
    )
    print(", ".join(f"{t:.1f} s" for t in times))
    print(f"\nload average {load:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} CPUs)")  # fmt: skip


if __name__ == "__main__":
    main()
