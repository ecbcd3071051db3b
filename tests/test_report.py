"""Reporter against a real mosquitto: connect, status, events, notifications, outages."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttConfig
from agent.errors import StateError
from agent.outbox import Outbox
from agent.report import Reporter
from agent.state import load_incarnation
from common import wire
from common.backoff import Backoff
from common.status import NodeReport
from common.strict import parse_status
from tests.testbed.mosquitto import Mosquitto, TlsFiles
from tests.testbed.mqtt import Watcher
from tests.testbed.sockets import sockets_to
from tests.testbed.wait import until

HELPER = Path(__file__).parent / "testbed" / "report_proc.py"
REPO = Path(__file__).parent.parent


@dataclass
class Inbox:
    refs: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    cmds: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


@pytest.fixture
def node() -> str:
    return f"n-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make(tmp_path: Path, node: str) -> AsyncIterator[Callable[..., Reporter]]:
    made: list[Reporter] = []
    inbox = Inbox()

    def factory(
        cfg: MqttConfig, state: str = "state", name: str | None = None, **kw: Any
    ) -> Reporter:
        rep = Reporter(
            cfg,
            name or node,
            "canary",
            tmp_path / state,
            inbox.refs.put_nowait,
            inbox.cmds.put_nowait,
            **kw,
        )
        rep.inbox = inbox  # type: ignore[attr-defined]
        made.append(rep)
        return rep

    yield factory
    for rep in made:
        await rep.close()


@pytest.fixture
async def watcher_factory() -> AsyncIterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def factory(port: int, topics: list[str], **kw: Any) -> Watcher:
        w = Watcher(port, topics, **kw)
        made.append(w)
        return w

    yield factory
    for w in made:
        w.close()


# -- pure logic ---------------------------------------------------------------------


# -- against mosquitto ------------------------------------------------------------------


async def test_status_retained_online_and_clean_close(
    mosquitto: Mosquitto,
    make: Callable[..., Reporter],
    node: str,
    watcher_factory: Callable[..., Watcher],
) -> None:
    rep = make(MqttConfig(url=mosquitto.url))
    await rep.start()
    assert await rep.wait_connected(10)
    rep.publish_status(NodeReport(node, "synced", branch="canary", applied="a" * 40))
    online = watcher_factory(mosquitto.port, [wire.online_topic(node)])
    assert (await online.next()).payload == b"1"
    # A fresh subscriber gets the retained status.
    status = watcher_factory(mosquitto.port, [wire.status_topic(node)])
    msg = await status.next()
    doc = json.loads(msg.payload)
    assert msg.retain
    assert doc["state"] == "synced" and doc["node"] == node and doc["schema"] == wire.SCHEMA
    assert doc["seq"] >= 1 and doc["heartbeat"] == 30.0 and doc["branch"] == "canary"
    assert abs(doc["observed_at"] - time.time()) < 10
    # what the hub reads: the contract parser accepts it, with the state dir's incarnation
    parsed = parse_status(node, msg.payload)
    assert parsed.incarnation == rep.incarnation and parsed.report.applied == "a" * 40
    await rep.close()
    assert (await online.next()).payload == b"0"
    assert not rep.connected


async def test_two_agents_under_one_node_id_back_off_and_say_why(
    mosquitto: Mosquitto, make: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    """A cloned disk image: two agents under one node id take the broker session from
    each other; each backs off instead of reconnecting in a tight loop, and says why."""
    caplog.set_level(logging.WARNING, logger="agent.report")
    twins = [make(MqttConfig(url=mosquitto.url), state=f"state{i}") for i in range(2)]
    for twin in twins:
        await twin.start()

    def hinted() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if "another node use client id" in r.getMessage()
        ]

    await until(lambda: len(hinted()) >= 4, timeout=30)
    lost = [r for r in caplog.records if "lost connection to broker" in r.getMessage()]
    assert len(lost) < 30, len(lost)  # backing off from 1 s, not one per millisecond


async def test_mqtt_311_works(
    mosquitto: Mosquitto,
    make: Callable[..., Reporter],
    node: str,
    watcher_factory: Callable[..., Watcher],
) -> None:
    rep = make(MqttConfig(url=mosquitto.url, protocol="3.1.1"))
    await rep.start()
    assert await rep.wait_connected(10)
    rep.publish_status(NodeReport(node, "progressing", branch="canary"))
    seq = rep.emit_event("applied", "b" * 40, {"changes": 1})
    w = watcher_factory(mosquitto.port, [wire.status_topic(node), wire.events_topic(node)])
    assert (
        json.loads((await w.next(topic=wire.status_topic(node))).payload)["state"] == "progressing"
    )
    # Events are not retained: publish another one now that the watcher listens.
    await w.ready()
    seq2 = rep.emit_event("drift", None, {})
    event = json.loads((await w.next(topic=wire.events_topic(node))).payload)
    assert event["seq"] in (seq, seq2) and event["node"] == node and "at" in event
    assert event["incarnation"] == rep.incarnation


async def test_heartbeat_republishes_with_fresh_seq_persisted_across_restart(
    mosquitto: Mosquitto,
    make: Callable[..., Reporter],
    node: str,
    watcher_factory: Callable[..., Watcher],
) -> None:
    w = watcher_factory(mosquitto.port, [wire.status_topic(node)])
    await w.ready()
    rep = make(MqttConfig(url=mosquitto.url, heartbeat=1.0))
    rep.publish_status(NodeReport(node, "synced", branch="canary"))
    await rep.start()
    first = json.loads((await w.next()).payload)
    second = json.loads((await w.next(timeout=5)).payload)  # no new status: the heartbeat
    assert second["seq"] > first["seq"] and second["observed_at"] > first["observed_at"]
    await rep.close()
    rep2 = make(MqttConfig(url=mosquitto.url, heartbeat=1.0))  # same state_dir
    rep2.publish_status(NodeReport(node, "synced", branch="canary"))
    await rep2.start()
    third = json.loads((await w.next()).payload)
    assert third["seq"] > second["seq"]
    assert third["incarnation"] == first["incarnation"]  # same state dir, same life


def test_incarnation_kept_in_state_dir_new_one_for_a_new_dir(tmp_path: Path) -> None:
    first = load_incarnation(tmp_path / "a")
    assert load_incarnation(tmp_path / "a") == first
    assert (tmp_path / "a" / "incarnation").read_text().strip() == first
    assert load_incarnation(tmp_path / "b") != first  # a re-imaged node: a new life
    (tmp_path / "a" / "incarnation").write_text("not/valid\n")
    with pytest.raises(StateError, match="corrupt"):
        load_incarnation(tmp_path / "a")


async def test_password_good_bad_and_rotation(
    mosquitto_auth: Mosquitto,
    make: Callable[..., Reporter],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = tmp_path / "good.pw"
    good.write_text("secret1\n")
    rep = make(MqttConfig(url=mosquitto_auth.url, username="node1", password_file=good))
    await rep.start()
    assert await rep.wait_connected(10)

    pw = tmp_path / "node.pw"
    pw.write_text("wrong\n")
    caplog.set_level(logging.DEBUG, logger="agent.report")
    # A refused password waits the longest delay (it would be refused again): 1 s here.
    bad = make(
        MqttConfig(url=mosquitto_auth.url, username="node1", password_file=pw),
        state="s2",
        name="other",
        backoff=Backoff(initial=1.0, maximum=1.0),
    )
    await bad.start()
    assert not await bad.wait_connected(2.5)  # covers at least two attempts
    refusals = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "unreachable" in r.message and r.name == "agent.report"
    ]
    assert len(refusals) == 1, "logged once, not on every retry"
    assert (
        "Bad user name or password" in refusals[0].message
        or "Not authorized" in refusals[0].message
    )
    assert any("still unreachable" in r.message for r in caplog.records), "kept retrying"
    pw.write_text("secret1\n")  # rotated: read again at the next attempt
    assert await bad.wait_connected(10)


async def test_tls_private_ca_and_wrong_ca(
    mosquitto_tls: Mosquitto,
    make: Callable[..., Reporter],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert mosquitto_tls.tls is not None
    rep = make(MqttConfig(url=mosquitto_tls.url, ca_file=mosquitto_tls.tls.ca))
    await rep.start()
    assert await rep.wait_connected(10)

    other = TlsFiles.create(tmp_path / "other-ca")
    wrong = make(MqttConfig(url=mosquitto_tls.url, ca_file=other.ca), state="s2", name="wrong")
    await wrong.start()
    assert not await wrong.wait_connected(1.5)
    assert "TLS certificate not trusted" in caplog.text
    assert sockets_to(mosquitto_tls.port) == 1  # the trusted one; the refused one is closed


async def test_ref_and_cmd_reach_callbacks_malformed_ignored(
    mosquitto: Mosquitto,
    make: Callable[..., Reporter],
    node: str,
    watcher_factory: Callable[..., Watcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rep = make(MqttConfig(url=mosquitto.url))
    await rep.start()
    assert await rep.wait_connected(10)
    hub = watcher_factory(mosquitto.port, [])
    await hub.publish(wire.ref_topic("canary"), b"{not json")
    await hub.publish(wire.ref_topic("canary"), b'{"commit": "nope"}')
    await hub.publish(wire.ref_topic("stable"), wire.ref_payload("f" * 40, 1.0))  # not our branch
    await hub.publish(wire.ref_topic("canary"), wire.ref_payload("c" * 40, 1.0), retain=True)
    await hub.publish(wire.cmd_topic(node), b"[1, 2]")
    await hub.publish(wire.cmd_topic(node), b'{"op": "sync"}')
    inbox = rep.inbox  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        assert await inbox.refs.get() == "c" * 40
        assert await inbox.cmds.get() == {"op": "sync"}
    assert inbox.refs.empty() and inbox.cmds.empty()
    assert caplog.text.count("ignoring malformed ref notification") == 2
    assert caplog.text.count("ignoring malformed command") == 1
    # The retained ref reaches a reporter that connects later (wakes a fresh agent).
    late = make(MqttConfig(url=mosquitto.url), state="late", name="late")
    await late.start()
    async with asyncio.timeout(10):
        assert await late.inbox.refs.get() == "c" * 40  # type: ignore[attr-defined]


async def spawn_reporter(
    url: str, node: str, state_dir: Path, events: int
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HELPER),
        url,
        node,
        str(state_dir),
        str(events),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def read_line(proc: asyncio.subprocess.Process, prefix: str) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, f"reporter process exited before printing {prefix}"
            if line.startswith(prefix):
                return line.strip()


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def test_lwt_offline_when_process_is_killed(
    mosquitto: Mosquitto, node: str, tmp_path: Path, watcher_factory: Callable[..., Watcher]
) -> None:
    online = watcher_factory(mosquitto.port, [wire.online_topic(node)])
    await online.ready()
    proc = await spawn_reporter(mosquitto.url, node, tmp_path / "state", 0)
    try:
        await read_line(proc, "CONNECTED")
        assert (await online.next()).payload == b"1"
    finally:
        await kill(proc)
    assert (await online.next()).payload == b"0"  # the broker's LWT, retained
    late = watcher_factory(mosquitto.port, [wire.online_topic(node)])
    msg = await late.next()
    assert msg.payload == b"0" and msg.retain


async def test_killed_process_pending_events_delivered_after_restart(
    mosquitto: Mosquitto,
    node: str,
    tmp_path: Path,
    make: Callable[..., Reporter],
    watcher_factory: Callable[..., Watcher],
) -> None:
    mosquitto.stop()  # broker down: the events can only go to the outbox
    proc = await spawn_reporter(mosquitto.url, node, tmp_path / "state", 5)
    try:
        emitted = [int(s) for s in (await read_line(proc, "EMITTED "))[8:].split(",")]
    finally:
        await kill(proc)
    assert emitted == [1, 2, 3, 4, 5]
    mosquitto.start()
    events = watcher_factory(mosquitto.port, [wire.events_topic(node)])
    await events.ready()
    rep = make(MqttConfig(url=mosquitto.url), state="state")  # the same state_dir
    assert rep.emit_event("started", None, {}) == 6  # seq continues after the restart
    await rep.start()
    got = [json.loads((await events.next()).payload)["seq"] for _ in range(6)]
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    await rep.close()
    assert Outbox(tmp_path / "state" / "outbox", 10).pending() == []  # all acked on disk
    assert events.queue.empty()


async def test_outage_status_and_every_event_arrive_once(
    mosquitto: Mosquitto,
    node: str,
    make: Callable[..., Reporter],
    watcher_factory: Callable[..., Watcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.report")
    # A watcher with a session, like the hub: it gets what was sent while it reconnected.
    mosquitto.extra = f"persistence true\npersistence_location {mosquitto.directory}/\n"
    mosquitto.stop()
    mosquitto.start()
    watch = watcher_factory(
        mosquitto.port,
        [wire.events_topic(node), wire.status_topic(node)],
        client_id=f"hub-{node}",
        session=True,
    )
    await watch.ready()
    # Its session counts as stable at once: the lost connection is retried at once.
    rep = make(MqttConfig(url=mosquitto.url), backoff=Backoff(stable=0.0))
    await rep.start()
    assert await rep.wait_connected(10)
    rep.publish_status(NodeReport(node, "synced", branch="canary"))
    before = rep.emit_event("applied", "a" * 40, {})
    got: list[int] = []
    while before not in got:
        msg = await watch.next()
        if msg.topic == wire.events_topic(node):
            got.append(json.loads(msg.payload)["seq"])

    await until(lambda: not rep.outbox.pending())  # PUBACKed: must not be sent again
    mosquitto.stop()
    await until(lambda: not rep.connected)
    during = [rep.emit_event("drift", None, {"i": i}) for i in range(20)]
    rep.publish_status(NodeReport(node, "drifted", branch="canary"))
    mosquitto.start()
    status = None
    async with asyncio.timeout(20):
        while not set(during) <= set(got) or status != "drifted":
            msg = await watch.next(timeout=20)
            if msg.dup:
                continue  # the broker's retransmission to the watcher, not a new publish
            if msg.topic == wire.events_topic(node):
                got.append(json.loads(msg.payload)["seq"])
            else:
                status = json.loads(msg.payload)["state"]
    assert len(got) == len(set(got)), f"duplicates: {got}"
    assert sorted(got) == [before, *during]
    assert caplog.text.count("lost connection to broker") == 1
    assert caplog.text.count("broker unreachable") == 1  # once, not per retry
    assert caplog.text.count("connected to broker") == 2
    assert "recovered" in caplog.text


class BlackHole:
    """A TCP port that completes the handshake (kernel backlog) but never speaks."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


async def test_loop_never_blocked_while_connecting_to_black_hole(
    make: Callable[..., Reporter], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hole = BlackHole()
    ca = TlsFiles.create(tmp_path / "tls").ca
    # TLS: connect() would sit in the handshake for CONNECT_TIMEOUT if run on the loop.
    rep = make(MqttConfig(url=f"mqtts://127.0.0.1:{hole.port}", ca_file=ca))
    loop = asyncio.get_running_loop()
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t - 0.01)

    tick = asyncio.create_task(ticker())
    try:
        await rep.start()
        assert not await rep.wait_connected(1.5)
        t0 = loop.time()
        await rep.close()  # abandons the blocked connect; must not wait for it
        closed_in = loop.time() - t0
    finally:
        tick.cancel()
        hole.close()
    assert len(lags) > 50
    worst = max(range(len(lags)), key=lags.__getitem__)
    assert lags[worst] < 0.1, f"loop blocked {lags[worst]:.3f}s at tick {worst} of {len(lags)}"
    assert closed_in < 1.0
    assert not rep.connected


@pytest.fixture
def mosquitto_acl(tmp_path: Path) -> Iterator[Mosquitto]:
    """Anonymous broker whose ACL lets agents publish status/online only, and read nothing."""
    broker = Mosquitto(
        tmp_path / "mosquitto-acl",
        acl="topic write edgefleet/v1/node/+/status\ntopic write edgefleet/v1/node/+/online\n",
    )
    broker.start()
    yield broker
    broker.stop()


async def test_acl_refused_event_is_logged_and_does_not_wedge(
    mosquitto_acl: Mosquitto, make: Callable[..., Reporter], caplog: pytest.LogCaptureFixture
) -> None:
    rep = make(MqttConfig(url=mosquitto_acl.url))
    await rep.start()
    assert await rep.wait_connected(10)
    rep.emit_event("applied", None, {})
    # MQTT 5 PUBACK says "not authorized": resending would be refused forever, so drop it.
    await until(lambda: not rep.outbox.pending())
    assert "broker refused event seq 1" in caplog.text
    assert rep.connected
    # Connected and idle with no status yet: the connection task sleeps, it does not spin.
    cpu = time.process_time()
    await asyncio.sleep(1.0)
    assert time.process_time() - cpu < 0.2
