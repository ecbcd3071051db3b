"""The hub's MQTT client: paho-mqtt driven by the asyncio loop, subscribe-focused.

The client is built and connected by common.mqttclient (credentials, TLS, the MQTT 5 ->
3.1.1 fallback, typed connect failures), its blocking connect in a thread;
:class:`common.mqttloop.SocketBridge` hands paho's socket to the loop; in that mode paho
does not reconnect by itself, so :meth:`HubMqtt.run` does, with
:class:`common.backoff.Backoff`.

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

Throughput: the receive path and the batched acks are :mod:`hub.mqttrecv`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho

from common.backoff import Backoff
from common.mqttclient import (
    ConnectFailed,
    connect_in_thread,
    fallback_protocol,
    initial_protocol,
    make_client,
    refused,
)
from common.mqttloop import SocketBridge
from hub.config import MqttSettings
from hub.mqttrecv import Message, ReceiveClient

__all__ = ["SHARE_GROUP", "HubMqtt", "Message"]  # Message: what ingest receives

log = logging.getLogger(__name__)

SHARE_GROUP = "$share/edgefleet-hub/"
_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 30.0
_STOP_GRACE = 2.0
"""Seconds a clean stop waits for the broker to confirm its acks, then for DISCONNECT."""
_PACKETS_PER_WAKEUP = 2000
"""Packets handled per loop callback before other tasks (commit, API) get a turn."""
_MAX_UNACKED = 20_000
"""Default of HubMqtt's ``max_unacked``."""


class HubMqtt:
    """Keeps one subscribing connection up until ``stop`` is set; see module doc."""

    def __init__(
        self,
        cfg: MqttSettings,
        topics: Sequence[str],
        on_message: Callable[[Message], None],
        on_ready: Callable[[], None] | None = None,
        max_unacked: int = _MAX_UNACKED,
        direct: Sequence[str] = (),
    ) -> None:
        """``max_unacked``: QoS 1 messages delivered but not acked yet (not committed)
        at which reading pauses until acks come; also the MQTT 5 Receive Maximum asked
        of the broker. Keep it above what arrives while one batch commits.
        ``direct``: topics every hub needs itself, never shared (plan answers go to the
        hub that asked)."""
        self._cfg = cfg
        self._max_unacked = max_unacked
        self._topics = [SHARE_GROUP + t if cfg.shared else t for t in topics] + list(direct)
        # The other form, which a hub configured the other way left in the session.
        self._old_topics = [t if cfg.shared else SHARE_GROUP + t for t in topics]
        self._on_message = on_message
        self._on_ready = on_ready
        self._protocol = initial_protocol(cfg.protocol)
        self._client: ReceiveClient | None = None
        self._bridge: SocketBridge | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: asyncio.Future[ConnectFailed] | None = None
        self._stopping = False
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

    def _send_acks(self, client: ReceiveClient) -> None:
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
        backoff = Backoff(initial=_BACKOFF_MIN, maximum=_BACKOFF_MAX, jitter=0.5)
        while not stop.is_set():
            started = time.monotonic()
            problem = await self._session(stop)
            if stop.is_set():
                break
            if problem is None:  # the session was up: at once, unless it was short-lived
                lasted = time.monotonic() - started
                delay = backoff.session_ended(lasted)
                if delay:
                    log.warning(
                        "MQTT connection lasted only %.1fs; reconnecting in %.1fs (if this "
                        "repeats: does another client use client_id %r?)",
                        lasted, delay, self._cfg.client_id,
                    )  # fmt: skip
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                continue
            fallback = fallback_protocol(self._cfg.protocol, self._protocol, problem.refusal)
            if fallback is not None:
                log.warning("MQTT broker %s refused MQTT 5; using 3.1.1", self._cfg.url)
                self._protocol = fallback
                continue
            if not backoff.failing:
                log.warning("MQTT broker %s unavailable: %s; retrying", self._cfg.url, problem)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.failure(problem.kind))

    # -- one connection -----------------------------------------------------------

    async def _session(self, stop: asyncio.Event) -> ConnectFailed | None:
        """One connection's life; the failure, or None after a session that was up."""
        assert self._loop is not None
        if self._bridge is not None:
            self._bridge.detach()  # a late callback of the old client must not touch the loop
            self._bridge = None
        try:
            client = self._client = self._make_client()
        except ConnectFailed as err:
            return err
        bridge = self._bridge = SocketBridge(
            client, functools.partial(self._readable, client), client.loop_write
        )
        self._lost = self._loop.create_future()
        self._stopping = False
        try:
            await connect_in_thread(
                client,
                self._cfg,
                session_expiry=self._cfg.session_expiry,
                receive_maximum=min(self._max_unacked, 65535),
            )
        except ConnectFailed as err:
            return err
        misc = asyncio.create_task(self._misc(client), name="mqtt-misc")
        stopper = asyncio.create_task(stop.wait(), name="mqtt-stop-wait")
        waiting: set[asyncio.Future[Any]] = {self._lost, stopper}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                await self._disconnect(client)
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
            sock = client.socket()
            if sock is not None:  # refused, or a broker that did not take our DISCONNECT
                bridge.detach()
                sock.close()
            stopper.cancel()
            misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await misc
            with contextlib.suppress(asyncio.CancelledError):
                await stopper

    async def _disconnect(self, client: ReceiveClient) -> None:
        """A clean stop: every ack given to :meth:`ack` is handled by the broker before
        this returns, then DISCONNECT; bounded by _STOP_GRACE.

        Acks still waiting for their ``call_soon`` are queued now (once disconnecting,
        paho is no longer "connected" and would drop them). Written is not handled: a
        broker handles one packet of a connection per turn, and a new connection under
        the same client id (a restarted hub) takes the session over, dropping what the
        old connection had not handled yet - those messages would be delivered again.
        So a PINGREQ follows the acks and its PINGRESP is awaited; reading resumes for
        it, and messages still arriving are left unacked for the next session.
        """
        assert self._loop is not None and self._lost is not None
        self._stopping = True
        client.send_acks()
        pong = self._loop.create_future()
        client.on_pong = functools.partial(_resolve, pong)
        client.ping()
        if client.paused:
            client.paused = False
            if self._bridge is not None and self._bridge.resume_reading():
                self._loop.call_soon(self._readable, client)  # bytes may wait in its buffer
        await asyncio.wait({pong, self._lost}, timeout=_STOP_GRACE)
        if not pong.done():
            log.warning("MQTT broker did not confirm the last acks in %gs", _STOP_GRACE)
        client.disconnect()
        try:
            async with asyncio.timeout(_STOP_GRACE):
                await asyncio.shield(self._lost)
        except TimeoutError:
            log.warning("MQTT broker did not take the DISCONNECT in %gs; closing", _STOP_GRACE)

    async def _misc(self, client: paho.Client) -> None:
        """paho's housekeeping (keepalive pings, retries) once a second."""
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()

    def _make_client(self) -> ReceiveClient:
        client = make_client(
            self._cfg,
            self._cfg.client_id,
            self._protocol,
            persistent=True,
            client_class=functools.partial(ReceiveClient, self._deliver),
            manual_ack=True,
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(10_000)
        client.on_connect = self._handle_connect
        client.on_subscribe = self._handle_subscribe
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        return client

    # -- paho callbacks (on the loop) ----------------------------------------------

    def _readable(self, client: ReceiveClient) -> None:
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
        """Every message of the current connection, decoded by ReceiveClient or by paho."""
        client = self._client
        assert client is not None
        if self._stopping:
            return  # not acked: the broker delivers it again to the next session
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
            self._set_lost(refused(rc.value, str(rc)))
            client.disconnect()
            return
        log.debug("MQTT connected (session present: %s)", flags.session_present)
        if flags.session_present:
            # Else the session keeps both forms and the broker delivers everything twice.
            client.unsubscribe(self._old_topics)
        client.subscribe([(t, 1) for t in self._topics])

    def _handle_subscribe(
        self, _client: paho.Client, _ud: Any, _mid: int, codes: list[Any], _props: Any
    ) -> None:
        bad = [str(c) for c in codes if c.is_failure]
        if bad:
            self._set_lost(ConnectFailed(f"subscription refused: {', '.join(bad)}"))
            return
        log.info("MQTT connected to %s, subscribed to %d topics", self._cfg.url, len(codes))
        self.ready.set()
        if self._on_ready is not None:
            self._on_ready()

    def _handle_disconnect(
        self, _client: paho.Client, _ud: Any, _flags: Any, rc: Any, _props: Any
    ) -> None:
        self._set_lost(ConnectFailed(f"disconnected: {rc}"))

    def _set_lost(self, problem: ConnectFailed) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(problem)

    def _handle_message(self, _client: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        self._deliver(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
