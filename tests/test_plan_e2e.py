"""Fleet-wide plans end to end: five real agents (canary-0, beta-0..3), a real hub
process, mosquitto and a git daemon (tests/testbed/planfleet.py).

One fleet, one story:
1. a candidate only reachable from ``refs/pull/7/head`` configures the common
   app.conf, creates new.conf, and places a file outside beta-3's allowed root:
   ``edgefleet-hub plan beta --commit refs/pull/7/head`` groups the changes of beta-0..2
   and reports beta-3's refusal; nothing on any disk changes, no branch moves;
2. a later candidate (``refs/pull/8/head``) by full commit id, which the nodes fetch by
   id, as Markdown; then by an annotated tag, for a stable sample of half the nodes;
3. a stopped agent (SIGSTOP: still online for the hub) is reported silent;
4. with ``require_plan``, the automatic promotion of that candidate into beta halts
   (audited) instead of moving beta; the plan stays readable over the API and the
   dashboard (headless Chromium) shows it for the pending promotion.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_hub_dashboard
from tests.testbed.fleetrepo import SigningKey, git
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.planfleet import PlanFleet, plan_fleet

browser = test_hub_dashboard.browser  # the headless Chromium fixture, used here too


@pytest.fixture
def fleet(tmp_path: Path, signing_key: SigningKey, mosquitto: Mosquitto) -> Iterator[PlanFleet]:
    with plan_fleet(tmp_path, signing_key, mosquitto) as made:
        yield made


def candidate(fleet: PlanFleet, pull: int, new: str) -> str:
    """A signed commit on a pull ref only (no branch has it)."""
    files = {
        f"common/files{fleet.app_root}/app.conf": "v1 secret=hunter2\n",
        f"common/files{fleet.app_root}/new.conf": new,
        "nodes/beta-3/files/opt/elsewhere/x.conf": "outside beta-3's allowed roots\n",
    }
    sha = fleet.repo.commit(files, branch="pr", message=f"pr {pull}", sign=fleet.key, push=False)
    git(fleet.repo.work, "push", "-q", "origin", f"{sha}:refs/pull/{pull}/head")
    return sha


async def test_plan_end_to_end(fleet: PlanFleet, browser: Callable[[str], Any]) -> None:
    v0 = fleet.repo.head("beta")
    before = {n.node: n.files() for n in fleet.nodes}
    c1 = candidate(fleet, 7, "new\n")

    # 1. by pull ref: grouped changes of the three nodes that accept it, one refusal
    done = fleet.cli("plan", "beta", "--commit", "refs/pull/7/head", "--json", "--timeout", "30")
    assert done.returncode == 1, done.stderr  # a node would refuse
    plan = json.loads(done.stdout)
    assert (plan["stage"], plan["from"], plan["to"]) == ("beta", v0, c1)
    assert (plan["ref"], plan["asked"], plan["answered"], plan["silent"]) == (
        "refs/pull/7/head", 4, 4, [])  # fmt: skip
    accepting = ["beta-0", "beta-1", "beta-2"]
    assert plan["changes"] == [
        {"target": "files", "subject": f"{fleet.app_root}/app.conf", "action": "configured",
         "nodes": 3, "examples": accepting},
        {"target": "files", "subject": f"{fleet.app_root}/new.conf", "action": "created",
         "nodes": 3, "examples": accepting},
    ]  # fmt: skip
    [refused] = plan["refused"]
    assert (refused["node"], refused["reason"]) == ("beta-3", "InvalidCommit")
    assert "/opt/elsewhere/x.conf" in refused["message"] and "allowed" in refused["message"]
    assert "hunter2" not in done.stdout  # subjects and actions only, never contents

    # nothing applied, nothing moved
    assert {n.node: n.files() for n in fleet.nodes} == before
    assert fleet.repo.head("beta") == v0 and fleet.repo.head("canary") == v0
    assert fleet.all_on(v0)
    assert {n["desired"] for n in fleet.reported().values()} == {v0}  # statuses untouched
    for node in fleet.nodes:  # the agents' Git caches keep their branch where it was
        cache = node.setup.state_dir / "repo.git"
        assert git(cache, "rev-parse", f"refs/heads/{node.stage}") == v0
    assert fleet.hub.get("/api/v1/stages/beta/plan")["to"] == c1
    # a plan's refusal is an answer, not a node event
    assert fleet.hub.get("/api/v1/events?type=refused")["events"] == []

    # 2. by full commit id (not advertised: the nodes fetch it by id), as Markdown
    c2 = candidate(fleet, 8, "newer\n")
    done = fleet.cli("plan", "beta", "--commit", c2, "--markdown", "--timeout", "30")
    assert done.returncode == 1, done.stderr
    md = done.stdout
    assert md.startswith(f"### edgefleet plan: `beta` {v0[:10]} -> {c2[:10]}\n"), md
    assert "4 of 4 nodes answered." in md
    assert "| action | target | subject | nodes | examples |" in md
    row = f"| configured | files | `{fleet.app_root}/app.conf` | 3 | beta-0, beta-1, beta-2 |"
    assert row in md
    assert "| beta-3 | InvalidCommit |" in md

    # an annotated tag resolves to its commit; a sample asks the same nodes every time
    git(fleet.repo.work, "tag", "-a", "-m", "rc", "v2-rc", c2)
    git(fleet.repo.work, "push", "-q", "origin", "refs/tags/v2-rc")
    samples = [json.loads(fleet.cli("plan", "beta", "--commit", "v2-rc", "--sample", "50%",
                                    "--json").stdout) for _ in range(2)]  # fmt: skip
    assert {(p["to"], p["ref"]) for p in samples} == {(c2, "refs/tags/v2-rc")}
    answered = [
        {n for c in p["changes"] for n in c["examples"]} | {r["node"] for r in p["refused"]}
        for p in samples
    ]
    assert [p["asked"] for p in samples] == [2, 2]
    assert len(answered[0]) == 2 and answered[0] == answered[1]

    # 3. a stopped agent is still online for the hub, but does not answer: silent
    fleet.node("beta-1").pause()
    try:
        done = fleet.cli("plan", "beta", "--commit", c2, "--json", "--timeout", "3")
    finally:
        fleet.node("beta-1").resume()
    plan = json.loads(done.stdout)
    assert (plan["asked"], plan["answered"], plan["silent"]) == (4, 3, ["beta-1"])
    assert [c["nodes"] for c in plan["changes"]] == [2, 2]

    # 4. require_plan: the automatic promotion of the candidate into beta halts instead
    git(fleet.repo.work, "push", "-q", "origin", f"{c1}:refs/heads/canary")
    fleet.wait("canary-0 on the candidate", lambda: fleet.all_on(c1, "canary"))
    fleet.wait("the halt of beta", lambda: fleet.stage("beta").get("paused") is not None)
    [halt] = fleet.hub.get("/api/v1/history?stage=beta")["history"]
    assert (halt["action"], halt["who"], halt["from"], halt["to"]) == ("halt", "auto", v0, c1)
    assert halt["reason"] == f"1 node would refuse {c1[:7]}: beta-3 (InvalidCommit)"
    assert [r["node"] for r in halt["evidence"]["plan"]["refused"]] == ["beta-3"]
    latest = fleet.hub.get("/api/v1/stages/beta/plan")
    assert (latest["from"], latest["to"], latest["ref"]) == (v0, c1, "refs/heads/canary")
    assert fleet.repo.head("beta") == v0
    assert {n.node: n.files() for n in fleet.nodes if n.stage == "beta"} == {
        k: v for k, v in before.items() if k != "canary-0"
    }

    page = await browser(fleet.hub.url + "/")
    await page.wait("document.querySelector('#plans .plan[data-stage=beta]') !== null")
    shown = await page.eval("document.querySelector('#plans').innerText")
    assert "app.conf" in shown and "beta-3" in shown and "InvalidCommit" in shown, shown
    assert page.errors() == []
