"""common.mqttclient without a broker: protocol fallback, refusal kinds, client set-up,
and how a failed connect is reported. The same code against mosquitto (TLS, passwords,
3.1.1) is exercised by tests/test_report.py and tests/test_hub_mqtt.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.config import MqttConfig
from common.backoff import ErrorKind
from common.mqttclient import (
    MQTT5,
    MQTT311,
    ConnectFailed,
    connect,
    fallback_protocol,
    initial_protocol,
    make_client,
    refused,
)


def endpoint(url: str = "mqtt://127.0.0.1:1883", **kw: Any) -> MqttConfig:
    return MqttConfig(url=url, **kw)


def test_fallback_only_auto_from_v5_on_an_unsupported_protocol_refusal() -> None:
    assert initial_protocol("auto") == MQTT5 and initial_protocol("3.1.1") == MQTT311
    assert fallback_protocol("auto", MQTT5, 0x84) == MQTT311
    assert fallback_protocol("auto", MQTT5, 1) == MQTT311  # 3.1.1's "unacceptable protocol"
    assert fallback_protocol("auto", MQTT311, 0x84) is None
    assert fallback_protocol("5", MQTT5, 0x84) is None
    assert fallback_protocol("auto", MQTT5, 0x86) is None  # bad password: not a version issue
    assert fallback_protocol("auto", MQTT5, None) is None  # network error: never flap


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0x86, ErrorKind.TERMINAL),  # bad user name or password
        (0x87, ErrorKind.TERMINAL),  # not authorized
        (5, ErrorKind.TERMINAL),  # 3.1.1 not authorized
        (0x88, ErrorKind.TRANSIENT),  # server unavailable
        (0x89, ErrorKind.TRANSIENT),  # server busy
        (0x84, ErrorKind.TRANSIENT),  # unsupported protocol: the fallback decides
    ],
)
def test_refusal_kinds(code: int, kind: ErrorKind) -> None:
    err = refused(code, "why")
    assert err.kind is kind and err.refusal == code
    assert str(err) == "broker refused the connection: why"


def test_credentials_are_read_at_every_client(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    ep = endpoint(username="node1", password_file=pw)
    pw.write_text("first\n")
    assert make_client(ep, "c", MQTT5, persistent=True)._password == b"first"
    pw.write_text("rotated\n")
    assert make_client(ep, "c", MQTT5, persistent=True)._password == b"rotated"


def test_unreadable_credentials_are_a_terminal_failure(tmp_path: Path) -> None:
    ep = endpoint(username="node1", password_file=tmp_path / "missing")
    with pytest.raises(ConnectFailed, match="cannot load MQTT credentials") as err:
        make_client(ep, "c", MQTT5, persistent=True)
    assert err.value.kind is ErrorKind.TERMINAL

    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    with pytest.raises(ConnectFailed, match="cannot load MQTT credentials"):
        make_client(endpoint("mqtts://127.0.0.1:8883", ca_file=bad_ca), "c", MQTT5, persistent=True)


def test_persistent_session_and_will() -> None:
    v311 = make_client(endpoint(), "c", MQTT311, persistent=True, will=("t/online", b"0"))
    assert v311._clean_session is False
    assert v311._will_topic == b"t/online" and v311._will_payload == b"0" and v311._will_retain
    assert make_client(endpoint(), "c", MQTT311, persistent=False)._clean_session is True


class Sub(mqtt.Client):
    def __init__(self, tag: str, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.tag = tag


def test_client_class_and_its_arguments() -> None:
    client = make_client(
        endpoint(), "c", MQTT5, persistent=True, client_class=Sub, tag="x", manual_ack=True
    )
    assert isinstance(client, Sub) and client.tag == "x" and client._manual_ack


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]  # bound, not listening: connection refused


def test_connect_refused_is_a_transient_connect_failed(closed_port: int) -> None:
    ep = endpoint(f"mqtt://127.0.0.1:{closed_port}")
    client = make_client(ep, "c", MQTT5, persistent=True)
    with pytest.raises(ConnectFailed, match="ConnectionRefusedError") as err:
        connect(client, ep, session_expiry=60)
    assert err.value.kind is ErrorKind.TRANSIENT and err.value.refusal is None
