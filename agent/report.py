"""Status, events and notifications over MQTT: paho-mqtt 2.x driven by the asyncio loop.

paho does the protocol; asyncio does the I/O (:class:`~common.mqttloop.SocketBridge`).
``connect()`` blocks (DNS, TCP, TLS handshake), so it runs in a short-lived daemon
thread; every paho callback but the socket ones runs on the loop thread (inside
``loop_read``/``loop_write``), where it only updates state and resolves futures. paho's
own reconnect does not exist in this mode: the connection task reconnects with
exponential backoff and jitter, with a fresh paho client per attempt so no half-sent
state of a dead connection is replayed.

Delivery: events go to the on-disk :class:`~agent.outbox.Outbox` first and are acked
there on PUBACK (``on_publish(mid)``); everything not acked is published again on the
next connection (the hub dedups by node+seq). Only the latest status matters: it is kept
in memory and (re)published on connect, on change and every heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.atomic import write_atomic
from agent.config import MqttConfig
from agent.errors import StateError
from agent.outbox import Outbox
from agent.state import load_incarnation
from common import wire
from common.mqttloop import SocketBridge, connect_persistent
from common.status import NodeReport, Status, encode_status

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 10.0
"""Seconds for TCP connect, TLS handshake and CONNACK each; a black-holed broker is a failure."""
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 60.0
SESSION_EXPIRY: Final = 7 * 24 * 3600
"""Seconds the broker keeps our session (subscriptions, queued QoS1 cmds) while we are away."""
WINDOW: Final = 100
"""Events in flight at once; more are published as PUBACKs arrive."""
CLOSE_GRACE: Final = 2.0
"""Seconds close() waits for pending PUBACKs before disconnecting anyway."""
SEQ_BLOCK: Final = 1000
"""Status seqs reserved per state write, so heartbeats do not write flash every time."""
UNSUPPORTED_PROTOCOL: Final = 0x84
"""CONNACK reason "Unsupported protocol version" (paho maps 3.1.1's rc 1 to it too)."""

MQTT5: Final = MQTTProtocolVersion.MQTTv5
MQTT311: Final = MQTTProtocolVersion.MQTTv311


def initial_protocol(setting: str) -> MQTTProtocolVersion:
    return MQTT311 if setting == "3.1.1" else MQTT5


def fallback_protocol(
    setting: str, attempted: MQTTProtocolVersion, refusal: int | None
) -> MQTTProtocolVersion | None:
    """The protocol to try next after the broker refused a CONNECT, or None to keep it.

    Only ``auto`` falls back, only from v5, and only on an explicit "unsupported protocol
    version" refusal (never on network errors, which would flap between versions).
    """
    if setting == "auto" and attempted == MQTT5 and refusal == UNSUPPORTED_PROTOCOL:
        return MQTT311
    return None


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): 1 s doubling to 60 s, +-20%."""
    base = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** min(attempt, 16))
    return float(base * rng.uniform(0.8, 1.2))


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho leaves the socket open when the TLS handshake fails (e.g. an untrusted CA)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class ConnectFailed(Exception):
    """One connection attempt failed; the message is what the operator needs to read."""

    def __init__(self, reason: str, refusal: int | None = None) -> None:
        super().__init__(reason)
        self.refusal = refusal


class _StatusSeq:
    """Status seq counter that keeps increasing across restarts (reserved in blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._next = int(json.loads(path.read_bytes())["reserved"])
        except FileNotFoundError:
            self._next = 0
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StateError(f"cannot read {path}: {err}") from err
        self._reserved = self._next

    def take(self) -> int:
        if self._next >= self._reserved:
            reserved = self._next + SEQ_BLOCK
            try:
                write_atomic(self.path, json.dumps({"reserved": reserved}).encode(), 0o600)
            except OSError as err:
                raise StateError(f"cannot write {self.path}: {err.strerror}") from err
            self._reserved = reserved
        self._next += 1
        return self._next


class _Connection:
    """One paho client on one socket, bridged onto the running loop."""

    def __init__(self, client: mqtt.Client, reporter: Reporter) -> None:
        self.client = client
        self.reporter = reporter
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
            self.reporter.wake()

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
            self.reporter.delivered(self, seq, reason)
        if not self.inflight:
            self.drained.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            # Usually the broker's ACL: the agent still works, it just polls Git instead.
            log.warning("broker refused the ref/cmd subscription: %s", [str(r) for r in reasons])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.reporter.received(msg.topic, bytes(msg.payload))

    def publish(self, topic: str, payload: bytes, retain: bool, seq: int | None) -> bool:
        """QoS1 publish tracked until its PUBACK; False when paho cannot take it now."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self.inflight[info.mid] = seq
        self.drained.clear()
        return True


class Reporter:
    """The agent's MQTT side: publishes status and events, receives ref and cmd messages."""

    def __init__(
        self,
        cfg: MqttConfig,
        node: str,
        branch: str,
        state_dir: Path,
        on_ref: Callable[[str], None],
        on_cmd: Callable[[dict[str, Any]], None],
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.branch = branch
        self.on_ref = on_ref
        self.on_cmd = on_cmd
        self.outbox = Outbox(state_dir / "outbox", cfg.outbox_max)
        self._seq = _StatusSeq(state_dir / "status-seq.json")
        self.incarnation = load_incarnation(state_dir)
        self._status: NodeReport | None = None
        self._status_dirty = False
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._acks: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._protocol = initial_protocol(cfg.protocol)
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._down_reason: str | None = None
        """Why the last attempt failed; None while connected or before the first try."""
        self._topics = {
            "status": wire.status_topic(node),
            "online": wire.online_topic(node),
            "events": wire.events_topic(node),
            "cmd": wire.cmd_topic(node),
            "ref": wire.ref_topic(branch),
        }

    # -- public API -------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the connection task and return at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"edgefleet-mqtt-{self.node}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:  # noqa: ASYNC109 - the API
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def publish_status(self, report: NodeReport) -> None:
        """Make ``report`` the latest status: sent now if connected, else on reconnect."""
        self._status = report
        self._status_dirty = True
        self.wake()

    def emit_event(self, type: str, commit: str | None, details: dict[str, Any]) -> int:
        """Store an event durably (StateError if the disk refuses), deliver it, return seq."""
        event: wire.EventDoc = {
            "schema": wire.SCHEMA,
            "node": self.node,
            "at": time.time(),
            "type": type,
            "commit": commit,
            "details": details,
            "incarnation": self.incarnation,
        }
        if len(wire.encode(event)) > wire.MAX_PAYLOAD - 64:
            event["details"] = {"truncated": True, "keys": sorted(details)[:100]}
        seq = self.outbox.append(event)
        self.wake()
        return seq

    async def close(self) -> None:
        """Say offline, flush briefly, disconnect and stop; bounded; never eats cancellation."""
        conn = self._conn
        if conn is not None and self.connected:
            # `sync --once` closes right after its reconcile, before the connection task
            # ran again: hand over the last status and events now, goodbye waits for them.
            if self._status_dirty:
                self._send_status(conn)
            self._pump(conn)
        self._closing = True
        try:
            if self._conn is not None and self.connected:
                await self._say_goodbye(self._conn)
        finally:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._conn is not None:
                self._conn.detach()
                self._conn = None
            self._connected.clear()
            self._flush_acks()
            self.outbox.close()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError

    # -- called by _Connection ----------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def delivered(self, conn: _Connection, seq: int, reason: ReasonCode) -> None:
        if reason.is_failure:
            # Terminal (e.g. ACL): resending the same event would be refused again.
            log.warning("broker refused event seq %d (%s); dropping it", seq, reason)
        if not self._acks:
            # One outbox write for a burst of PUBACKs read in the same loop iteration.
            conn.loop.call_soon(self._flush_acks)
        self._acks.append(seq)

    def received(self, topic: str, payload: bytes) -> None:
        if topic == self._topics["ref"]:
            commit = wire.parse_ref_payload(payload)
            if commit is None:
                log.warning("ignoring malformed ref notification on %s", topic)
                return
            self._dispatch(self.on_ref, commit)
        elif topic == self._topics["cmd"]:
            try:
                cmd = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                cmd = None
            if not isinstance(cmd, dict):
                log.warning("ignoring malformed command on %s", topic)
                return
            self._dispatch(self.on_cmd, cmd)

    # -- connection task ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await self._connect()
            except ConnectFailed as err:
                self._failed(str(err))
                fallback = fallback_protocol(self.cfg.protocol, self._protocol, err.refusal)
                if fallback is not None:
                    log.warning("broker refused MQTT 5; falling back to MQTT 3.1.1")
                    self._protocol = fallback
                    continue
                await asyncio.sleep(backoff_delay(attempt, self._rng))
                attempt += 1
                continue
            attempt = 0
            try:
                await self._serve(conn)
            finally:
                self._connected.clear()
                conn.detach()
                self._conn = None
            if self._closing:
                return
            log.warning(
                "lost connection to broker %s:%s; reconnecting", self.cfg.host, self.cfg.port
            )

    def _failed(self, reason: str) -> None:
        # Log transitions (and a changed reason, e.g. refused -> bad password), not retries.
        where = f"{self.cfg.host}:{self.cfg.port}"
        if self._down_reason is None:
            log.warning("broker unreachable at %s: %s; retrying with backoff", where, reason)
        elif reason != self._down_reason:
            log.warning("broker still unreachable at %s, now: %s", where, reason)
        else:
            log.debug("broker still unreachable at %s: %s", where, reason)
        self._down_reason = reason

    async def _connect(self) -> _Connection:
        conn = _Connection(self._make_client(), self)
        self._conn = conn
        try:
            await _in_thread(self._blocking_connect, conn)
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
            raise ConnectFailed(f"broker refused the connection: {reason}", reason.value)
        return conn

    def _blocking_connect(self, client: mqtt.Client) -> None:
        """Runs in a thread: DNS, TCP connect, TLS handshake, queueing CONNECT."""
        try:
            rc = connect_persistent(
                client, self.cfg.host, self.cfg.port, self.cfg.keepalive, SESSION_EXPIRY
            )
        except ssl.SSLCertVerificationError as err:
            raise ConnectFailed(f"TLS certificate not trusted: {err.verify_message}") from err
        except (OSError, ValueError) as err:
            raise ConnectFailed(f"{type(err).__name__}: {err}") from err
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectFailed(mqtt.error_string(rc))

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-agent-{self.node}",
            clean_session=None if self._protocol == MQTT5 else False,
            protocol=self._protocol,
            reconnect_on_failure=False,
        )
        client.connect_timeout = CONNECT_TIMEOUT
        client.max_inflight_messages_set(WINDOW)
        client.max_queued_messages_set(2 * WINDOW)  # the outbox is the real queue
        client.will_set(self._topics["online"], b"0", qos=1, retain=True)
        try:
            # Read at every attempt so rotated credentials are picked up.
            if cfg.username is not None:
                password = None
                if cfg.password_file is not None:
                    password = cfg.password_file.read_text().rstrip("\r\n")
                client.username_pw_set(cfg.username, password)
            if cfg.tls:
                ctx = ssl.create_default_context(cafile=cfg.ca_file)
                ctx.sslsocket_class = _ClosingSSLSocket
                if cfg.client_cert is not None:
                    ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
                client.tls_set_context(ctx)
        except OSError as err:  # ssl.SSLError is an OSError
            raise ConnectFailed(f"cannot load MQTT credentials: {err}") from err
        return client

    async def _serve(self, conn: _Connection) -> None:
        version = "5" if self._protocol == MQTT5 else "3.1.1"
        log.info(
            "connected to broker %s:%s (MQTT %s)%s",
            self.cfg.host,
            self.cfg.port,
            version,
            "" if self._down_reason is None else ", recovered",
        )
        self._down_reason = None
        conn.client.subscribe([(self._topics["ref"], 1), (self._topics["cmd"], 1)])
        conn.publish(self._topics["online"], b"1", retain=True, seq=None)
        self._connected.set()
        self._status_dirty = self._status is not None
        next_beat = next_misc = time.monotonic()
        while not conn.lost.is_set():
            self._wake.clear()
            now = time.monotonic()
            if now >= next_misc:
                conn.client.loop_misc()  # keepalive PINGREQ and its timeout
                next_misc = now + 1.0
            if self._status is None:
                next_beat = now + self.cfg.heartbeat  # nothing to repeat yet; wake() sends
            elif self._status_dirty or now >= next_beat:
                self._send_status(conn)
                next_beat = now + self.cfg.heartbeat
            self._pump(conn)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(next_misc, next_beat) - now)):
                    await self._wake.wait()

    def _send_status(self, conn: _Connection) -> None:
        """Publish the latest status once; a failure waits for the heartbeat or reconnect."""
        assert self._status is not None
        self._status_dirty = False
        try:
            seq = self._seq.take()
        except StateError as err:
            log.warning("status not sent: %s", err)
            return
        status = Status(
            self._status, seq, time.time(), self.cfg.heartbeat, incarnation=self.incarnation
        )
        conn.publish(self._topics["status"], encode_status(status), retain=True, seq=None)

    def _pump(self, conn: _Connection) -> None:
        """Publish pending outbox events while fewer than WINDOW are in flight."""
        if self._closing or conn is not self._conn or not self.connected:
            return
        room = WINDOW - len(conn.inflight)
        if room <= 0:
            return
        for event in self.outbox.pending(after=conn.cursor, limit=room):
            if not conn.publish(self._topics["events"], wire.encode(event), False, event["seq"]):
                return  # connection going away: everything stays in the outbox
            conn.cursor = event["seq"]

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        if not acks:
            return
        try:
            self.outbox.ack(*acks)
        except StateError as err:
            # Not lost, only not forgotten: they are sent again (the hub dedups by seq).
            log.warning("%d delivered event(s) not marked delivered: %s", len(acks), err)
        if self._conn is not None:
            self._pump(self._conn)

    async def _say_goodbye(self, conn: _Connection) -> None:
        conn.publish(self._topics["online"], b"0", retain=True, seq=None)
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await conn.drained.wait()
        except TimeoutError:
            log.warning("closing with %d publish(es) unacknowledged", len(conn.inflight))
        conn.client.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await conn.lost.wait()

    def _dispatch(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:
            log.exception("MQTT message handler %r failed", fn)


async def _in_thread(fn: Callable[[mqtt.Client], None], conn: _Connection) -> None:
    """Run a blocking connect in a daemon thread.

    Not the default executor: a connect abandoned by close() must not hold up loop
    shutdown for up to CONNECT_TIMEOUT. An abandoned thread closes its own socket.
    """
    done: Future[None] = Future()
    abandoned = threading.Event()

    def work() -> None:
        # InvalidStateError: the awaiting task was cancelled (close() during connect).
        with contextlib.suppress(InvalidStateError):
            try:
                fn(conn.client)
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
                done.set_exception(err)
            else:
                done.set_result(None)
        if abandoned.is_set():
            sock = conn.client.socket()
            if sock is not None:
                sock.close()

    threading.Thread(target=work, name="edgefleet-mqtt-connect", daemon=True).start()
    try:
        await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        abandoned.set()
        raise
