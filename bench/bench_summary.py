"""Summary latency and hub memory at fleet scale.

Fills a hub database with N nodes (through the hub's own Store, realistic spread over
stages, states, labels and drift), starts a real hub process on it and measures
``GET /api/v1/summary`` latency (sequential requests) and the hub's RSS. Run from the
repository root:

    .venv/bin/python bench/bench_summary.py [--nodes 100000] [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub.store import Batch, StatusRow, Store
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto

STATES = ("synced",) * 90 + ("progressing",) * 4 + ("failed", "drifted") * 2 + ("error",)
BRANCHES = ("canary", "beta", "stable", "stable", "stable", "stable", "stable", "stable")


async def fill(db: Path, n: int) -> None:
    store = await Store.open(db)
    now = time.time()
    try:
        for start in range(0, n, 20_000):
            batch = Batch()
            for i in range(start, min(start + 20_000, n)):
                state = STATES[i % len(STATES)]
                drift = (
                    [{"target": "systemd", "subject": f"app{i % 7}.service", "kind": "modified",
                      "detail": ""}]
                    if state == "drifted" else []
                )  # fmt: skip
                node = f"node-{i:06d}"
                doc = {"schema": 1, "node": node, "seq": 1, "state": state,
                       "branch": BRANCHES[i % len(BRANCHES)], "labels": {"site": f"s{i % 40}"},
                       "drift": drift, "applied": "a" * 40, "desired": "a" * 40,
                       "observed_at": now}  # fmt: skip
                # 1% silent for long: stale; 0.5% offline via online rows below
                heard = now - 3600 if i % 100 == 7 else now
                batch.statuses.append(
                    StatusRow(node, doc["branch"], state, 1, "a" * 40, "a" * 40, len(drift), 30.0,
                              heard, 90.0, now, json.dumps(doc), True)
                )  # fmt: skip
                if i % 200 == 3:
                    batch.onlines.append((node, 0, now, 90.0, False))
            await store.write_batch(batch)
    finally:
        await store.close()


def timed_get(url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
    return (time.perf_counter() - t) * 1000, body


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = Mosquitto(root / "mosquitto")
        broker.start()
        hub = HubProc(root / "hub", broker, token=None)
        try:
            t = time.perf_counter()
            (root / "hub").mkdir()
            asyncio.run(fill(root / "hub" / "hub.db", args.nodes))
            fill_s = time.perf_counter() - t
            hub.start()
            assert hub.proc is not None
            rss_start = rss_mb(hub.proc.pid)
            summary = json.loads(timed_get(hub.url + "/api/v1/summary")[1])
            assert summary["nodes"] == args.nodes, summary["nodes"]
            lat = [timed_get(hub.url + "/api/v1/summary")[0] for _ in range(args.requests)]
            others = {
                path: statistics.median(timed_get(hub.url + path)[0] for _ in range(5))
                for path in ("/api/v1/summary?label=site", "/api/v1/nodes?state=failed&limit=100",
                             "/api/v1/nodes?stage=stable&limit=100&offset=50000",
                             "/api/v1/drift", "/metrics")
            }  # fmt: skip
            rss_end = rss_mb(hub.proc.pid)
        finally:
            hub.stop()
            broker.stop()
    lat.sort()
    p95 = lat[int(len(lat) * 0.95) - 1]
    print(f"### Hub at {args.nodes:,} nodes (database filled in {fill_s:.1f} s)\n")
    print("| measure | value | budget |")
    print("|---|---:|---:|")
    print(f"| /api/v1/summary median | {statistics.median(lat):.1f} ms | < 50 ms |")
    print(f"| /api/v1/summary p95 | {p95:.1f} ms | |")
    print(f"| /api/v1/summary max | {lat[-1]:.1f} ms | |")
    for path, ms in others.items():
        print(f"| {path} median | {ms:.1f} ms | |")
    print(f"| hub RSS after start | {rss_start:.0f} MB | |")
    print(f"| hub RSS after the requests | {rss_end:.0f} MB | < 300 MB |")
    states = ", ".join(f"{k} {v}" for k, v in summary["states"].items() if v)
    print(f"\nstates: {states}")


if __name__ == "__main__":
    main()
