"""One agent connection to the broker: a paho client on one socket, driven by the loop.

:func:`open_connection` builds the client (common.mqttclient), connects it in a thread
and waits for the CONNACK; :class:`Connection` then turns paho's callbacks (always on
the loop thread, inside ``loop_read``/``loop_write``) into state and futures for its
owner, the :class:`~agent.report.Reporter`. A fresh client per attempt: no half-sent
state of a dead connection is replayed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from common.mqttclient import (
    CONNECT_TIMEOUT,
    ConnectFailed,
    connect_in_thread,
    make_client,
    refused,
)
from common.mqttloop import SocketBridge

log = logging.getLogger(__name__)

SESSION_EXPIRY: Final = 7 * 24 * 3600
"""Seconds the broker keeps our session (subscriptions, queued QoS1 cmds) while we are away."""
WINDOW: Final = 100
"""Events in flight at once; more are published as PUBACKs arrive."""


class Owner(Protocol):
    """What a connection reports to (the Reporter)."""

    def wake(self) -> None: ...
    def delivered(self, conn: Connection, seq: int, reason: ReasonCode) -> None: ...
    def received(self, topic: str, payload: bytes) -> None: ...


class Connection:
    """One paho client on one socket, bridged onto the running loop."""

    def __init__(self, client: mqtt.Client, owner: Owner) -> None:
        self.client = client
        self.owner = owner
        self.bridge = SocketBridge(client, self._readable, self._writable, self._closed)
        self.loop = self.bridge.loop
        self.connack: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.lost = asyncio.Event()
        self.drained = asyncio.Event()
        self.inflight: dict[int, int | None] = {}
        """paho mid -> event seq (None: a publish we only wait for, e.g. online=0)."""
        self.cursor = 0
        """Highest event seq published on this connection."""
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe

    def _readable(self) -> None:
        self._check(self.client.loop_read())

    def _writable(self) -> None:
        self._check(self.client.loop_write())

    def _closed(self) -> None:
        self._mark_lost("connection closed")

    def _check(self, rc: MQTTErrorCode) -> None:
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            self._mark_lost(mqtt.error_string(rc))

    def _mark_lost(self, why: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectFailed(why))
        if not self.lost.is_set():
            self.lost.set()
            self.owner.wake()

    def detach(self) -> None:
        """Stop driving the socket and close it; the client object is then discarded."""
        self.bridge.detach()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        if not self.connack.done():
            self.connack.cancel()
        self.lost.set()

    # Protocol callbacks: always on the loop thread, inside loop_read/loop_write.
    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        self._mark_lost(f"disconnected ({reason})")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        if mid not in self.inflight:
            return
        seq = self.inflight.pop(mid)
        if seq is not None:
            self.owner.delivered(self, seq, reason)
        if not self.inflight:
            self.drained.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            # Usually the broker's ACL: the agent still works, it just polls Git instead.
            log.warning("broker refused the ref/cmd subscription: %s", [str(r) for r in reasons])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.owner.received(msg.topic, bytes(msg.payload))

    def publish(self, topic: str, payload: bytes, retain: bool, seq: int | None) -> bool:
        """QoS1 publish tracked until its PUBACK; False when paho cannot take it now."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self.inflight[info.mid] = seq
        self.drained.clear()
        return True


async def open_connection(
    cfg: MqttConfig,
    client_id: str,
    protocol: MQTTProtocolVersion,
    will_topic: str,
    owner: Owner,
) -> Connection:
    """Connect (persistent session, will ``0`` on ``will_topic``) and wait for the
    CONNACK; ConnectFailed with its retry kind when that fails or is refused."""
    client: mqtt.Client = make_client(
        cfg, client_id, protocol, persistent=True, will=(will_topic, b"0")
    )
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(2 * WINDOW)  # the outbox is the real queue
    conn = Connection(client, owner)
    try:
        await connect_in_thread(client, cfg, session_expiry=SESSION_EXPIRY)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reason = await conn.connack
    except TimeoutError as err:
        conn.detach()
        raise ConnectFailed(f"no CONNACK within {CONNECT_TIMEOUT:g}s") from err
    except BaseException:
        conn.detach()
        raise
    if reason.is_failure:
        conn.detach()
        raise refused(reason.value, str(reason))
    return conn
