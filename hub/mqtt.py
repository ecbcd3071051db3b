"""The hub's MQTT client: paho-mqtt driven by the asyncio loop, subscribe-focused.

Pitfalls handled (docs/TESTBED "paho-mqtt on asyncio"): connect()/reconnect() block,
so they run in an executor; :class:`common.mqttloop.SocketBridge` hands paho's socket to
the loop; in that mode paho does not reconnect by itself, so :meth:`HubMqtt.run` does,
with jittered exponential backoff.

Delivery: QoS 1, a persistent session (MQTT 5 clean_start=False + session expiry, or
3.1.1 clean_session=False) under a stable client id, and manual acks: a message is
acknowledged only when :meth:`ack` is called, which ingest does after the batch holding
it is committed. Anything not acked is redelivered by the broker after a hub restart.
At most ``max_unacked`` messages are held unacked: MQTT 5 asks the broker for that as
Receive Maximum, and reading pauses when it is reached anyway (mosquitto ignores the
Receive Maximum when it resumes a session; 3.1.1 has none).

Broker settings this needs (mosquitto): ``max_queued_messages`` well above its default
of 1000, or 0 - beyond it mosquitto drops QoS 1 messages queued for the hub's session
while the hub is down or its window is full. With MQTT 3.1.1, ``max_inflight_messages``
(default 20) bounds the messages in flight to the hub: with acks sent after each
commit that caps ingest at ~200 messages/s, so set it to 0 (the hub bounds itself).

Throughput (bench/bench_ingest.py): the receive path is paho's, made cheaper where
profiling showed it spends more than the whole rest of the hub (see :class:`_Client`);
acks of one committed batch leave as one socket write instead of one per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from common.mqttloop import SocketBridge, connect_persistent
from hub.config import MqttSettings, read_secret

log = logging.getLogger(__name__)

SHARE_GROUP = "$share/edgefleet-hub/"
_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 30.0
# CONNACK codes meaning "this broker does not speak MQTT 5" (3.1.1 rc 1, MQTT 5 0x84).
_UNSUPPORTED_PROTOCOL = (1, 0x84)
_PACKETS_PER_WAKEUP = 2000
"""Packets handled per loop callback before other tasks (commit, API) get a turn."""
_MAX_UNACKED = 20_000
"""Default of HubMqtt's ``max_unacked``."""
_RECV_BYTES = 256 * 1024
_PUBACK = 0x40
_PUBACK_WORD = 0x40020000
"""A PUBACK as one big-endian word: type, remaining length 2, packet id (low 16 bits).
Valid for 3.1.1 and for MQTT 5 (no reason code = success), as paho sends it itself."""


class Message(NamedTuple):  # a tuple: cheap to build for every message
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


class _Client(paho.Client):
    """paho's client with a cheaper receive path for what the hub receives most.

    Profiled on paho 2.2: for every incoming packet paho makes 3-4 ``recv`` calls (one
    per header byte), and for every MQTT 5 PUBLISH it builds a ``Properties`` object
    (~23 us, twice the hub's own validation of a status). Here the socket is read in
    large chunks, and a QoS 0/1 PUBLISH without properties - every message the broker
    sends to this client, as it asks for no topic aliases - is decoded in a few slices
    and handed straight to ``deliver``. Anything else (properties, QoS 2, malformed)
    goes through paho's own code, which also delivers through ``on_message``.
    """

    def __init__(self, deliver: Callable[[Message], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._deliver = deliver
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        self.starved = False
        """Set when a read found the socket empty (the event loop will call again)."""
        self.paused = False
        """Set while reading waits for acks (too many unacked messages)."""
        self.unacked: set[int] = set()
        """Packet ids of QoS 1 messages delivered on this connection and not acked yet."""
        self.acks: list[int] = []
        """Packet ids whose PUBACK goes out with the next :meth:`send_acks`."""

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf) or self._rsock is not self._sock:
            try:
                buf = super()._sock_recv(_RECV_BYTES)
            except BlockingIOError:
                self.starved = True
                raise
            self._rbuf, self._rsock, pos = buf, self._sock, 0
        self._rpos = pos + bufsize
        return buf[pos : pos + bufsize]

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        topic_end = 2 + int.from_bytes(packet[:2], "big")
        mid = int.from_bytes(packet[topic_end : topic_end + 2], "big") if qos else 0
        start = topic_end + 2 if qos else topic_end  # payload, or MQTT 5 properties length
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            if start >= len(packet) or packet[start] != 0:  # properties: paho decodes them
                return super()._handle_publish()
            start += 1
        if qos == 2 or topic_end == 2 or start > len(packet) or (qos and not mid):
            return super()._handle_publish()
        topic = packet[2:topic_end].decode("utf-8", "replace")
        self._deliver(Message(topic, bytes(packet[start:]), qos, bool(header & 1), mid))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def send_acks(self) -> None:
        """Queue the collected PUBACKs as one packet: one socket write for a batch."""
        mids, self.acks = self.acks, []
        if mids and self.is_connected():
            blob = struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])
            self._packet_queue(_PUBACK, blob, 0, 0)


class HubMqtt:
    """Keeps one subscribing connection up until ``stop`` is set; see module doc."""

    def __init__(
        self,
        cfg: MqttSettings,
        topics: Sequence[str],
        on_message: Callable[[Message], None],
        on_ready: Callable[[], None] | None = None,
        max_unacked: int = _MAX_UNACKED,
    ) -> None:
        """``max_unacked``: QoS 1 messages delivered but not acked yet (not committed)
        at which reading pauses until acks come; also the MQTT 5 Receive Maximum asked
        of the broker. Keep it above what arrives while one batch commits."""
        self._cfg = cfg
        self._max_unacked = max_unacked
        self._topics = [SHARE_GROUP + t if cfg.shared else t for t in topics]
        self._on_message = on_message
        self._on_ready = on_ready
        self._v5 = cfg.protocol != "3.1.1"
        self._client: _Client | None = None
        self._bridge: SocketBridge | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: asyncio.Future[str] | None = None
        self.ready = asyncio.Event()
        """Set while connected and subscribed."""

    # -- public -------------------------------------------------------------------

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a delivered message (after it is durably stored).

        QoS 1 acks are collected and written together once the caller yields to the
        loop (ingest acks a whole batch in one go). Only messages delivered on the
        current connection are acked: after a reconnect the broker redelivers the others
        (ingest treats a redelivery as a no-op), and may give their packet ids to new
        messages, which a late ack must not acknowledge unseen. Acking does not wait for
        the SUBACK (``ready``): a resumed session's queued messages come before it.
        """
        client = self._client
        if client is None or qos == 0:
            return
        if qos != 1:
            client.ack(mid, qos)
            return
        if mid not in client.unacked:
            return
        client.unacked.remove(mid)
        if not client.acks:
            assert self._loop is not None
            self._loop.call_soon(self._send_acks, client)
        client.acks.append(mid)

    def _send_acks(self, client: _Client) -> None:
        client.send_acks()
        if client.paused and len(client.unacked) < self._max_unacked:
            client.paused = False
            bridge = self._bridge
            if bridge is not None and bridge.client is client and bridge.resume_reading():
                assert self._loop is not None
                self._loop.call_soon(self._readable, client)  # bytes may wait in its buffer

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Queue a publish; False when not connected (the caller decides what that means)."""
        if self._client is None or not self.ready.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe, and reconnect with backoff until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        backoff = _BACKOFF_MIN
        failing = False
        while not stop.is_set():
            problem = await self._session(stop)
            if stop.is_set():
                break
            if problem is None:
                backoff = _BACKOFF_MIN
                continue
            if not failing:
                log.warning("MQTT broker %s unavailable: %s; retrying", self._cfg.url, problem)
                failing = True
            delay = backoff * random.uniform(0.5, 1.5)  # noqa: S311 (jitter, not crypto)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if failing and self.ready.is_set():
                failing = False

    # -- one connection -----------------------------------------------------------

    async def _session(self, stop: asyncio.Event) -> str | None:
        """One connection's life; returns a problem text, or None after a clean session."""
        assert self._loop is not None
        if self._bridge is not None:
            self._bridge.detach()  # a late callback of the old client must not touch the loop
        client = self._client = self._make_client()
        self._bridge = SocketBridge(
            client, functools.partial(self._readable, client), client.loop_write
        )
        self._lost = self._loop.create_future()
        try:
            await self._loop.run_in_executor(None, self._connect, client)
        except (OSError, ssl.SSLError, ValueError) as err:
            return f"connect failed: {err}"
        misc = asyncio.create_task(self._misc(client), name="mqtt-misc")
        stopper = asyncio.create_task(stop.wait(), name="mqtt-stop-wait")
        waiting: set[asyncio.Future[Any]] = {self._lost, stopper}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                client.disconnect()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._lost), 2.0)
                return None
            problem = self._lost.result()
            was_ready = self.ready.is_set()
            self.ready.clear()
            if was_ready:
                log.warning("MQTT connection lost: %s", problem)
                return None
            return problem
        finally:
            self.ready.clear()
            stopper.cancel()
            misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await misc
            with contextlib.suppress(asyncio.CancelledError):
                await stopper

    def _connect(self, client: paho.Client) -> None:
        """Blocking connect (runs in an executor)."""
        cfg = self._cfg
        receive_maximum = min(self._max_unacked, 65535)
        connect_persistent(
            client, cfg.host, cfg.port, cfg.keepalive, cfg.session_expiry, receive_maximum
        )

    async def _misc(self, client: paho.Client) -> None:
        """paho's housekeeping (keepalive pings, retries) once a second."""
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()

    def _make_client(self) -> _Client:
        cfg = self._cfg
        client = _Client(
            self._deliver,
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else False,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(10_000)
        if cfg.username is not None:
            password = read_secret(cfg.password_file) if cfg.password_file else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.client_cert) if cfg.client_cert else None,
                keyfile=str(cfg.client_key) if cfg.client_key else None,
            )
        client.on_connect = self._handle_connect
        client.on_subscribe = self._handle_subscribe
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        return client

    # -- paho callbacks (on the loop) ----------------------------------------------

    def _readable(self, client: _Client) -> None:
        """paho handles one packet per loop_read (its max_packets is ignored for QoS1):
        keep going until the socket is empty, so a burst costs one loop wake-up, not one
        per message. Bytes already read but not yet handled sit in the client's buffer,
        where the socket's readiness cannot announce them: after a full budget, continue
        from a fresh callback instead of waiting for the next readable event."""
        client.starved = False
        for _ in range(_PACKETS_PER_WAKEUP):
            if client.paused or client.loop_read() != paho.MQTT_ERR_SUCCESS or client.starved:
                return
        assert self._loop is not None
        self._loop.call_soon(self._readable, client)

    def _deliver(self, msg: Message) -> None:
        """Every message of the current connection, decoded by _Client or by paho."""
        client = self._client
        assert client is not None
        if msg.qos == 1:
            client.unacked.add(msg.mid)
            if len(client.unacked) >= self._max_unacked and not client.paused:
                # Backpressure: the broker's queue waits instead of the hub's memory, and
                # the commit that frees the window gets the CPU (and the GIL) meanwhile.
                # mosquitto also ignores the Receive Maximum when resuming a session.
                client.paused = True
                assert self._bridge is not None
                self._bridge.pause_reading()
        self._on_message(msg)

    def _handle_connect(
        self, client: paho.Client, _ud: Any, flags: Any, rc: Any, _props: Any
    ) -> None:
        if rc.is_failure:
            if self._v5 and self._cfg.protocol == "auto" and rc.value in _UNSUPPORTED_PROTOCOL:
                self._v5 = False
            self._set_lost(f"broker refused the connection: {rc}")
            client.disconnect()
            return
        log.debug("MQTT connected (session present: %s)", flags.session_present)
        client.subscribe([(t, 1) for t in self._topics])

    def _handle_subscribe(
        self, _client: paho.Client, _ud: Any, _mid: int, codes: list[Any], _props: Any
    ) -> None:
        bad = [str(c) for c in codes if c.is_failure]
        if bad:
            self._set_lost(f"subscription refused: {', '.join(bad)}")
            return
        log.info("MQTT connected to %s, subscribed to %d topics", self._cfg.url, len(codes))
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()

    def _handle_disconnect(
        self, _client: paho.Client, _ud: Any, _flags: Any, rc: Any, _props: Any
    ) -> None:
        self._set_lost(f"disconnected: {rc}")

    def _set_lost(self, problem: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(problem)

    def _handle_message(self, _client: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        self._deliver(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid))
