"""common.mqttloop on its own, against a real broker: the glue the reporter and the hub share."""

from __future__ import annotations

import asyncio
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from common.mqttloop import SocketBridge, connect_persistent
from tests.testbed.mosquitto import Mosquitto

PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


def make_client(client_id: str, protocol: str) -> mqtt.Client:
    v5 = protocol == "5"
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PROTOCOLS[protocol],
        clean_session=None if v5 else False,
        reconnect_on_failure=False,
    )


async def connect(client: mqtt.Client, broker: Mosquitto) -> bool:
    """Connect from a thread like the agent and hub do; the CONNACK's session_present."""
    connack: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_connect(
        _c: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, rc: object, _p: object
    ) -> None:
        connack.set_result(flags.session_present)

    client.on_connect = on_connect
    rc = await asyncio.to_thread(connect_persistent, client, "127.0.0.1", broker.port, 30, 600)
    assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
    async with asyncio.timeout(10):
        return await connack


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_bridge_drives_a_session_that_survives_reconnects(
    mosquitto: Mosquitto, protocol: str
) -> None:
    client_id = f"mqttloop-{uuid.uuid4().hex[:8]}"
    closed = asyncio.Event()
    for attempt in range(2):
        client = make_client(client_id, protocol)
        bridge = SocketBridge(client, client.loop_read, client.loop_write, closed.set)
        assert await connect(client, mosquitto) is (attempt == 1)  # the session is resumed
        assert bridge.fd >= 0
        assert bridge.resume_reading()
        closed.clear()
        client.disconnect()
        async with asyncio.timeout(10):
            await closed.wait()
        assert bridge.fd == -1
        assert not bridge.resume_reading()  # nothing left to read from


async def test_a_detached_bridge_ignores_the_connect_threads_socket(mosquitto: Mosquitto) -> None:
    client = make_client(f"mqttloop-{uuid.uuid4().hex[:8]}", "5")
    bridge = SocketBridge(client, client.loop_read, client.loop_write)
    bridge.detach()  # e.g. the owner gave up while connect() was still running
    rc = await asyncio.to_thread(connect_persistent, client, "127.0.0.1", mosquitto.port, 30, 0)
    assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
    await asyncio.sleep(0)  # the thread's hand-overs were queued before its result
    sock = client.socket()
    assert sock is not None
    try:
        assert bridge.fd == -1
        assert not bridge.resume_reading()
        assert not asyncio.get_running_loop().remove_reader(sock.fileno())
    finally:
        sock.close()
