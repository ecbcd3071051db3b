"""Waves end to end: real agents, a real hub, mosquitto and a git daemon; the stable
stage rolls out in two waves, pilot (label site=pilot, 3 s soak) then the rest
(tests/testbed/wavefleet.py).

One fleet, one story:
1. a promotion gives the pilot the new commit while the rest still runs the old one; an
   agent told a wave ref that does not exist follows its branch and says why; an agent
   whose wave message is absent (as one without wave support) follows the branch, which
   moves with the last wave; the rest follows after the pilot's soak;
2. a rollback of the stage moves every wave (and the branch) back;
3. a failing pilot halts the rest;
4. a node relabelled into the pilot gets the next commit with the pilot.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from common import wire
from tests.testbed.fleetrepo import SigningKey
from tests.testbed.hubproc import Publisher
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import stop_client
from tests.testbed.wavefleet import WaveFleet, wave_fleet

SOAK = 3.0
REST = ("stable-a", "stable-b")
BAD_HEALTH = """[health]
timeout = 1

[[health.http]]
url = "http://127.0.0.1:1/"
timeout = 0.5
"""


@pytest.fixture
def fleet(tmp_path: Path, signing_key: SigningKey, mosquitto: Mosquitto) -> Iterator[WaveFleet]:
    with wave_fleet(tmp_path, signing_key, mosquitto, SOAK) as f:
        yield f


def retained_wave(broker: Mosquitto, node: str) -> bytes:
    """The hub's retained wave message for ``node`` (waits for it)."""
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.put(bytes(msg.payload))
    client.on_connect = lambda c, *_: c.subscribe(wire.wave_topic(node), qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        return got.get(timeout=30)
    finally:
        stop_client(client)


def test_waves_end_to_end(fleet: WaveFleet, mosquitto: Mosquitto) -> None:
    c0 = fleet.repo.head("stable")
    pub = Publisher(mosquitto).connect(mosquitto)
    try:
        # 1. the pilot first, the rest after the pilot's soak
        c1 = fleet.commit("v1\n")
        fleet.wait("beta-0 on c1", lambda: fleet.on(c1, "beta-0"))
        fleet.wait("the hub to see c1 on beta", lambda: fleet.hub_head("beta") == c1)
        status, body = fleet.post("/api/v1/stages/stable/promote", {"reason": "waves"})
        assert status == 200, body
        assert fleet.wave_head("pilot") == c1
        # stable-b plays an agent without wave support: its wave message is gone.
        assert json.loads(retained_wave(mosquitto, "stable-b")) == {
            "ref": "refs/edgefleet/waves/stable/rest"}  # fmt: skip
        pub.publish(wire.wave_topic("stable-b"), b"", retain=True)
        # stable-a is told a ref that does not exist: it follows its branch and says why.
        ghost = "refs/edgefleet/waves/stable/ghost"
        pub.publish(wire.wave_topic("stable-a"), {"ref": ghost}, retain=True)
        fleet.wait("stable-pilot on c1", lambda: fleet.on(c1, "stable-pilot"))
        nodes = fleet.nodes()
        assert fleet.repo.head("stable") == c0  # read after the nodes: they saw c0 only
        assert [nodes[n]["applied"] for n in REST] == [c0, c0]
        pilot = fleet.waves()["pilot"]
        assert (pilot["nodes"], pilot["on_candidate"]) == (1, 1)
        events = fleet.hub.get("/api/v1/events?node=stable-a&type=wave")["events"]
        assert events and events[0]["details"]["reason"] == f"wave ref {ghost} does not exist"
        fleet.wait("the rest on c1 after the pilot's soak", lambda: fleet.on(c1, *REST))
        assert fleet.repo.head("stable") == c1 and fleet.wave_head("rest") == c1
        actions = [(h["action"], h["reason"]) for h in fleet.hub.get(
            "/api/v1/history?stage=stable")["history"]]  # fmt: skip
        assert ("wave", "last wave started: stable moved") in actions
        assert {w["state"] for w in fleet.waves().values()} == {"done"}

        # 2. a rollback moves every wave and the branch back
        status, body = fleet.post("/api/v1/stages/stable/rollback", {"reason": "back"})
        assert status == 200, body
        assert fleet.repo.head("stable") == c0
        assert fleet.wave_head("pilot") == c0 and fleet.wave_head("rest") == c0
        fleet.wait("every stable node back on c0",
                   lambda: fleet.on(c0, "stable-pilot", *REST))  # fmt: skip
        assert fleet.post("/api/v1/stages/stable/resume", {"reason": "go on"})[0] == 200

        # 3. a failing pilot halts the rest
        bad = fleet.commit("v2 broken\n", {"common/edgefleet.toml": BAD_HEALTH})
        fleet.wait("the hub to see the bad commit", lambda: fleet.hub_head("beta") == bad)
        status, body = fleet.post("/api/v1/stages/stable/promote", {"reason": "bad", "force": True})
        assert status == 200, body
        fleet.wait("the halt", lambda: fleet.waves().get("pilot", {}).get("state") == "halted")
        stage = fleet.hub.get("/api/v1/stages")["stages"][1]
        assert (
            stage["paused"]["kind"] == "halt" and "later waves halted" in stage["paused"]["reason"]
        )
        assert fleet.waves()["rest"]["state"] == "halted"
        assert fleet.repo.head("stable") == c0 and fleet.wave_head("rest") == c0
        nodes = fleet.nodes()
        assert [nodes[n]["applied"] for n in REST] == [c0, c0]
        assert nodes["stable-pilot"]["desired"] == bad

        # 4. relabel a node: it is in the pilot at the next promotion, no re-enrolment
        assert fleet.post("/api/v1/stages/stable/rollback", {"reason": "bad"})[0] == 200
        assert fleet.post("/api/v1/stages/stable/resume", {"reason": "fixed"})[0] == 200
        fleet.relabel("stable-a", "pilot")
        fleet.wait("the hub to see stable-a's new label",
                   lambda: fleet.nodes()["stable-a"]["labels"] == {"site": "pilot"})  # fmt: skip
        good = fleet.commit("v3\n", {"common/edgefleet.toml": None})
        fleet.wait("the hub to see v3", lambda: fleet.hub_head("beta") == good)
        status, body = fleet.post("/api/v1/stages/stable/promote", {"reason": "v3", "force": True})
        assert status == 200, body
        fleet.wait("the new pilot on v3", lambda: fleet.on(good, "stable-pilot", "stable-a"))
        nodes = fleet.nodes()
        assert fleet.repo.head("stable") == c0  # read after the nodes: stable-b saw c0 only
        assert nodes["stable-b"]["applied"] == c0
        assert fleet.waves()["pilot"]["nodes"] == 2
        fleet.wait("stable-b on v3 after the pilot's soak", lambda: fleet.on(good, "stable-b"))
    finally:
        pub.close()
