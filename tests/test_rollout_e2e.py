"""Issue 6 end to end: six real agents, each in its own network namespace, a real hub,
mosquitto and git daemon on the host (bound to the bridge address the edges reach),
three stages canary(2) -> beta(2) -> stable(2) with a 2 s soak (tests/testbed/rolloutfleet.py).

One fleet, one story (a fresh fleet per scenario would cost half a minute each):
1. a good signed commit flows canary -> beta -> stable by itself;
2. a canary node cut off (veth down) while the next commit rolls out shows stale and
   holds the gate, which says so; back up, the rollout completes;
3. a bad commit (its HTTP health check fails) stops at canary: canary nodes roll back
   locally, the hub halts, beta and stable never receive it;
4. a manual rollback of stable converges every stable node to the previous commit.
The concurrent-push race is driven deterministically in tests/test_rollout.py.
"""

from __future__ import annotations

import json
import subprocess
import time

from tests.testbed.rolloutfleet import SOAK, STAGES, Edge, Fleet, wait

BAD_HEALTH = """[health]
timeout = 1

[[health.http]]
url = "http://127.0.0.1:1/"
timeout = 0.5
"""


def link(edge: Edge, up: bool) -> None:
    subprocess.run(["ip", "link", "set", edge.veth, "up" if up else "down"], check=True)


def test_staged_rollout_end_to_end(rollout_fleet_2s: Fleet) -> None:
    fleet = rollout_fleet_2s
    started = time.monotonic()
    assert all(fleet.applied(s, fleet.repo.head("canary")) for s in STAGES)

    # 1. a good commit flows through every stage without anyone promoting it
    c1 = fleet.commit("v1\n")
    wait(fleet, "v1 on stable", lambda: fleet.applied("stable", c1))
    assert all(fleet.motd(e) == "v1\n" for e in fleet.edges)
    for stage in ("beta", "stable"):
        promo = fleet.history(stage)[0]
        assert (promo["action"], promo["who"], promo["to"]) == ("promote", "auto", c1)
        assert promo["evidence"]["ready"] == 2 and promo["evidence"]["soak_left"] == 0

    # 2. a canary node loses its link during the next rollout: stale, and the gate holds
    cut = fleet.edges[1]
    link(cut, up=False)
    try:
        c2 = fleet.commit("v2\n")
        wait(fleet, "the cut node to go stale",
             lambda: fleet.nodes()[cut.node]["state"] == "stale")  # fmt: skip
        wait(fleet, "canary-0 on v2",
             lambda: fleet.nodes()["canary-0"]["applied"] == c2)  # fmt: skip
        reason = fleet.stage("beta")["gate_status"]["reason"]
        assert reason == f"1/2 nodes applied {c2[:7]}, need 2 (1 stale)", reason
        assert fleet.stage("beta")["head"] == c1
    finally:
        link(cut, up=True)
    wait(fleet, "v2 on stable after the link is back", lambda: fleet.applied("stable", c2))

    # 3. a bad commit: canary rolls back locally, the hub halts, nothing goes further
    bad = fleet.commit("v3 broken\n", {"common/edgefleet.toml": BAD_HEALTH})
    wait(fleet, "canary nodes to fail and roll back",
         lambda: all(fleet.nodes()[e.node]["reported_state"] == "failed"
                     and fleet.nodes()[e.node]["applied"] == c2
                     for e in fleet.edges if e.stage == "canary"))  # fmt: skip
    assert all(fleet.motd(e) == "v2\n" for e in fleet.edges)  # canary restored v2 files
    wait(
        fleet, "the halt", lambda: (fleet.stage("canary").get("paused") or {}).get("kind") == "halt"
    )
    halt = fleet.history("canary")[0]
    # the first failure already exceeds max_failed = 0
    assert halt["action"] == "halt" and halt["to"] is None and halt["from"] == bad
    assert set(halt["evidence"]["failed"]) <= {"canary-0", "canary-1"}
    gate = fleet.stage("beta")["gate_status"]
    assert not gate["open"] and gate["reason"] == f"2 nodes failed on {bad[:7]} (max 0)"
    assert "pipeline halted at canary" in fleet.stage("beta")["blocked"]
    time.sleep(SOAK + 1)  # a soak's worth of chances to promote it: it must not happen
    for stage in ("beta", "stable"):
        assert fleet.repo.head(stage) == c2
        assert fleet.applied(stage, c2)

    # 4. manual rollback of stable to its previous commit (c1): every stable node follows
    status, body = fleet.hub.request(
        "POST", "/api/v1/stages/stable/rollback", token=fleet.hub.token,
        body=json.dumps({"reason": "e2e rollback"}).encode(),
    )  # fmt: skip
    assert status == 200 and body["to"] == c1, body
    wait(fleet, "stable back on v1", lambda: fleet.applied("stable", c1))
    assert all(fleet.motd(e) == "v1\n" for e in fleet.edges if e.stage == "stable")
    assert fleet.stage("stable")["paused"]["kind"] == "rollback"
    entry = fleet.history("stable")[0]
    assert (entry["action"], entry["from"], entry["to"]) == ("rollback", c2, c1)
    assert time.monotonic() - started < 90
