"""The hub's paho client with a cheaper receive path, and batched PUBACKs.

Throughput (bench/bench_ingest.py): the receive path is paho's, made cheaper where
profiling showed it spends more than the whole rest of the hub (see
:class:`ReceiveClient`); acks of one committed batch leave as one socket write instead
of one per message. It subclasses paho internals (``_sock_recv``, ``_handle_publish``,
``_packet_queue``, ``_handle_pingresp``, ``_send_pingreq``) checked against paho 2.2.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

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


class ReceiveClient(paho.Client):
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
        self.on_pong: Callable[[], None] | None = None
        """Called when the broker answers :meth:`ping`."""

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

    def ping(self) -> None:
        """Queue a PINGREQ. The broker handles one connection's packets in order, so its
        PINGRESP means every packet sent before (the last PUBACKs) was handled."""
        self._send_pingreq()

    def _handle_pingresp(self) -> MQTTErrorCode:
        rc = super()._handle_pingresp()
        if self.on_pong is not None:
            self.on_pong()
        return rc

    def send_acks(self) -> None:
        """Queue the collected PUBACKs as one packet: one socket write for a batch."""
        mids, self.acks = self.acks, []
        if mids and self.is_connected():
            blob = struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids])
            self._packet_queue(_PUBACK, blob, 0, 0)
