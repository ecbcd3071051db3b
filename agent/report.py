"""Status, events and notifications over MQTT, for the agent.

One connection at a time (:mod:`agent.mqttconn`, built by common.mqttclient); every
paho callback but the socket ones runs on the loop thread, where it only updates state
and resolves futures. paho's own reconnect does not exist in this mode: the connection
task reconnects with :class:`common.backoff.Backoff` (exponential with jitter; the
longest delay for a refusal that would repeat, e.g. bad credentials), with a fresh paho
client per attempt.

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.errors import StateError
from agent.mqttconn import WINDOW, open_connection
from agent.mqttconn import Connection as _Connection
from agent.outbox import Outbox
from agent.state import load_incarnation
from agent.statusseq import StatusSeq
from common import wire
from common.backoff import Backoff
from common.mqttclient import MQTT5, ConnectFailed, fallback_protocol, initial_protocol
from common.status import NodeReport, Status, encode_status

log = logging.getLogger(__name__)

CLOSE_GRACE: Final = 2.0
"""Seconds close() waits for pending PUBACKs before disconnecting anyway."""


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
        backoff: Backoff | None = None,
        on_wave: Callable[[bytes], None] | None = None,
    ) -> None:
        """``backoff``: the reconnect policy (default 1 s doubling to 60 s)."""
        self.cfg = cfg
        self.node = node
        self.branch = branch
        self.on_ref = on_ref
        self.on_cmd = on_cmd
        self.on_wave = on_wave
        self.outbox = Outbox(state_dir / "outbox", cfg.outbox_max)
        self._seq = StatusSeq(state_dir / "status-seq.json")
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
        self._backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self._down_reason: str | None = None
        """Why the last attempt failed; None while connected or before the first try."""
        self._topics = {
            "status": wire.status_topic(node),
            "online": wire.online_topic(node),
            "events": wire.events_topic(node),
            "cmd": wire.cmd_topic(node),
            "ref": wire.ref_topic(branch),
            "wave": wire.wave_topic(node),
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

    def send_now(self, topic: str, payload: bytes) -> bool:
        """Publish QoS 1, not retained, on this connection only (a plan answer: the hub
        waits for it a short while, so it is not kept for a later connection)."""
        conn = self._conn
        if conn is None or not self.connected:
            return False
        return conn.publish(topic, payload, retain=False, seq=None)

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
        elif topic == self._topics["wave"] and self.on_wave is not None:
            self._dispatch(self.on_wave, payload)
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
                await asyncio.sleep(self._backoff.failure(err.kind))
                continue
            started = time.monotonic()
            try:
                await self._serve(conn)
            finally:
                self._connected.clear()
                conn.detach()
                self._conn = None
            if self._closing:
                return
            lasted = time.monotonic() - started
            delay = self._backoff.session_ended(lasted)
            log.warning(
                "lost connection to broker %s:%s after %.1fs; reconnecting%s",
                self.cfg.host, self.cfg.port, lasted,
                f" in {delay:.1f}s (if this repeats: does another node use client id "
                f"{self._client_id!r}?)" if delay else "",
            )  # fmt: skip
            await asyncio.sleep(delay)

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

    @property
    def _client_id(self) -> str:
        return f"edgefleet-agent-{self.node}"

    async def _connect(self) -> _Connection:
        online = self._topics["online"]
        self._conn = await open_connection(self.cfg, self._client_id, self._protocol, online, self)
        return self._conn

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
        topics = ["ref", "cmd"] + (["wave"] if self.on_wave is not None else [])
        conn.client.subscribe([(self._topics[t], 1) for t in topics])
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
