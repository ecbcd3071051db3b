"""The one place a paho-mqtt 2.x client is built and connected, for the agent and the hub.

Everything a connection needs besides the protocol loop lives here: credentials (read
at every attempt, so a rotated password file is picked up), TLS (a socket whose
handshake fails is closed, which paho leaves open), the MQTT 5 -> 3.1.1 fallback, and
the mapping of connect failures to :class:`ConnectFailed` with a typed retry kind.
Owners drive the socket with :class:`common.mqttloop.SocketBridge` (or paho's own
thread for a short-lived client) and retry with :class:`common.backoff.Backoff`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from common.backoff import ErrorKind, KindedError
from common.mqttloop import connect_persistent

CONNECT_TIMEOUT: Final = 10.0
"""Seconds for TCP connect, TLS handshake and CONNACK each; a black-holed broker fails."""
MQTT5: Final = MQTTProtocolVersion.MQTTv5
MQTT311: Final = MQTTProtocolVersion.MQTTv311
UNSUPPORTED_PROTOCOL: Final = frozenset({1, 0x84})
"""CONNACK codes meaning "no MQTT 5 here": 3.1.1's rc 1 and MQTT 5's 0x84."""
_NOT_AUTHORIZED: Final = frozenset({4, 5, 0x86, 0x87, 0x8C})
"""CONNACK codes for bad credentials or a refused client: retrying soon will not help."""

C = TypeVar("C", bound=mqtt.Client)


class Endpoint(Protocol):
    """The [mqtt] connection keys both config files share (common.tomlconf)."""

    @property
    def url(self) -> str | None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls(self) -> bool: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def client_cert(self) -> Path | None: ...
    @property
    def client_key(self) -> Path | None: ...
    @property
    def protocol(self) -> str: ...
    @property
    def keepalive(self) -> int: ...


class ConnectFailed(KindedError):
    """One connection attempt failed; the message is what the operator needs to read."""

    def __init__(
        self, reason: str, refusal: int | None = None, kind: ErrorKind = ErrorKind.TRANSIENT
    ) -> None:
        super().__init__(reason)
        self.refusal = refusal
        self.kind = kind


def initial_protocol(setting: str) -> MQTTProtocolVersion:
    return MQTT311 if setting == "3.1.1" else MQTT5


def fallback_protocol(
    setting: str, attempted: MQTTProtocolVersion, refusal: int | None
) -> MQTTProtocolVersion | None:
    """The protocol to try next after the broker refused a CONNECT, or None to keep it.

    Only ``auto`` falls back, only from v5, and only on an explicit "unsupported protocol
    version" refusal (never on network errors, which would flap between versions).
    """
    if setting == "auto" and attempted == MQTT5 and refusal in UNSUPPORTED_PROTOCOL:
        return MQTT311
    return None


def refused(reason_code: int, text: str) -> ConnectFailed:
    """The failure for a CONNACK that refused us."""
    kind = ErrorKind.TERMINAL if reason_code in _NOT_AUTHORIZED else ErrorKind.TRANSIENT
    return ConnectFailed(f"broker refused the connection: {text}", reason_code, kind)


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho leaves the socket open when the TLS handshake fails (e.g. an untrusted CA)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(ep: Endpoint) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ep.ca_file)
    ctx.sslsocket_class = _ClosingSSLSocket
    if ep.client_cert is not None:
        ctx.load_cert_chain(ep.client_cert, ep.client_key)
    return ctx


def read_password(path: Path) -> str:
    """First line of a password file, read at every connection attempt (rotation)."""
    return path.read_text().strip()


def make_client(
    ep: Endpoint,
    client_id: str,
    protocol: MQTTProtocolVersion,
    *,
    persistent: bool,
    client_class: Callable[..., C] = mqtt.Client,  # type: ignore[assignment]
    will: tuple[str, bytes] | None = None,
    **kwargs: Any,
) -> C:
    """A configured, unconnected client. ``persistent``: the broker keeps the session
    (3.1.1 clean_session=False here; MQTT 5 asks for it in :func:`connect`).
    ``client_class``: a paho Client subclass (or a partial of one); ``kwargs`` go to it.
    ``will``: (topic, payload) the broker publishes, retained, if we vanish."""
    if persistent:
        clean: bool | None = None if protocol == MQTT5 else False
    else:
        clean = None if protocol == MQTT5 else True
    client = client_class(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean,
        protocol=protocol,
        reconnect_on_failure=False,
        **kwargs,
    )
    client.connect_timeout = CONNECT_TIMEOUT
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    try:
        if ep.username is not None:
            password = read_password(ep.password_file) if ep.password_file else None
            client.username_pw_set(ep.username, password)
        if ep.tls:
            client.tls_set_context(tls_context(ep))
    except OSError as err:  # ssl.SSLError is an OSError
        msg = f"cannot load MQTT credentials: {err}"
        raise ConnectFailed(msg, kind=ErrorKind.TERMINAL) from err
    return client


def connect(
    client: mqtt.Client,
    ep: Endpoint,
    *,
    session_expiry: int | None,
    receive_maximum: int | None = None,
) -> None:
    """Blocking DNS, TCP connect, TLS handshake and CONNECT (run it off the loop).

    ``session_expiry`` None: a clean, throw-away session; else the broker keeps it (and
    queued QoS 1 messages) for that many seconds.
    """
    try:
        if session_expiry is None:
            rc = client.connect(ep.host, ep.port, ep.keepalive)
        else:
            rc = connect_persistent(
                client, ep.host, ep.port, ep.keepalive, session_expiry, receive_maximum
            )
    except ssl.SSLCertVerificationError as err:
        raise ConnectFailed(
            f"TLS certificate not trusted: {err.verify_message}", kind=ErrorKind.TERMINAL
        ) from err
    except (OSError, ValueError) as err:
        raise ConnectFailed(f"{type(err).__name__}: {err}") from err
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        raise ConnectFailed(mqtt.error_string(rc))


async def connect_in_thread(
    client: mqtt.Client,
    ep: Endpoint,
    *,
    session_expiry: int | None,
    receive_maximum: int | None = None,
) -> None:
    """:func:`connect` in a daemon thread, awaited from the loop (ConnectFailed on error).

    Not the default executor: a connect abandoned by a cancelled caller (shutdown) must
    not hold up loop shutdown for up to CONNECT_TIMEOUT. An abandoned thread closes the
    socket it opened.
    """
    done: Future[None] = Future()
    abandoned = threading.Event()

    def work() -> None:
        # InvalidStateError: the awaiting task was cancelled meanwhile.
        with contextlib.suppress(InvalidStateError):
            try:
                connect(client, ep, session_expiry=session_expiry, receive_maximum=receive_maximum)
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
                done.set_exception(err)
            else:
                done.set_result(None)
        if abandoned.is_set():
            sock = client.socket()
            if sock is not None:
                sock.close()

    threading.Thread(target=work, name="edgefleet-mqtt-connect", daemon=True).start()
    try:
        await asyncio.wrap_future(done)
    except asyncio.CancelledError:
        abandoned.set()
        raise
