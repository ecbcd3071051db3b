"""The wait for an enrolled node's first status, as a short-lived MQTT subscriber.

The client comes from the shared factory (common.mqttclient: credentials, TLS,
MQTT 5 -> 3.1.1 fallback, typed connect errors) with a throw-away session, and paho's
own loop thread drives it for the few seconds of the wait. The hub's long-running
client (hub.mqtt.HubMqtt) does not fit: it connects under the hub's stable client id
with a persistent session (the broker would cut off the running hub), subscribes
through ``$share`` (which never delivers retained messages, and an agent that was not
restarted has only its retained status to show), and retries forever where enroll must
stop with one clear error.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from common import strict, wire
from common.mqttclient import (
    CONNECT_TIMEOUT,
    ConnectFailed,
    connect,
    fallback_protocol,
    initial_protocol,
    make_client,
    refused,
)
from common.status import ContractError, status_doc
from hub.config import MqttSettings
from hub.enroll import EnrollError, say


def parse_status(node: str, payload: bytes) -> wire.StatusDoc | None:
    """A status document, or None for a payload that is not one (skipped, not fatal).

    The contract's one strict parser, as for ingest: no second, lax reading."""
    try:
        return status_doc(strict.parse_status(node, payload))
    except ContractError:
        return None


class StatusWatch:
    """Subscribed (as the hub's MQTT user) to one node's status topic until closed."""

    def __init__(self, ep: MqttSettings, node: str) -> None:
        self.ep = ep
        self.node = node
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[bool, bytes] | ConnectFailed] = asyncio.Queue()
        """Messages (retained?, payload), or why the connection ended."""
        self.subscribed: asyncio.Future[None] = self.loop.create_future()
        self.client: mqtt.Client | None = None

    @classmethod
    async def open(cls, ep: MqttSettings | None, node: str) -> StatusWatch:
        if ep is None:
            raise EnrollError("no MQTT broker to wait on: pass --mqtt-url or --wait 0")
        protocol = initial_protocol(ep.protocol)
        while True:
            watch = cls(ep, node)
            try:
                await watch._subscribe(protocol)
            except ConnectFailed as err:
                watch.close()
                fallback = fallback_protocol(ep.protocol, protocol, err.refusal)
                if fallback is None:
                    raise EnrollError(
                        f"cannot subscribe to {wire.status_topic(node)} at {ep.url}: {err}"
                    ) from err
                protocol = fallback
            else:
                return watch

    async def _subscribe(self, protocol: MQTTProtocolVersion) -> None:
        client: mqtt.Client = make_client(
            self.ep, f"edgefleet-enroll-{secrets.token_hex(4)}", protocol, persistent=False
        )
        self.client = client
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        # DNS, TCP and TLS block: keep them off the event loop.
        await asyncio.to_thread(connect, client, self.ep, session_expiry=None)
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self.subscribed), CONNECT_TIMEOUT)
        except TimeoutError as err:
            raise ConnectFailed(f"no answer to CONNECT/SUBSCRIBE in {CONNECT_TIMEOUT:g} s") from err

    # paho callbacks run in paho's thread: they only hand results to the loop.
    def _fail(self, problem: ConnectFailed) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(problem)
        else:
            self.queue.put_nowait(problem)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.loop.call_soon_threadsafe(self._fail, refused(reason.value, str(reason)))
            return
        client.subscribe(wire.status_topic(self.node), qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        bad = [str(c) for c in codes if c.is_failure]
        if bad:
            problem = ConnectFailed(f"subscription refused ({', '.join(bad)}): check the ACL")
            self.loop.call_soon_threadsafe(self._fail, problem)
        else:
            self.loop.call_soon_threadsafe(self._subscribed)

    def _subscribed(self) -> None:
        if not self.subscribed.done():
            self.subscribed.set_result(None)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = (bool(msg.retain), bytes(msg.payload))
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        problem = ConnectFailed(f"disconnected by the broker: {reason}")
        self.loop.call_soon_threadsafe(self._fail, problem)

    async def first(self, *, accept_retained: bool, within: float) -> wire.StatusDoc:
        """The first status past 'progressing' (a retained one only if the agent kept
        running: after a restart it may predate the new configuration)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    item = await self.queue.get()
                    if isinstance(item, ConnectFailed):
                        raise EnrollError(
                            f"lost the broker while waiting for {self.node}'s status: {item}"
                        )
                    retained, payload = item
                    doc = parse_status(self.node, payload)
                    if doc is None or (retained and not accept_retained):
                        continue
                    say("status", f"{doc['state']} {doc.get('message') or ''}".rstrip())
                    if doc["state"] != "progressing":
                        return doc
        except TimeoutError as err:
            raise EnrollError(
                f"no status from {self.node} within {within:g} s; on the node see "
                f"journalctl -u edgefleet-agent and edgefleet-agent verify"
            ) from err

    def close(self) -> None:
        client = self.client
        if client is None:
            return
        client.on_disconnect = None  # a requested disconnect is no failure
        client.disconnect()
        client.loop_stop()
        # Break the client <-> callback cycle so paho's __del__ closes its socket pair now
        # rather than whenever the garbage collector gets to it.
        client.on_connect = client.on_subscribe = client.on_message = None
        self.client = None
