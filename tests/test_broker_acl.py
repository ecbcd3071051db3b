"""packaging/mosquitto: the example config, TLS listener, password file and pattern ACL.

A real mosquitto runs the shipped edgefleet.conf (paths and port rewritten for the test)
with the shipped edgefleet.acl unchanged. Node credentials may publish only their own
topics and read their commands and the ref notifications; the hub reads every node and
may clear a node's retained status and online flag (forget).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from common import wire
from hub.notify.events import HUB_EVENTS_TOPIC
from tests.testbed.mosquitto import MOSQUITTO, TlsFiles, free_port, wait_port
from tests.testbed.mqtt import stop_client

EXAMPLES = Path(__file__).resolve().parents[1] / "packaging" / "mosquitto"
USERS = {"node-a": "pw-a", "node-b": "pw-b", "hub": "pw-hub"}


@dataclass
class Broker:
    port: int
    tls: TlsFiles


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    tls = TlsFiles.create(tmp_path / "tls")
    passwd = tmp_path / "edgefleet.passwd"
    passwd.write_text("")
    for user, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    port = free_port()
    conf = (EXAMPLES / "edgefleet.conf").read_text()
    for old, new in {
        "listener 8883": f"listener {port} 127.0.0.1",
        "/etc/mosquitto/certs/ca.pem": str(tls.ca),
        "/etc/mosquitto/certs/broker.pem": str(tls.cert),
        "/etc/mosquitto/certs/broker.key": str(tls.key),
        "/etc/mosquitto/edgefleet.passwd": str(passwd),
        "/etc/mosquitto/conf.d/edgefleet.acl": str(EXAMPLES / "edgefleet.acl"),
        "persistence true": "persistence false",
        "/var/lib/mosquitto/": f"{tmp_path}/",
    }.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    path = tmp_path / "mosquitto.conf"
    path.write_text(f"user root\nlog_dest stderr\n{conf}")
    with (tmp_path / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], stderr=log)
    try:
        wait_port(port)
        yield Broker(port, tls)
    finally:
        proc.terminate()
        proc.wait(5)


class Client:
    """A paho MQTT 5 client over TLS with a username; messages land in an asyncio queue."""

    def __init__(
        self,
        broker: Broker,
        user: str,
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.connected: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"acl-test-{user}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, USERS.get(user) if password is None else password)
        self.client.tls_set_context(ssl.create_default_context(cafile=str(broker.tls.ca)))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, 30)
        self.client.loop_start()

    def _resolve(self, fut: asyncio.Future[object], value: object) -> None:
        self.loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(value))

    def _on_connect(
        self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        self._resolve(self.connected, reason)  # type: ignore[arg-type]

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        with self._lock:
            fut = self.subacks[mid]
        self._resolve(fut, codes)  # type: ignore[arg-type]

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        item = (msg.topic, bytes(msg.payload))
        self.loop.call_soon_threadsafe(self.messages.put_nowait, item)

    async def ready(self) -> None:
        reason = await asyncio.wait_for(self.connected, 10)
        assert not reason.is_failure, reason

    async def subscribe(self, *topics: str) -> list[ReasonCode]:
        await self.ready()
        with self._lock:
            _, mid = self.client.subscribe([(t, 1) for t in topics])
            fut: asyncio.Future[list[ReasonCode]] = self.loop.create_future()
            self.subacks[mid] = fut
        return await asyncio.wait_for(fut, 10)

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        await self.ready()
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 5)

    async def next(self, timeout: float = 10.0) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.messages.get(), timeout)

    def close(self) -> None:
        stop_client(self.client)


@pytest.fixture
async def clients(broker: Broker) -> Iterator[dict[str, Client]]:  # type: ignore[misc]
    made = {user: Client(broker, user) for user in USERS}
    try:
        yield made
    finally:
        for c in made.values():
            c.close()


async def test_node_cannot_publish_another_nodes_topics(clients: dict[str, Client]) -> None:
    hub, a = clients["hub"], clients["node-a"]
    # The hub's real subscription is shared; the ACL must allow it.
    codes = await hub.subscribe("$share/edgefleet-hub/edgefleet/v1/node/+/status")
    assert not codes[0].is_failure, codes
    assert not (await hub.subscribe(wire.events_topic("+")))[0].is_failure
    # Forgeries first, then a's own status: the broker keeps a's order, so had any
    # forgery been delivered the hub would see it before a's own message.
    await a.publish(wire.status_topic("node-b"), b'{"forged": true}', retain=True)
    await a.publish(wire.events_topic("node-b"), b'{"forged": true}')
    await a.publish(wire.cmd_topic("node-b"), b'{"op": "sync"}')
    await a.publish(wire.ref_topic("stable"), b'{"commit": "forged"}')
    await a.publish(wire.status_topic("node-a"), b'{"own": true}', retain=True)
    assert await hub.next() == (wire.status_topic("node-a"), b'{"own": true}')
    assert hub.messages.empty()


async def test_node_reads_its_commands_and_refs_only(clients: dict[str, Client]) -> None:
    hub, a, b = clients["hub"], clients["node-a"], clients["node-b"]
    await hub.publish(wire.ref_topic("stable"), b'{"commit": "c1"}', retain=True)
    codes = await a.subscribe(
        wire.cmd_topic("node-a"),
        wire.ref_topic("stable"),
        wire.cmd_topic("node-b"),
        wire.status_topic("node-b"),
    )
    # mosquitto grants every subscription and silently filters what the ACL denies.
    assert not any(c.is_failure for c in codes[:2]), codes
    assert await a.next() == (wire.ref_topic("stable"), b'{"commit": "c1"}')
    assert not (await b.subscribe(wire.cmd_topic("node-b")))[0].is_failure
    await hub.publish(wire.cmd_topic("node-b"), b'{"op": "sync", "to": "b"}')
    await b.publish(wire.status_topic("node-b"), b'{"b": 1}')
    await hub.publish(wire.cmd_topic("node-a"), b'{"op": "sync", "to": "a"}')
    # b got its command; a sees neither b's command nor b's status, only its own command.
    assert await b.next() == (wire.cmd_topic("node-b"), b'{"op": "sync", "to": "b"}')
    assert await a.next() == (wire.cmd_topic("node-a"), b'{"op": "sync", "to": "a"}')
    assert a.messages.empty()


async def test_only_the_hub_tells_a_node_its_wave(clients: dict[str, Client]) -> None:
    hub, a, b = clients["hub"], clients["node-a"], clients["node-b"]
    assert not (await a.subscribe(wire.wave_topic("node-a"), wire.wave_topic("node-b")))[
        0
    ].is_failure
    assert not (await b.subscribe(wire.wave_topic("node-b")))[0].is_failure
    # b cannot point a at another ref; the hub's retained messages reach each node alone.
    await b.publish(wire.wave_topic("node-a"), b'{"ref": "forged"}', retain=True)
    await hub.publish(wire.wave_topic("node-b"), b'{"ref": "b"}', retain=True)
    await hub.publish(wire.wave_topic("node-a"), b'{"ref": "a"}', retain=True)
    assert await b.next() == (wire.wave_topic("node-b"), b'{"ref": "b"}')
    assert await a.next() == (wire.wave_topic("node-a"), b'{"ref": "a"}')
    assert a.messages.empty()


async def test_hub_reads_every_node(clients: dict[str, Client]) -> None:
    hub = clients["hub"]
    assert not (await hub.subscribe("edgefleet/v1/node/#"))[0].is_failure
    for node in ("node-a", "node-b"):
        c = clients[node]
        await c.publish(wire.online_topic(node), b"1", retain=True)
        await c.publish(wire.events_topic(node), b'{"seq": 1}')
    got = {await hub.next() for _ in range(4)}
    assert got == {
        (wire.online_topic("node-a"), b"1"),
        (wire.events_topic("node-a"), b'{"seq": 1}'),
        (wire.online_topic("node-b"), b"1"),
        (wire.events_topic("node-b"), b'{"seq": 1}'),
    }


async def test_only_the_hub_publishes_hub_events(clients: dict[str, Client]) -> None:
    hub, a = clients["hub"], clients["node-a"]
    assert not (await hub.subscribe(HUB_EVENTS_TOPIC))[0].is_failure
    # A node's forgery first: had it been delivered, the hub would see it before its own.
    await a.publish(HUB_EVENTS_TOPIC, b'{"type": "promotion", "forged": true}')
    await hub.publish(HUB_EVENTS_TOPIC, b'{"type": "halt"}')
    assert await hub.next() == (HUB_EVENTS_TOPIC, b'{"type": "halt"}')
    assert hub.messages.empty()


async def test_node_answers_plans_only_for_itself(clients: dict[str, Client]) -> None:
    hub, a = clients["hub"], clients["node-a"]
    # Every hub subscribes to plan answers itself (not shared): the answer goes to the asker.
    assert not (await hub.subscribe(wire.plan_topic("+")))[0].is_failure
    await a.publish(wire.plan_topic("node-b"), b'{"forged": true}')
    await a.publish(wire.plan_topic("node-a"), b'{"own": true}')
    assert await hub.next() == (wire.plan_topic("node-a"), b'{"own": true}')
    assert hub.messages.empty()


@pytest.mark.parametrize(("user", "password"), [("node-a", "wrong"), ("nobody", "x")])
async def test_bad_credentials_are_refused(broker: Broker, user: str, password: str) -> None:
    client = Client(broker, user, password)
    try:
        reason = await asyncio.wait_for(client.connected, 10)
        assert reason.is_failure
        assert reason.getName() in ("Not authorized", "Bad user name or password")
    finally:
        client.close()


async def test_hub_clears_a_nodes_retained_status_and_online(
    broker: Broker, clients: dict[str, Client]
) -> None:
    """What ``edgefleet-hub forget`` publishes: empty retained messages on a node's topics.
    Another node cannot do the same to it."""
    hub, a, b = clients["hub"], clients["node-a"], clients["node-b"]
    await a.publish(wire.status_topic("node-a"), b'{"last": "words"}', retain=True)
    await a.publish(wire.online_topic("node-a"), b"0", retain=True)
    await b.publish(wire.status_topic("node-a"), b"", retain=True)  # refused by the ACL
    before = Client(broker, "hub", client_id="acl-test-hub-before")
    try:
        await before.subscribe(wire.status_topic("node-a"))
        assert await before.next() == (wire.status_topic("node-a"), b'{"last": "words"}')
        await hub.publish(wire.status_topic("node-a"), b"", retain=True)
        await hub.publish(wire.online_topic("node-a"), b"", retain=True)
        assert await before.next() == (wire.status_topic("node-a"), b"")
    finally:
        before.close()
    after = Client(broker, "hub", client_id="acl-test-hub-after")
    try:
        await after.subscribe(wire.status_topic("node-a"), wire.online_topic("node-a"))
        # Anything still retained would arrive before this live message.
        await a.publish(wire.status_topic("node-a"), b'{"fresh": true}')
        assert await after.next() == (wire.status_topic("node-a"), b'{"fresh": true}')
        assert after.messages.empty()
    finally:
        after.close()
