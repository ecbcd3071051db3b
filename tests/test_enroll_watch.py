"""enroll's wait for the first status, against a real mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import wire
from hub.config import MqttSettings
from hub.enroll import EnrollError
from hub.enroll.watch import StatusWatch, parse_status
from tests.testbed.hubproc import status_doc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher

NODE = "edge-watch-1"


def _status(state: str, seq: int) -> bytes:
    return wire.encode(status_doc(NODE, seq, state))


async def _publish(broker: Mosquitto, payload: bytes, retain: bool = False) -> None:
    publisher = Watcher(broker.port, [])
    try:
        await publisher.publish(wire.status_topic(NODE), payload, retain=retain)
    finally:
        publisher.close()


def test_parse_status_skips_what_is_not_a_status() -> None:
    doc = parse_status(NODE, _status("synced", 1))
    assert doc is not None and (doc["node"], doc["state"], doc["seq"]) == (NODE, "synced", 1)
    junk = (b"", b"\xff", b"[1]", b'{"state": "sleeping"}', b'"synced"', _status("synced", 1)[:-1])
    for payload in junk:
        assert parse_status(NODE, payload) is None, payload
    assert parse_status("another-node", _status("synced", 1)) is None


async def test_retained_status_counts_only_if_the_agent_kept_running(mosquitto: Mosquitto) -> None:
    await _publish(mosquitto, _status("synced", 1), retain=True)
    ep = MqttSettings(url=mosquitto.url)
    watch = await StatusWatch.open(ep, NODE)
    try:
        assert (await watch.first(accept_retained=True, within=10))["seq"] == 1
    finally:
        watch.close()

    watch = await StatusWatch.open(ep, NODE)
    try:
        await _publish(mosquitto, b"not json")
        await _publish(mosquitto, _status("progressing", 2))
        await _publish(mosquitto, _status("failed", 3))
        doc = await watch.first(accept_retained=False, within=10)
        assert (doc["seq"], doc["state"]) == (3, "failed")
    finally:
        watch.close()


async def test_no_status_in_time_names_the_node(mosquitto: Mosquitto) -> None:
    watch = await StatusWatch.open(MqttSettings(url=mosquitto.url), NODE)
    try:
        with pytest.raises(EnrollError, match=f"no status from {NODE} within 0.2 s"):
            await watch.first(accept_retained=True, within=0.2)
    finally:
        watch.close()


async def test_bad_credentials_are_a_clear_error(mosquitto_auth: Mosquitto, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("wrong\n")
    ep = MqttSettings(url=mosquitto_auth.url, username="hub", password_file=secret)
    with pytest.raises(EnrollError, match="broker refused the connection: Not authorized"):
        await StatusWatch.open(ep, NODE)


async def test_unreachable_broker(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    with pytest.raises(EnrollError, match=f"cannot subscribe to .* at {mosquitto.url}"):
        await StatusWatch.open(MqttSettings(url=mosquitto.url), NODE)
