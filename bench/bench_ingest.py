"""Hub ingest throughput: status messages/s committed to SQLite, against mosquitto_sub.

A real mosquitto, a real hub process and ``mosquitto_sub -q 1`` subscribe to the same
stream; one publisher process sends N QoS1 status messages for many nodes as fast as it
can. Reported: time until the hub has committed all N (``/metrics``) and until
mosquitto_sub has received all N, and their ratio; the hub's CPU time per message
(event-loop thread and whole process, from /proc: less sensitive than wall time to
other load on a shared machine); the load average around the run. Run from the
repository root:

    .venv/bin/python bench/bench_ingest.py [--messages 100000] [--nodes 10000]
        [--protocol 5|3.1.1] [--payload agent|legacy]

``--protocol 3.1.1`` runs the broker with ``max_inflight_messages 0``: MQTT 3.1.1 has
no receive maximum, and with acks sent after each commit mosquitto's default of 20
unacknowledged messages per client would cap the hub at ~200 messages/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[1]

PUBLISHER = r"""
import sys, time, json, threading
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from common import wire
from common.status import NodeReport, Status, encode_status
port, n, nodes, first = (int(a) for a in sys.argv[1:5])
legacy = sys.argv[5] == "legacy"
docs = []
for i in range(first, first + n):
    node = f"bench-{i % nodes:06d}"
    if legacy:  # an agent from before the typed contract: sorted keys, fields missing
        payload = wire.encode({
            "schema": 1, "node": node, "seq": i // nodes + 1, "state": "synced",
            "branch": "stable", "labels": {"site": f"s{i % 17}"}, "paths": ["common"],
            "desired": "a" * 40, "applied": "a" * 40, "last_good": "a" * 40,
            "reason": "", "message": "", "drift": [], "resources": {"files": 3},
            "health": {}, "version": "0.1.0", "observed_at": time.time(), "heartbeat": 30})
    else:  # what today's agent sends: the one builder's encoding
        payload = encode_status(Status(
            NodeReport(node, "synced", labels={"site": f"s{i % 17}"}, version="0.1.0",
                       branch="stable", paths=("common",), desired="a" * 40,
                       applied="a" * 40, last_good="a" * 40, resources={"files": 3}),
            i // nodes + 1, time.time(), 30.0, "bench-incarnation"))
    docs.append((wire.status_topic(node), payload))
c = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
# paho's mids wrap at 65535: keep at most 20000 unacknowledged publishes queued.
window = threading.Semaphore(20000)
c.on_publish = lambda *a: window.release()
c.connect("127.0.0.1", port)
c.loop_start()
print(time.time(), flush=True)
info = None
for topic, payload in docs:
    window.acquire()
    info = c.publish(topic, payload, qos=1)
info.wait_for_publish(120)
print(time.time(), flush=True)
c.disconnect()
c.loop_stop()
"""


def committed(hub: HubProc) -> int:
    text = hub.try_get("/metrics")  # {} while the hub is starting
    for line in text.splitlines() if isinstance(text, str) else []:
        if line.startswith("edgefleet_hub_messages_committed_total "):
            return int(float(line.split()[1]))
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(main thread, whole process) CPU seconds of ``pid``, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    main = total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may exit while we look
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            used = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            total += used
            if task.name == str(pid):
                main = used
    return main, total


def publish(port: int, n: int, nodes: int, publishers: int, payload: str) -> tuple[float, float]:
    """Run ``publishers`` processes sharing the N messages; returns (start, end) times."""
    per = n // publishers
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(port), str(per), str(nodes), str(k * per),
             payload],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        for k in range(publishers)
    ]  # fmt: skip
    starts, ends = [], []
    for proc in procs:
        assert proc.stdout is not None
        starts.append(float(proc.stdout.readline()))
    for proc in procs:
        assert proc.stdout is not None
        ends.append(float(proc.stdout.readline()))
        proc.wait()
    return min(starts), max(ends)


def sub_command(port: int, n: int, client_id: str = "bench-sub") -> list[str]:
    """mosquitto_sub -q 1 on every status topic, with a persistent session under
    ``client_id``, exiting after ``n`` messages: the reference consumer."""
    return ["mosquitto_sub", "-p", str(port), "-q", "1", "-c", "-i", client_id,
            "-C", str(n), "-t", "edgefleet/v1/node/+/status"]  # fmt: skip


def open_session(sub_cmd: list[str]) -> None:
    """Create ``sub_command``'s persistent session and subscription, then exit: the
    broker queues what is published until it comes back."""
    subprocess.run(
        [*sub_cmd[:-4], "-W", "1", *sub_cmd[-2:]], check=False,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


class Drain(NamedTuple):
    sub_done: float
    hub_up: float
    hub_done: float
    cpu: tuple[float, float]
    """Hub CPU seconds (main thread, process) from hub_up to hub_done."""


def wait_both(
    hub: HubProc,
    sub: subprocess.Popen[bytes],
    n: int,
    up: tuple[float, tuple[float, float]] | None = None,
) -> Drain:
    """Wall times of mosquitto_sub done, hub API up, hub all committed.

    ``up`` gives the start mark (wall time, hub CPU) when the hub is already running.

    The hub starts its MQTT connection right after its API is up, so the API answering
    marks the end of Python start-up. (Its first commit is no start mark: while the
    event loop is busy reading, the SQLite thread waits for the GIL, and the first
    commit can come late.)
    """
    assert hub.proc is not None
    pid = hub.proc.pid
    sub_done = hub_done = None
    hub_up, cpu_up = up if up is not None else (None, (0.0, 0.0))
    cpu_done = (0.0, 0.0)
    deadline = time.time() + 600
    while sub_done is None or hub_done is None:
        now = time.time()
        if sub_done is None and sub.poll() is not None:
            sub_done = now
        if hub_up is None:
            if hub.try_get("/api/v1/health"):
                hub_up, cpu_up = now, cpu_seconds(pid)
        elif hub_done is None and committed(hub) >= n:
            hub_done, cpu_done = time.time(), cpu_seconds(pid)
        if now > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)
    assert hub_up is not None
    cpu = (cpu_done[0] - cpu_up[0], cpu_done[1] - cpu_up[1])
    return Drain(sub_done, hub_up, hub_done, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="the hub's")
    parser.add_argument(
        "--mode", choices=("drain", "live"), default="drain",
        help="drain: N messages queued in the broker while both consumers are away, then "
        "both drain them (measures the consumers, not the publisher); live: consumers "
        "connected while the publishers send",
    )  # fmt: skip
    parser.add_argument(
        "--payload", choices=("agent", "legacy"), default="agent",
        help="agent: statuses as today's agent encodes them (common.status); legacy: as "
        "agents before the typed contract did (sorted keys, no drift_total, heartbeat 30)",
    )  # fmt: skip
    args = parser.parse_args()
    n = args.messages - args.messages % args.publishers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extra = "max_queued_messages 0\n"
        if args.protocol == "3.1.1":
            extra += "max_inflight_messages 0\n"
        broker = Mosquitto(root / "mosquitto", extra=extra)
        broker.start()
        sub_cmd = sub_command(broker.port, n)
        hub = HubProc(root / "hub", broker, token=None, mqtt_extra=f'protocol = "{args.protocol}"')
        load_before = os.getloadavg()[0]
        try:
            hub.start()  # creates the hub's persistent session and subscription
            if args.mode == "drain":
                open_session(sub_cmd)
                hub.stop()
                pub_start, pub_end = publish(
                    broker.port, n, args.nodes, args.publishers, args.payload
                )
                t0 = time.time()
                sub = subprocess.Popen(sub_cmd, stdout=subprocess.DEVNULL)
                hub.start(wait=False)
                drain = wait_both(hub, sub, n)
                sub_done, hub_start, hub_done = drain.sub_done, drain.hub_up, drain.hub_done
            else:
                sub = subprocess.Popen(sub_cmd, stdout=subprocess.DEVNULL)
                time.sleep(0.5)  # let mosquitto_sub subscribe (it has no readiness signal)
                assert hub.proc is not None
                cpu_start = cpu_seconds(hub.proc.pid)
                pub_start, pub_end = publish(
                    broker.port, n, args.nodes, args.publishers, args.payload
                )
                t0 = hub_start = pub_start
                drain = wait_both(hub, sub, n, up=(pub_start, cpu_start))
                sub_done, hub_done = drain.sub_done, drain.hub_done
        finally:
            hub.stop()
            broker.stop()
    sub_rate = n / (sub_done - t0)
    hub_rate = n / (hub_done - hub_start)
    print(f"### Hub ingest ({args.mode}, MQTT {args.protocol}): {n:,} QoS1 status messages "
          f"({args.payload}), {args.nodes:,} nodes\n")  # fmt: skip
    print("| who | seconds | messages/s |")
    print("|---|---:|---:|")
    print(f"| publishers ({args.publishers} paho processes) | {pub_end - pub_start:.2f} "
          f"| {n / (pub_end - pub_start):,.0f} |")  # fmt: skip
    print(f"| mosquitto_sub -q 1 (received) | {sub_done - t0:.2f} | {sub_rate:,.0f} |")
    print(f"| edgefleet hub (committed to SQLite) | {hub_done - hub_start:.2f} | {hub_rate:,.0f} |")
    print(f"\nhub / mosquitto_sub ratio: **{hub_rate / sub_rate:.2f}**")
    main_cpu, all_cpu = (c / n * 1e6 for c in drain.cpu)
    print(f"\nhub CPU per message: {main_cpu:.1f} us event-loop thread, {all_cpu:.1f} us "
          f"process (SQLite thread included); load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")  # fmt: skip
    if args.mode == "drain":
        print(
            "\n(hub time counted from its API being up, when it starts connecting: "
            "Python start-up excluded)"
        )


if __name__ == "__main__":
    main()
