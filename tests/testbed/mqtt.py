"""A real paho client in its own thread, for tests to watch and drive the broker like the hub.

Received messages land in an asyncio.Queue on the test's loop, so tests await them
instead of sleeping.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    dup: bool
    """The broker re-sent this packet (our PUBACK to it was lost): not a new publish."""


class Watcher:
    """Subscribes to ``topics`` (QoS1); optionally with a session that outlives reconnects."""

    def __init__(self, port: int, topics: list[str], client_id: str = "", session: bool = False):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.topics = topics
        self.session = session
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        props = None
        if session:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, 30, clean_start=not session, properties=props)
        self.client.loop_start()

    def _on_connect(self, client, _u, _f, reason, _p) -> None:
        if self.topics:
            client.subscribe([(t, 1) for t in self.topics])
        else:
            self._subscribed.set()

    def _on_subscribe(self, _c, _u, _mid, _rc, _p) -> None:
        self._subscribed.set()

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        m = Msg(msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup))
        self.loop.call_soon_threadsafe(self.queue.put_nowait, m)

    async def ready(self, timeout: float = 5.0) -> None:
        ok = await asyncio.to_thread(self._subscribed.wait, timeout)
        assert ok, "watcher did not get its SUBACK"

    async def next(self, timeout: float = 10.0, topic: str | None = None) -> Msg:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.queue.get()
                if topic is None or msg.topic == topic:
                    return msg

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        await self.ready()
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 5)

    def close(self) -> None:
        stop_client(self.client)


def stop_client(client: mqtt.Client) -> None:
    """Stop a ``loop_start()`` client and close its loopback socket pair now.

    paho opens that pair in loop_start() and closes it only in ``__del__``; a client kept
    alive by its bound callbacks is finalised late, and the ResourceWarning then fails
    whichever test happens to be running (filterwarnings = error).
    """
    client.disconnect()
    client.loop_stop()
    client._reset_sockets(sockpair_only=True)
