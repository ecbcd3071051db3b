"""The hub's MQTT client against real brokers: password, TLS, 3.1.1, broker restarts;
in-process: decoding, acks, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.config import MqttSettings
from hub.mqtt import HubMqtt, Message
from tests.testbed.hubproc import HubProc, Publisher, status_doc
from tests.testbed.mosquitto import Mosquitto


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
    assert refused.try_get("/api/v1/health") == {"mqtt": "disconnected", "last_commit_at": None}

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


def settings(broker: Mosquitto, protocol: str, client_id: str) -> MqttSettings:
    return MqttSettings(url=broker.url, client_id=client_id, protocol=protocol, shared=False)  # type: ignore[arg-type]


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
        pub = Publisher(broker).connect(broker)
        try:
            for i in range(200):
                pub.publish("bp/x", str(i).encode())
        finally:
            pub.close()

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
        again = Inbox()
        async with running(HubMqtt(cfg, ["bp/+"], again)) as mqtt:
            await asyncio.wait_for(mqtt.ready.wait(), 10)
            pub = Publisher(broker).connect(broker)
            try:
                pub.publish("bp/marker", b"m")
            finally:
                pub.close()
            await again.wait_for(1)
        assert [m.topic for m in again.messages] == ["bp/marker"]
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
