"""``edgefleet-hub forget NODE`` and ``DELETE /api/v1/nodes/{node}`` on a real hub process
with a real broker: the row goes, the events and an audit record stay, the retained
messages are cleared, and a node that is still alive comes back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from common import wire
from hub.users import token_digest
from tests.testbed.hubproc import REPO_ROOT, HubProc, Publisher, event_doc, status_doc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher

pytestmark = pytest.mark.both_backends  # every hub here runs on SQLite, then PostgreSQL


def node_names(hub: HubProc) -> set[str]:
    return {n["node"] for n in hub.get("/api/v1/nodes")["nodes"]}


def hub_cli(hub: HubProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args, "--config", str(hub.config)],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO_ROOT,
    )  # fmt: skip


async def test_forget_removes_the_node_keeps_events_audits_and_clears_retained(
    hub_factory: Callable[..., HubProc], publisher: Publisher, mosquitto: Mosquitto
) -> None:
    hub = hub_factory()
    for node in ("gone", "kept"):
        publisher.status(status_doc(node, 7))
        publisher.online(node, b"1")
    publisher.event(event_doc("gone", 1))
    hub.wait_for(lambda: node_names(hub) == {"gone", "kept"})
    hub.wait_for(lambda: len(hub.get("/api/v1/events?node=gone")["events"]) == 1)

    done = hub_cli(hub, "forget", "gone", "--reason", "decommissioned")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "forgot gone (events kept)"
    assert node_names(hub) == {"kept"}
    assert hub.request("GET", "/api/v1/nodes/gone")[0] == 404
    assert len(hub.get("/api/v1/events?node=gone")["events"]) == 1
    record = hub.get("/api/v1/history")["history"][0]
    assert (record["action"], record["reason"], record["outcome"]) == (
        "forget", "decommissioned", "done"
    )  # fmt: skip
    assert (record["who"], record["stage"]) == ("admin", "stable")  # [hub] token_file's user
    assert record["on_behalf"].startswith("cli:")
    assert (record["evidence"]["node"], record["evidence"]["seq"]) == ("gone", 7)

    # The broker replays nothing of it to a new subscriber: the first message is live.
    late = Watcher(mosquitto.port, [wire.status_topic("gone"), wire.online_topic("gone")])
    try:
        await late.ready()
        publisher.event(event_doc("kept", 1))  # unrelated traffic the hub must still take
        publisher.status(status_doc("gone", 8), retain=False)  # it is still alive...
        msg = await late.next()
        assert (msg.topic, json.loads(msg.payload)["seq"]) == (wire.status_topic("gone"), 8)
    finally:
        late.close()
    hub.wait_for(lambda: node_names(hub) == {"gone", "kept"})  # ...so it is back
    assert hub.get("/api/v1/nodes/gone")["seq"] == 8
    text = hub.get("/metrics")  # its own empty retained messages are not counted as junk
    assert 'edgefleet_hub_messages_dropped_total{reason="bad_json"} 0' in text
    assert 'edgefleet_hub_messages_dropped_total{reason="bad_type"} 0' in text


def test_forget_refusals(hub_factory: Callable[..., HubProc], publisher: Publisher,
                         mosquitto: Mosquitto) -> None:  # fmt: skip
    operator = f"""
[[users]]
name = "olga"
role = "operator"
stages = ["stable"]
token_sha256 = "{token_digest("operator-token")}"
"""
    hub = hub_factory(extra=operator)
    publisher.status(status_doc("n1", 1))
    hub.wait_for(lambda: node_names(hub) == {"n1"})
    assert hub.request("DELETE", "/api/v1/nodes/n1")[0] == 401
    assert hub.request("DELETE", "/api/v1/nodes/n1", token="wrong")[0] == 401
    status, body = hub.request("DELETE", "/api/v1/nodes/n1", token="operator-token")
    assert (status, body["error"]) == (403, "user olga (role operator) may not forget nodes")
    status, body = hub.request("DELETE", "/api/v1/nodes/nobody", token=hub.token)
    assert status == 404 and "nobody" in body["error"]
    status, body = hub.request("DELETE", "/api/v1/nodes/bad%20name", token=hub.token)
    assert status == 400, body
    status, body = hub.request("DELETE", "/api/v1/nodes/n1", token=hub.token, body=b"[1]")
    assert (status, body["error"]) == (400, "the body must be a JSON object")
    done = hub_cli(hub, "forget", "nobody")
    assert done.returncode == 1 and "HTTP 404" in done.stderr, done.stderr

    mosquitto.stop()  # retained messages cannot be cleared: nothing is forgotten
    try:
        hub.wait_for(lambda: hub.try_get("/api/v1/health").get("mqtt") == "disconnected")
        status, body = hub.request("DELETE", "/api/v1/nodes/n1", token=hub.token)
        assert status == 503 and "nothing was forgotten" in body["error"]
    finally:
        mosquitto.start()
    assert node_names(hub) == {"n1"}
    assert hub.get("/api/v1/history")["history"] == []
