"""The agent daemon against a real broker: status, events, ref notifications, hub commands."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common import wire
from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Msg, Watcher

NODE = "node-mq"


@pytest.fixture
def setup(
    tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey, mosquitto: Mosquitto
) -> AgentSetup:
    # A one-hour poll interval: only a ref notification or a command explains a quick apply.
    return write_agent_config(
        tmp_path / "agent",
        fleet_repo.url,
        node=NODE,
        allowed_signers=signing_key.allowed_signers,
        mqtt_url=mosquitto.url,
        interval=3600,
    )


@pytest.fixture
async def watcher(mosquitto: Mosquitto) -> AsyncIterator[Watcher]:
    w = Watcher(mosquitto.port, [f"{wire.PREFIX}/node/{NODE}/#"])
    await w.ready()
    yield w
    w.close()


@pytest.fixture
def daemon(setup: AgentSetup) -> AsyncIterator[subprocess.Popen[str]]:
    proc = setup.popen("run")
    yield proc  # type: ignore[misc]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert "Traceback" not in out, out


async def status_where(w: Watcher, pred: object, timeout: float = 15) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            msg: Msg = await w.next(timeout, topic=wire.status_topic(NODE))
            doc: dict[str, object] = json.loads(msg.payload)
            if pred(doc):  # type: ignore[operator]
                return doc


async def event_where(w: Watcher, type_: str, timeout: float = 15) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            msg = await w.next(timeout, topic=wire.events_topic(NODE))
            doc: dict[str, object] = json.loads(msg.payload)
            if doc["type"] == type_:
                return doc


def conf(setup: AgentSetup, name: str) -> str:
    return f"common/files{setup.root}/{name}"


async def test_status_events_and_ref_notification(
    setup: AgentSetup,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    watcher: Watcher,
    daemon: subprocess.Popen[str],
) -> None:
    c1 = fleet_repo.commit({conf(setup, "app.conf"): "v1\n"}, sign=signing_key)
    doc = await status_where(watcher, lambda d: d["state"] == "synced" and d["applied"] == c1)
    assert doc["node"] == NODE and doc["branch"] == "stable" and doc["schema"] == 1
    assert doc["resources"] == {"files": 1}
    applied = await event_where(watcher, "applied")
    assert applied["commit"] == c1

    c2 = fleet_repo.commit({conf(setup, "app.conf"): "v2\n"}, sign=signing_key)
    await watcher.publish(wire.ref_topic("stable"), wire.ref_payload(c2, 0.0), retain=True)
    doc = await status_where(watcher, lambda d: d["applied"] == c2, timeout=10)
    assert (setup.root / "app.conf").read_text() == "v2\n"
    event = await event_where(watcher, "applied")
    assert event["commit"] == c2 and int(event["seq"]) > int(applied["seq"])  # type: ignore[call-overload]


async def test_sync_command_and_lwt(
    setup: AgentSetup,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    mosquitto: Mosquitto,
    watcher: Watcher,
    daemon: subprocess.Popen[str],
) -> None:
    c1 = fleet_repo.commit({conf(setup, "app.conf"): "v1\n"}, sign=signing_key)
    await status_where(watcher, lambda d: d["applied"] == c1)
    c2 = fleet_repo.commit({conf(setup, "app.conf"): "v2\n"}, sign=signing_key)
    await watcher.publish(wire.cmd_topic(NODE), json.dumps({"op": "sync"}).encode())
    doc = await status_where(watcher, lambda d: d["applied"] == c2, timeout=10)
    assert doc["state"] == "synced" and (setup.root / "app.conf").read_text() == "v2\n"

    # The online=1 of the connection came before the statuses read above: the next
    # message on the topic is the broker's will, published when the socket dies.
    daemon.send_signal(signal.SIGKILL)
    will = await watcher.next(30, topic=wire.online_topic(NODE))
    assert will.payload == b"0"
    late = Watcher(mosquitto.port, [wire.online_topic(NODE)])
    try:
        retained = await late.next(10)
    finally:
        late.close()
    assert retained.payload == b"0" and retained.retain


async def test_refused_commit_is_reported(
    setup: AgentSetup,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    watcher: Watcher,
    daemon: subprocess.Popen[str],
) -> None:
    c1 = fleet_repo.commit({conf(setup, "app.conf"): "v1\n"}, sign=signing_key)
    await status_where(watcher, lambda d: d["applied"] == c1)
    bad = fleet_repo.commit({conf(setup, "app.conf"): "unsigned\n"})
    await watcher.publish(wire.ref_topic("stable"), wire.ref_payload(bad, 0.0), retain=True)
    doc = await status_where(watcher, lambda d: d["state"] == "refused")
    assert doc["desired"] == bad and doc["applied"] == c1 and doc["reason"] == "Untrusted"
    event = await event_where(watcher, "refused")
    assert event["commit"] == bad
    assert (setup.root / "app.conf").read_text() == "v1\n"
