"""The hub's MQTT client against real brokers: password, TLS, 3.1.1, broker restarts;
in-process: decoding, acks, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.config import MqttSettings
from hub.mqtt import HubMqtt, Message
from tests.testbed.hubproc import HubProc, Publisher, status_doc
from tests.testbed.mosquitto import Mosquitto, TlsFiles
from tests.testbed.sockets import sockets_to


def nodes(hub: HubProc) -> int:
    return int(hub.get("/api/v1/summary")["nodes"])


def test_password_auth_good_and_bad(
    hub_on: Callable[..., HubProc], mosquitto_auth: Mosquitto, tmp_path: Path
) -> None:
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("hubpw\n")
    bad.write_text("wrong\n")
    refused = hub_on(
        mosquitto_auth, start=False, mqtt_extra=f'username = "hub"\npassword_file = "{bad}"\n'
    )
    refused.start(wait=False)
    refused.wait_for(lambda: "unavailable" in refused.log_text())
    assert refused.try_get("/api/v1/health") == {
        "mqtt": "disconnected",
        "last_commit_at": None,
        "role": "leader",
    }

    hub = hub_on(mosquitto_auth, mqtt_extra=f'username = "hub"\npassword_file = "{good}"\n')
    pub = Publisher(mosquitto_auth, user=("node1", "secret1")).connect(mosquitto_auth)
    try:
        pub.status(status_doc("n1", 1))
        hub.wait_for(lambda: nodes(hub) == 1)
    finally:
        pub.close()
    assert refused.log_text().count("unavailable") == 1  # logged once, not per retry


def test_tls_with_private_ca(hub_on: Callable[..., HubProc], mosquitto_tls: Mosquitto) -> None:
    assert mosquitto_tls.tls is not None
    hub = hub_on(mosquitto_tls, mqtt_extra=f'ca_file = "{mosquitto_tls.tls.ca}"\n')
    pub = Publisher(mosquitto_tls).connect(mosquitto_tls)
    try:
        pub.status(status_doc("tls-node", 1))
        hub.wait_for(lambda: nodes(hub) == 1)
    finally:
        pub.close()


def test_two_hubs_with_one_client_id_back_off_and_say_why(
    hub_factory: Callable[..., HubProc],
) -> None:
    """mosquitto hands the session to the newest connection and drops the other without
    a reason: each hub backs off (no tight reconnect loop between the two) and its log
    names the likely cause."""
    first = hub_factory(client_id="edgefleet-hub-twin")
    second = hub_factory(client_id="edgefleet-hub-twin", start=False)
    second.start(wait=False)
    hint = "does another client use client_id 'edgefleet-hub-twin'?"
    for hub in (first, second):
        hub.wait_for(lambda h=hub: h.log_text().count(hint) >= 3, timeout=30)
    # backing off from 0.5 s: a few reconnects each, not one per millisecond
    connects = [h.log.read_text().count("MQTT connected") for h in (first, second)]
    assert sum(connects) < 40, connects


def test_mqtt_311_and_broker_restart(
    hub_factory: Callable[..., HubProc], mosquitto: Mosquitto
) -> None:
    hub = hub_factory(mqtt_extra='protocol = "3.1.1"\n')
    pub = Publisher(mosquitto).connect(mosquitto)
    pub.status(status_doc("a", 1))
    hub.wait_for(lambda: nodes(hub) == 1)
    pub.close()
    mosquitto.stop()  # persistence is off: the broker forgets the hub's session
    hub.wait_for(lambda: hub.get("/api/v1/health")["mqtt"] == "disconnected")
    mosquitto.start()
    hub.wait_for(lambda: hub.get("/api/v1/health")["mqtt"] == "connected", timeout=20)
    pub = Publisher(mosquitto).connect(mosquitto)
    try:
        pub.status(status_doc("b", 1))
        hub.wait_for(lambda: nodes(hub) == 2)
    finally:
        pub.close()


# -- the client in-process: delivery, acks, backpressure ----------------------------


class Inbox:
    """Collects what HubMqtt delivers; awaitable by count."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        self._arrived.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def running(mqtt: HubMqtt) -> AsyncIterator[HubMqtt]:
    stop = asyncio.Event()
    task = asyncio.create_task(mqtt.run(stop), name="hub-mqtt-under-test")
    try:
        yield mqtt
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def settings(
    broker: Mosquitto, protocol: str, client_id: str, ca_file: Path | None = None
) -> MqttSettings:
    return MqttSettings(
        url=broker.url,
        client_id=client_id,
        protocol=protocol,  # type: ignore[arg-type]
        shared=False,
        ca_file=ca_file,
    )


def publish(broker: Mosquitto, topic: str, count: int) -> None:
    """``count`` QoS 1 messages to ``topic``, payloads "0", "1", ..."""
    pub = Publisher(broker).connect(broker)
    try:
        for i in range(count):
            pub.publish(topic, str(i).encode())
    finally:
        pub.close()


async def redelivered(broker: Mosquitto, cfg: MqttSettings, topic: str) -> list[str]:
    """Topics a new connection of ``cfg``'s session receives before a fresh marker on
    ``topic``/marker: what the broker still holds unacked, then the marker."""
    again = Inbox()
    async with running(HubMqtt(cfg, [f"{topic}/+"], again)) as mqtt:
        await asyncio.wait_for(mqtt.ready.wait(), 10)
        publish(broker, f"{topic}/marker", 1)
        await again.wait_for(1)
    return [m.topic for m in again.messages]


class LogWaiter(logging.Handler):
    """Counts records of one logger that contain ``text``; awaitable by count."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.count = 0
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self.seen.set()


async def test_untrusted_tls_broker_leaves_no_socket_open(
    mosquitto_tls: Mosquitto, tmp_path: Path
) -> None:
    """paho leaves the socket of a failed TLS handshake open; the shared factory's TLS
    context closes it. Checked while the hub waits to retry, still holding the error."""
    other = TlsFiles.create(tmp_path / "other-ca")
    cfg = settings(mosquitto_tls, "5", f"hub-tls-{uuid.uuid4().hex[:8]}", ca_file=other.ca)
    waiter = LogWaiter("TLS certificate not trusted")
    logger = logging.getLogger("hub.mqtt")
    logger.addHandler(waiter)
    try:
        async with running(HubMqtt(cfg, ["t/+"], Inbox())) as mqtt:
            await asyncio.wait_for(waiter.seen.wait(), 10)
            assert not mqtt.ready.is_set()
            assert sockets_to(mosquitto_tls.port) == 0
    finally:
        logger.removeHandler(waiter)
    assert waiter.count == 1  # the second attempt waits the longest delay (terminal)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_reading_pauses_at_max_unacked_and_acks_reach_the_broker(
    tmp_path: Path, protocol: str
) -> None:
    # max_inflight_messages 0: for 3.1.1 the broker would send everything at once; for
    # MQTT 5 it does so anyway when a session resumes (it ignores the Receive Maximum).
    broker = Mosquitto(tmp_path / "mq", extra="max_inflight_messages 0\nmax_queued_messages 0\n")
    broker.start()
    try:
        cfg = settings(broker, protocol, f"hub-bp-{uuid.uuid4().hex[:8]}")
        async with running(HubMqtt(cfg, ["bp/+"], Inbox())) as first:
            await asyncio.wait_for(first.ready.wait(), 10)  # the session exists now
        publish(broker, "bp/x", 200)

        inbox = Inbox()
        async with running(HubMqtt(cfg, ["bp/+"], inbox, max_unacked=50)) as mqtt:
            await inbox.wait_for(50)
            await asyncio.sleep(0.3)  # nothing more may come while 50 are unacked
            assert len(inbox.messages) == 50
            for msg in inbox.messages[:20]:
                mqtt.ack(msg.mid, msg.qos)
            await inbox.wait_for(70)
            await asyncio.sleep(0.2)
            assert len(inbox.messages) == 70
            acked = 20
            while acked < 200:
                await inbox.wait_for(acked + 1)
                for msg in inbox.messages[acked:]:
                    mqtt.ack(msg.mid, msg.qos)
                acked = len(inbox.messages)
            await asyncio.wait_for(mqtt.ready.wait(), 10)  # the SUBACK came after them
        assert [m.payload for m in inbox.messages] == [str(i).encode() for i in range(200)]
        assert {(m.topic, m.qos, m.retain) for m in inbox.messages} == {("bp/x", 1, False)}

        # Every ack reached the broker (one PUBACK write per batch, right packet ids):
        # a new connection of the same session gets nothing redelivered.
        assert await redelivered(broker, cfg, "bp") == ["bp/marker"]
        assert "protocol error" not in (broker.directory / "mosquitto.log").read_text()
    finally:
        broker.stop()


async def test_messages_paho_decodes_arrive_the_same(mosquitto: Mosquitto) -> None:
    """MQTT 5 properties and QoS 0 take paho's own decoder or the fast path; retained
    messages carry their flag. All reach the callback as the same Message shape."""
    pub = Publisher(mosquitto).connect(mosquitto)
    try:
        pub.publish("dec/retained", b"r", retain=True)
        inbox = Inbox()
        cfg = settings(mosquitto, "5", f"hub-dec-{uuid.uuid4().hex[:8]}")
        async with running(HubMqtt(cfg, ["dec/+"], inbox)) as mqtt:
            await asyncio.wait_for(mqtt.ready.wait(), 10)
            await inbox.wait_for(1)
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = ("k", "v")
            pub.client.publish("dec/props", b"p", qos=1, properties=props).wait_for_publish(10)
            pub.client.publish("dec/qos0", b"z", qos=0).wait_for_publish(10)
            pub.publish("dec/plain", "ü".encode())
            await inbox.wait_for(4)
            for msg in inbox.messages:
                mqtt.ack(msg.mid, msg.qos)
    finally:
        pub.close()
    got = {(m.topic, m.payload, m.qos, m.retain) for m in inbox.messages}
    assert got == {
        ("dec/retained", b"r", 1, True),
        ("dec/props", b"p", 1, False),
        ("dec/qos0", b"z", 0, False),
        ("dec/plain", "ü".encode(), 1, False),
    }
    assert all(m.mid > 0 for m in inbox.messages if m.qos == 1)


async def test_acks_given_before_a_clean_stop_hold_for_the_next_session(tmp_path: Path) -> None:
    """A restarted hub takes its session over at once, and the broker drops what the old
    connection sent but it had not handled yet: written acks are not enough, their
    messages would be delivered again. A clean stop returns only once the broker
    confirmed it handled them (a PINGREQ after the acks)."""
    broker = Mosquitto(tmp_path / "mq", extra="max_inflight_messages 0\nmax_queued_messages 0\n")
    broker.start()
    try:
        cfg = settings(broker, "5", f"hub-stop-{uuid.uuid4().hex[:8]}")
        async with running(HubMqtt(cfg, ["st/+"], Inbox())) as first:
            await asyncio.wait_for(first.ready.wait(), 10)
        publish(broker, "st/x", 2000)

        inbox = Inbox()
        async with running(HubMqtt(cfg, ["st/+"], inbox)) as mqtt:
            await inbox.wait_for(2000)
            for msg in inbox.messages:
                mqtt.ack(msg.mid, msg.qos)
        assert len(inbox.messages) == 2000

        # Connects at once, as a restarted hub does.
        assert await redelivered(broker, cfg, "st") == ["st/marker"]
    finally:
        broker.stop()


@pytest.mark.parametrize("was_shared", [True, False])
async def test_a_hub_switching_subscription_form_drops_the_old_one(
    mosquitto: Mosquitto, was_shared: bool
) -> None:
    """The persistent session keeps the subscription a hub configured the other way made
    (e.g. shared before the SQLite default became a plain one): the hub drops it at
    connect, else every message would arrive twice."""
    client_id = f"hub-switch-{uuid.uuid4().hex[:8]}"
    before = dataclasses.replace(settings(mosquitto, "5", client_id), shared=was_shared)
    async with running(HubMqtt(before, ["sw/+"], Inbox())) as mqtt:
        await asyncio.wait_for(mqtt.ready.wait(), 10)
    inbox = Inbox()
    after = dataclasses.replace(before, shared=not was_shared)
    async with running(HubMqtt(after, ["sw/+"], inbox)) as mqtt:
        await asyncio.wait_for(mqtt.ready.wait(), 10)
        publish(mosquitto, "sw/a", 1)
        await inbox.wait_for(1)
        # The broker queues a message for every matching subscription as it takes it:
        # once a later one arrived, any second copy of the first would have too.
        publish(mosquitto, "sw/b", 1)
        await inbox.wait_for(2)
        for msg in inbox.messages:
            mqtt.ack(msg.mid, msg.qos)
    assert [m.topic for m in inbox.messages] == ["sw/a", "sw/b"]
