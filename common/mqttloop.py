"""One paho-mqtt 2.x client's socket driven by the running asyncio loop (I/O glue only).

paho does the protocol, asyncio does the I/O: paho's socket callbacks hand the socket to
``loop.add_reader``/``add_writer``, and the owner's ``readable``/``writable`` callbacks
call ``loop_read``/``loop_write``. ``connect()`` blocks (DNS, TCP, TLS handshake), so
owners run it in another thread (common.mqttclient.connect_in_thread); the socket
callbacks then fire there, and the rest on the loop. In this mode paho neither
reconnects nor pings by itself: the owner reconnects and calls ``loop_misc`` about once
a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def connect_persistent(
    client: mqtt.Client,
    host: str,
    port: int,
    keepalive: int,
    session_expiry: int,
    receive_maximum: int | None = None,
) -> MQTTErrorCode:
    """Blocking ``client.connect`` that resumes the broker-side session.

    MQTT 5: clean_start=False, the session kept ``session_expiry`` seconds, and
    optionally a Receive Maximum; 3.1.1 relies on the client made with
    clean_session=False (3.1.1 has no session expiry).
    """
    if client.protocol != MQTTProtocolVersion.MQTTv5:
        return client.connect(host, port, keepalive)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return client.connect(host, port, keepalive, clean_start=False, properties=props)


class SocketBridge:
    """Drives ``client``'s socket from the running loop until :meth:`detach`.

    ``readable``/``writable`` run on the loop when the socket is ready; ``closed`` runs
    whenever paho closes a socket of this client.
    """

    def __init__(
        self,
        client: mqtt.Client,
        readable: Callable[[], object],
        writable: Callable[[], object],
        closed: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._readable = readable
        self._writable = writable
        self._closed = closed
        self.fd = -1
        """The socket being driven, or -1."""
        self.detached = False
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def detach(self) -> None:
        """Stop driving the socket for good; closing it is the caller's business."""
        self.detached = True
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.fd = -1

    def pause_reading(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> bool:
        """Undo :meth:`pause_reading`; False when there is no socket (any more)."""
        if self.detached or self.fd < 0:
            return False
        self.loop.add_reader(self.fd, self._readable)
        return True

    # Socket callbacks run in the connect thread or on the loop. On the loop they act at
    # once: paho closes the socket right after on_socket_close returns, and a deferred
    # remove_reader would hit a closed (EBADF) or reused fd. From the thread, the fd is
    # resolved there and handed over in order with call_soon_threadsafe.
    def _call(self, fn: Callable[[int], None], sock: Any) -> None:
        fd = sock.fileno()
        if threading.get_ident() == self._loop_thread:
            fn(fd)
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nothing left to drive
            self.loop.call_soon_threadsafe(fn, fd)

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._call(self._add_reader, sock)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._call(self._remove_fd, sock)

    def _on_register_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._call(self._add_writer, sock)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._call(self._remove_writer, sock)

    def _add_reader(self, fd: int) -> None:
        if not self.detached and fd >= 0:
            self.fd = fd
            self.loop.add_reader(fd, self._readable)

    def _add_writer(self, fd: int) -> None:
        if not self.detached and fd == self.fd >= 0:
            self.loop.add_writer(fd, self._writable)

    def _remove_writer(self, fd: int) -> None:
        if fd == self.fd >= 0:
            self.loop.remove_writer(fd)

    def _remove_fd(self, fd: int) -> None:
        if fd == self.fd >= 0:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
            self.fd = -1
        if self._closed is not None:
            self._closed()
