"""The hub's MQTT client: paho-mqtt driven by the asyncio loop, subscribe-focused.

Pitfalls handled (docs/TESTBED "paho-mqtt on asyncio"): connect()/reconnect() block,
so they run in an executor; paho's socket callbacks hand the socket to
``loop.add_reader/add_writer`` (fileno resolved in the calling thread, handed over
with ``call_soon_threadsafe``); in that mode paho does not reconnect by itself, so
:meth:`HubMqtt.run` does, with jittered exponential backoff.

Delivery: QoS 1, a persistent session (MQTT 5 clean_start=False + session expiry, or
3.1.1 clean_session=False) under a stable client id, and manual acks: a message is
acknowledged only when :meth:`ack` is called, which ingest does after the batch holding
it is committed. Anything not acked is redelivered by the broker after a hub restart.
MQTT 5 lets the broker keep up to 65535 unacked messages in flight; with 3.1.1 the
broker's own ``max_inflight_messages`` (mosquitto: 20) caps throughput - set it to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.config import MqttSettings, read_secret

log = logging.getLogger(__name__)

SHARE_GROUP = "$share/edgefleet-hub/"
_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 30.0
# CONNACK codes meaning "this broker does not speak MQTT 5" (3.1.1 rc 1, MQTT 5 0x84).
_UNSUPPORTED_PROTOCOL = (1, 0x84)
_READS_PER_WAKEUP = 256


class Message(NamedTuple):  # a tuple: cheap to build for every message
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


class HubMqtt:
    """Keeps one subscribing connection up until ``stop`` is set; see module doc."""

    def __init__(
        self,
        cfg: MqttSettings,
        topics: Sequence[str],
        on_message: Callable[[Message], None],
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._topics = [SHARE_GROUP + t if cfg.shared else t for t in topics]
        self._on_message = on_message
        self._on_ready = on_ready
        self._v5 = cfg.protocol != "3.1.1"
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: asyncio.Future[str] | None = None
        self._received = 0
        self.ready = asyncio.Event()
        """Set while connected and subscribed."""

    # -- public -------------------------------------------------------------------

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a delivered message (after it is durably stored)."""
        if self._client is not None and qos > 0 and self.ready.is_set():
            self._client.ack(mid, qos)

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
        client = self._client = self._make_client()
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
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._cfg.session_expiry
            props.ReceiveMaximum = 65535
            client.connect(
                self._cfg.host,
                self._cfg.port,
                self._cfg.keepalive,
                clean_start=False,
                properties=props,
            )
        else:
            client.connect(self._cfg.host, self._cfg.port, self._cfg.keepalive)

    async def _misc(self, client: paho.Client) -> None:
        """paho's housekeeping (keepalive pings, retries) once a second."""
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()

    def _make_client(self) -> paho.Client:
        cfg = self._cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
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
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_connect = self._handle_connect
        client.on_subscribe = self._handle_subscribe
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        return client

    # -- paho callbacks (socket ones may run in the executor thread) ----------------

    def _threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        self._threadsafe(self._loop_add_reader, client, sock.fileno())

    def _loop_add_reader(self, client: paho.Client, fd: int) -> None:
        assert self._loop is not None
        if client is self._client:
            self._loop.add_reader(fd, self._readable, client)

    def _readable(self, client: paho.Client) -> None:
        """paho reads one packet per loop_read (its max_packets is ignored for QoS1):
        keep reading while messages arrive so a burst costs one loop wake-up, not one
        per message."""
        for _ in range(_READS_PER_WAKEUP):
            before = self._received
            if client.loop_read() != paho.MQTT_ERR_SUCCESS or self._received == before:
                return

    def _socket_close(self, _client: paho.Client, _ud: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._threadsafe(self._loop_remove, fd)

    def _loop_remove(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _register_write(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        self._threadsafe(self._loop_add_writer, client, sock.fileno())

    def _loop_add_writer(self, client: paho.Client, fd: int) -> None:
        assert self._loop is not None
        if client is self._client and fd >= 0:
            self._loop.add_writer(fd, client.loop_write)

    def _unregister_write(self, _client: paho.Client, _ud: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._threadsafe(self._loop_remove_writer, fd)

    def _loop_remove_writer(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_writer(fd)

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
        self._received += 1
        self._on_message(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid))
