"""Hub replicas on PostgreSQL: ingest with 1, 2 and 3 replicas, summary and drift
latency at fleet scale, leader failover time.

A real PostgreSQL 15 (a private cluster, as the tests run it: ``fsync=off``), a real
mosquitto, real hub processes on one database and a shared subscription, and
``mosquitto_sub -q 1`` on the same stream as the reference. Ingest runs two ways:

- live: publishers send N QoS1 status messages while every consumer is connected (the
  publishers set the pace);
- drain: the replicas' and mosquitto_sub's persistent sessions are created, the
  consumers stop, N messages are published and queued by the broker, then all
  consumers start at once: the replicas' rate is counted from the moment every
  replica's API is up (Python start-up excluded) over the messages committed after it.

A run ends when the replicas' ``/metrics`` add up to N committed. CPU per committed
message is read from /proc for each replica and for the PostgreSQL server (postmaster
and backends). Run from the repository root (as root: initdb runs as ``postgres``):

    .venv/bin/python bench/bench_pg.py [--messages 60000] [--nodes 10000]
        [--fleet 100000 --fleet 1000000] [--part live|drain|reads|failover ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ingest import committed, cpu_seconds, open_session, publish, sub_command
from bench.bench_summary import timed_get
from hub.store import Batch, StatusRow
from hub.store.pg import PgStore
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.postgres import Postgres

POLL = 0.05
"""Seconds between /metrics polls: each poll also computes a summary on that replica."""


class Mark(NamedTuple):
    """The replicas and the database server at one moment."""

    at: float
    committed: list[int]
    cpu: list[float]
    """CPU seconds of each replica process."""
    server_cpu: float


def server_cpu(pg: Postgres) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster and its children."""
    master = int((pg.directory / "data" / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(master)[1]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):  # a backend may exit meanwhile
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                total += cpu_seconds(int(stat.parent.name))[1]
    return total


def mark(hubs: list[HubProc], pg: Postgres) -> Mark:
    # /metrics first: a busy replica answers late, and the clock and CPU readings
    # must not come from before its answer.
    done = [committed(h) for h in hubs]
    cpu = [cpu_seconds(h.proc.pid)[1] for h in hubs if h.proc]
    return Mark(time.time(), done, cpu, server_cpu(pg))


def when_up(hub: HubProc) -> tuple[float, float]:
    """(wall time, CPU seconds) of ``hub`` just before its API first answered: read
    before asking, as once up the replica may drain for a while before it answers."""
    assert hub.proc is not None
    while True:
        before = time.time(), cpu_seconds(hub.proc.pid)[1]
        if hub.try_get("/api/v1/health"):
            return before
        time.sleep(0.01)


def all_up(hubs: list[HubProc], server: float) -> tuple[Mark, float]:
    """Wait for every replica's API, each watched by its own thread (one slow answer
    must not delay noticing another): a mark of the first one's moment with each
    replica's own CPU then, and the spread between first and last."""
    with ThreadPoolExecutor(len(hubs)) as pool:
        ups = list(pool.map(when_up, hubs))
    first = min(at for at, _cpu in ups)
    spread = max(at for at, _cpu in ups) - first
    return Mark(first, [0] * len(hubs), [cpu for _at, cpu in ups], server), spread


def exit_time(proc: subprocess.Popen[bytes]) -> Future[float]:
    """The wall time ``proc`` exits at, taken by a thread that waits for it (the
    replicas are polled less often than mosquitto_sub needs)."""

    def wait() -> float:
        proc.wait()
        return time.time()

    return ThreadPoolExecutor(1).submit(wait)


def until_committed(hubs: list[HubProc], pg: Postgres, n: int) -> Mark:
    """Poll until the replicas committed ``n`` in all; that moment."""
    deadline = time.time() + 600
    while sum((end := mark(hubs, pg)).committed) < n:
        if time.time() > deadline:
            raise SystemExit(f"timed out at {sum(end.committed)} of {n} committed")
        time.sleep(POLL)
    return end


def row(replicas: int, begin: Mark, end: Mark, sub_rate: float) -> str:
    n = sum(end.committed) - sum(begin.committed)
    rate = n / (end.at - begin.at)
    msgs = [e - b for b, e in zip(begin.committed, end.committed, strict=True)]
    cpu = [(e - b) / max(m, 1) * 1e6 for b, e, m in zip(begin.cpu, end.cpu, msgs, strict=True)]
    server = (end.server_cpu - begin.server_cpu) / max(n, 1) * 1e6
    return (f"| {replicas} | {rate:,.0f} | {sub_rate:,.0f} | {rate / sub_rate:.2f} | "
            f"{', '.join(f'{m:,}' for m in msgs)} | {', '.join(f'{c:.0f}' for c in cpu)} | "
            f"{server:.0f} |")  # fmt: skip


@contextlib.contextmanager
def replica_set(root: Path, pg: Postgres, name: str, replicas: int) -> Iterator[list[HubProc]]:
    """``replicas`` hubs (not started) on a new database and a broker of their own (a
    stopped replica's persistent session stays in the shared group and would take its
    share of a later run's messages); all stopped on exit."""
    broker = Mosquitto(root / f"{name}-mosquitto", extra="max_queued_messages 0\n")
    broker.start()
    url = pg.new_database()
    hubs = [HubProc(root / f"{name}-{k}", broker, token=None, database=url)
            for k in range(replicas)]  # fmt: skip
    try:
        yield hubs
    finally:
        for hub in hubs:
            hub.stop()
        broker.stop()


def live(root: Path, pg: Postgres, replicas: int, n: int, nodes: int) -> str:
    with replica_set(root, pg, f"live{replicas}", replicas) as hubs:
        for hub in hubs:
            hub.start()
        port = hubs[0].broker.port
        sub_end = exit_time(subprocess.Popen(sub_command(port, n), stdout=subprocess.DEVNULL))
        time.sleep(0.5)  # mosquitto_sub has no readiness signal
        begin = mark(hubs, pg)
        start, _end = publish(port, n, nodes, 2, "agent")
        end = until_committed(hubs, pg, n)
        sub_rate = n / (sub_end.result(600) - start)
    return row(replicas, begin._replace(at=start), end, sub_rate)


def drain(root: Path, pg: Postgres, replicas: int, n: int, nodes: int) -> tuple[str, str]:
    """The drain-mode row, and how far apart the replicas came up.

    Each replica's API answers before it connects to the broker: its CPU is counted
    from there, and the run's clock from the first replica's (the others' start-up
    is inside the time)."""
    with replica_set(root, pg, f"drain{replicas}", replicas) as hubs:
        port = hubs[0].broker.port
        sub_cmd = sub_command(port, n)
        for hub in hubs:
            hub.start()  # each replica's persistent session joins the shared group
        open_session(sub_cmd)
        for hub in hubs:
            hub.stop()  # SIGTERM: a clean disconnect, the sessions stay in the broker
        publish(port, n, nodes, 2, "agent")
        t0 = time.time()
        sub_end = exit_time(subprocess.Popen(sub_cmd, stdout=subprocess.DEVNULL))
        server = server_cpu(pg)  # from here: the replicas' start-up queries are counted too
        for hub in hubs:
            hub.start(wait=False)
        begin, spread = all_up(hubs, server)
        end = until_committed(hubs, pg, n)
        sub_rate = n / (sub_end.result(600) - t0)
    note = f"{replicas}: last API up {spread:.2f} s after the first"
    return row(replicas, begin, end, sub_rate), note


async def fill(url: str, n: int) -> None:
    """``n`` nodes written as ingest writes them (write_batch), 20,000 per transaction:
    2% failed, 2% drifted (one drift item), 1% not heard for an hour (stale)."""
    store = await PgStore.open(url)
    now = time.time()
    states = ("synced",) * 90 + ("progressing",) * 4 + ("failed", "drifted") * 2 + ("error",)
    branches = ("canary", "beta") + ("stable",) * 6
    try:
        for first in range(0, n, 20_000):
            batch = Batch()
            for i in range(first, min(first + 20_000, n)):
                state, node, branch = states[i % len(states)], f"node-{i:07d}", branches[i % 8]
                item = {"target": "systemd", "subject": f"app{i % 7}.service", "kind": "modified"}
                drift = [{**item, "detail": ""}] if state == "drifted" else []
                version = "0.2.0" if branch == "canary" else "0.1.0"
                doc = {"schema": 1, "node": node, "seq": 1, "state": state, "branch": branch,
                       "labels": {"site": f"s{i % 40}"}, "drift": drift, "applied": "a" * 40,
                       "desired": "a" * 40, "version": version}  # fmt: skip
                heard = now - 3600 if i % 100 == 7 else now
                # Heartbeat 600 s (stale after 30 min): a 1,000,000-node fill outlasts the
                # default 90 s, and the fresh nodes must stay fresh while being read.
                batch.statuses.append(StatusRow(node, branch, state, 1, "a" * 40, "a" * 40,
                                                len(drift), 600.0, heard, 90.0, now,
                                                json.dumps(doc), True, version))  # fmt: skip
            await store.write_batch(batch)
    finally:
        await store.close()


READS = ("/api/v1/summary", "/api/v1/drift", "/api/v1/nodes?state=failed&limit=100")


def timings(hub: HubProc) -> list[str]:
    """Median and p95 of 20 requests per path, as table cells."""
    cells = []
    for path in READS:
        lat = sorted(timed_get(hub.url + path)[0] for _ in range(20))
        cells.append(f"{statistics.median(lat):.0f} / {lat[int(len(lat) * 0.95) - 1]:.0f} ms")
    return cells


def latency(root: Path, pg: Postgres, broker: Mosquitto, fleet: int) -> list[str]:
    """Reads right after a hub (re)start, and again once VACUUM ANALYZE ran (as
    autovacuum does soon after many rows changed)."""
    url = pg.new_database()
    database = url.rsplit("/", 1)[1]
    t = time.perf_counter()
    asyncio.run(fill(url, fleet))
    fill_s = time.perf_counter() - t
    pg.psql("VACUUM ANALYZE nodes", database)  # after the fill, as autovacuum would
    hub = HubProc(root / f"fleet{fleet}", broker, token=None, database=url)
    t = time.perf_counter()
    hub.start(wait=False)
    hub.wait_ready(timeout=600)
    start_s = time.perf_counter() - t
    try:
        assert json.loads(timed_get(hub.url + "/api/v1/summary")[1])["nodes"] == fleet
        started = timings(hub)
        pg.psql("VACUUM ANALYZE nodes", database)
        vacuumed = timings(hub)
    finally:
        hub.stop()
    rows = [f"| `{path}` at {fleet:,} nodes | {a} | {b} |"
            for path, a, b in zip(READS, started, vacuumed, strict=True)]  # fmt: skip
    return [*rows, f"| ({fleet:,} nodes: filled in {fill_s:.0f} s, hub ready in "
            f"{start_s:.1f} s) | | |"]  # fmt: skip


def failover(root: Path, pg: Postgres, runs: int) -> list[float]:
    times = []
    for run in range(runs):
        with replica_set(root, pg, f"failover{run}", 2) as hubs:
            for hub in hubs:
                hub.start()
            while not any(h.try_get("/api/v1/health").get("role") == "leader" for h in hubs):
                time.sleep(0.05)
            leader = next(h for h in hubs if h.try_get("/api/v1/health").get("role") == "leader")
            other = next(h for h in hubs if h is not leader)
            t = time.perf_counter()
            leader.kill()
            while other.try_get("/api/v1/health").get("role") != "leader":
                time.sleep(0.05)
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--fleet", type=int, action="append", help="default 100000")
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--part", action="append", choices=PARTS, help="default: all")
    args = parser.parse_args()
    parts = args.part or PARTS
    n = args.messages - args.messages % 2  # two publishers
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pg = Postgres.create()
        broker = Mosquitto(root / "mosquitto", extra="max_queued_messages 0\n")
        broker.start()
        try:
            for part in parts:
                out += [f"\n### {HEADINGS[part].format(n=n, nodes=args.nodes)}\n",
                        f"(load average {os.getloadavg()[0]:.1f} before)\n"]  # fmt: skip
                if part in ("live", "drain"):
                    out += [INGEST_HEAD, "|---:|---:|---:|---:|---:|---|---:|"]
                    runs = [(live if part == "live" else drain)(root, pg, r, n, args.nodes)
                            for r in (1, 2, 3)]  # fmt: skip
                    out += [r if isinstance(r, str) else r[0] for r in runs]
                    if part == "drain":
                        out.append("\nreplicas: " + "; ".join(r[1] for r in runs))
                elif part == "reads":
                    out += ["| request (one replica) | after a hub start: median / p95 | "
                            "vacuumed: median / p95 |", "|---|---:|---:|"]  # fmt: skip
                    for fleet in args.fleet or [100_000]:
                        out += latency(root, pg, broker, fleet)
                else:
                    times = failover(root, pg, args.failovers)
                    out.append(", ".join(f"{t:.1f} s" for t in times))
        finally:
            broker.stop()
            pg.stop()
            shutil.rmtree(pg.directory, ignore_errors=True)
    print("\n".join(out))
    print(f"\nload average {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")


PARTS = ("live", "drain", "reads", "failover")
HEADINGS = {
    "live": "Ingest, live: {n:,} QoS1 statuses for {nodes:,} nodes",
    "drain": "Ingest, drain: {n:,} QoS1 statuses for {nodes:,} nodes queued, then drained",
    "reads": "Reads at fleet scale",
    "failover": "Failover (kill -9 of the leader until the other says leader)",
}
INGEST_HEAD = (
    "| replicas | committed msg/s | mosquitto_sub msg/s | ratio | messages per replica | "
    "CPU µs per committed message, per replica | PostgreSQL CPU µs per message |"
)


if __name__ == "__main__":
    main()
