"""Rollouts at hub level: a real hub process, a real git daemon, node reports via paho.

Plus the race a promotion must survive, driven in-process through the StageGit hook
(deterministic): someone pushes to the stage branch after the gate was checked, or
while the push is on the wire. Either way nothing is overwritten and the attempt is
audited with the reason.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from common import wire
from hub.config import GitSettings, HubConfig, parse_config
from hub.errors import RolloutRefused
from hub.promote import StageGit
from hub.rollout import Rollout
from hub.store import HubStore
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import REPO_ROOT, HubProc, Publisher, status_doc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import stop_client

pytestmark = pytest.mark.both_backends  # every hub here runs on SQLite, then PostgreSQL

STAGES = """
[[stages]]
name = "canary"
gate = { max_failed = 1 }  # canary halts only when both nodes fail

[[stages]]
name = "beta"
promote_from = "canary"
auto = true
auto_rollback = true
gate = { min_nodes = 2, soak = 1 }

[[stages]]
name = "stable"
promote_from = "beta"
gate = { min_nodes = 1, soak = 0 }
"""
TOKEN = "s3cret-token"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[FleetRepo, GitDaemon]]:
    repo = FleetRepo(tmp_path / "repos")
    server = GitDaemon(repo.root, tmp_path / "git-daemon.log")
    server.start()
    yield repo, server
    server.stop()


class Nodes:
    """Simulated agents: retained status documents with rising seq numbers."""

    def __init__(self, pub: Publisher) -> None:
        self.pub = pub
        self.seq: dict[str, int] = {}

    def report(self, node: str, branch: str, state: str, applied: str,
               desired: str | None = None) -> None:  # fmt: skip
        self.seq[node] = self.seq.get(node, 0) + 1
        self.pub.status(status_doc(node, self.seq[node], state, branch=branch, applied=applied,
                                   desired=desired or applied, last_good=applied))  # fmt: skip


def stage(hub: HubProc, name: str) -> dict[str, Any]:
    return next(s for s in hub.get("/api/v1/stages")["stages"] if s["name"] == name)


def post(hub: HubProc, path: str, body: dict[str, Any], token: str | None = TOKEN) -> Any:
    return hub.request("POST", path, token=token, body=json.dumps(body).encode())


def history(hub: HubProc, name: str | None = None) -> list[dict[str, Any]]:
    return list(hub.get("/api/v1/history" + (f"?stage={name}" if name else ""))["history"])


def cli(hub: HubProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args, "--config", str(hub.config)],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def retained_ref(broker: Mosquitto, branch: str) -> str | None:
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: got.put(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe(wire.ref_topic(branch), qos=1)
    client.loop_start()
    try:
        return wire.parse_ref_payload(got.get(timeout=5))
    finally:
        stop_client(client)


def test_gate_auto_promotion_halt_rollback_resume(
    hub_factory: Callable[..., HubProc],
    daemon: tuple[FleetRepo, GitDaemon],
    publisher: Publisher,
    mosquitto: Mosquitto,
) -> None:
    repo, server = daemon
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="canary")
    repo.push("beta", c0)
    repo.push("stable", c0)
    hub = hub_factory(git_url=server.url(), stages=STAGES)
    nodes = Nodes(publisher)
    for n, branch in (("c1", "canary"), ("c2", "canary"), ("b1", "beta"), ("b2", "beta")):
        nodes.report(n, branch, "synced", c0)
    hub.wait_for(lambda: stage(hub, "beta")["gate_status"]["up_to_date"])

    c1 = repo.commit({"common/files/etc/motd": "v1\n"}, branch="canary")
    hub.wait_for(lambda: stage(hub, "canary")["head"] == c1)
    gate = stage(hub, "beta")["gate_status"]
    assert not gate["open"] and gate["reason"] == f"0/2 nodes applied {c1[:7]}, need 2"
    status, body = post(hub, "/api/v1/stages/beta/promote", {"reason": "too early"})
    assert status == 409 and body["error"].startswith("gate closed: 0/2 nodes"), body
    assert body["evidence"]["ready"] == 0

    # one node on it, one failed on it: closed, and the failure is the reason
    nodes.report("c1", "canary", "synced", c1)
    nodes.report("c2", "canary", "failed", c0, desired=c1)
    hub.wait_for(lambda: "1 node failed on" in stage(hub, "beta")["gate_status"]["reason"])
    nodes.report("c2", "canary", "synced", c1)
    # The ref moves before the audit row is written: wait for the row, not the ref.
    hub.wait_for(lambda: [h["action"] for h in history(hub, "beta")] == ["promote"], timeout=15)
    assert stage(hub, "beta")["head"] == c1
    assert repo.head("beta") == c1
    assert retained_ref(mosquitto, "beta") == c1
    promo = history(hub, "beta")[0]
    assert (promo["action"], promo["outcome"], promo["who"]) == ("promote", "done", "auto")
    assert (promo["from"], promo["to"], promo["forced"]) == (c0, c1, False)
    assert promo["evidence"]["ready"] == 2 and promo["evidence"]["soak_left"] == 0

    # beta fails on c1 beyond max_failed = 0: halt, auto rollback to c0, paused
    nodes.report("b1", "beta", "failed", c0, desired=c1)
    hub.wait_for(lambda: history(hub, "beta")[0]["action"] == "rollback", timeout=15)
    assert repo.head("beta") == c0
    actions = [(h["action"], h["who"], h["to"]) for h in history(hub, "beta")[:3]]
    assert actions == [("rollback", "auto", c0), ("halt", "auto", None), ("promote", "auto", c1)]
    halt = history(hub, "beta")[1]
    assert halt["evidence"]["failed"] == ["b1"] and "1 node failed on" in halt["reason"]
    beta = stage(hub, "beta")
    assert beta["paused"]["kind"] == "halt" and beta["head"] == c0
    # downstream is blocked by the halt; the CLI shows why
    assert "pipeline halted at beta" in stage(hub, "stable")["blocked"]
    out = cli(hub, "stages")
    assert out.returncode == 0 and "PAUSED (halt by auto)" in out.stdout, out

    # the node is back on c0; resume lifts the halt and the healthy canary promotes again
    nodes.report("b1", "beta", "synced", c0)
    out = cli(hub, "resume", "beta", "--reason", "fixed the beta hosts")
    assert out.returncode == 0 and "resumed" in out.stdout, out.stderr
    hub.wait_for(lambda: history(hub, "beta")[0]["action"] == "promote", timeout=15)
    assert repo.head("beta") == c1
    resumed = next(h for h in history(hub, "beta") if h["action"] == "resume")
    assert resumed["who"] == "admin" and resumed["on_behalf"].startswith("cli:")
    assert resumed["reason"] == "fixed the beta hosts"
    out = cli(hub, "history", "--stage", "beta")
    assert out.returncode == 0 and out.stdout.count("promote") == 2, out.stdout


def test_manual_promote_force_rollback_and_bad_requests(
    hub_factory: Callable[..., HubProc],
    daemon: tuple[FleetRepo, GitDaemon],
    publisher: Publisher,
) -> None:
    repo, server = daemon
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="canary")
    for b in ("beta", "stable"):
        repo.push(b, c0)
    c1 = repo.commit({"common/files/etc/motd": "v1\n"}, branch="canary")
    hub = hub_factory(git_url=server.url(), stages=STAGES.replace("auto = true", "auto = false"))
    hub.wait_for(lambda: stage(hub, "canary")["head"] == c1)

    assert post(hub, "/api/v1/stages/beta/promote", {}, token=None)[0] == 401
    assert post(hub, "/api/v1/stages/nope/promote", {})[0] == 400
    assert post(hub, "/api/v1/stages/beta/promote", {"force": "yes"})[0] == 400
    assert post(hub, "/api/v1/stages/beta/rollback", {"to": "abc"})[0] == 400
    status, body = post(hub, "/api/v1/stages/canary/promote", {})
    assert status == 409 and "no promote_from" in body["error"]
    status, body = post(hub, "/api/v1/stages/beta/resume", {})
    assert status == 409 and "not paused" in body["error"]

    out = cli(hub, "promote", "beta")
    assert out.returncode == 1 and "gate closed" in out.stderr, out
    out = cli(hub, "promote", "beta", "--force", "--reason", "hotfix")
    assert out.returncode == 0 and "(forced)" in out.stdout, out.stderr
    assert repo.head("beta") == c1
    forced = history(hub, "beta")[0]
    assert forced["forced"] and forced["reason"] == "hotfix" and forced["who"] == "admin"
    assert forced["on_behalf"].startswith("cli:")

    # promote stable from beta (gate: min 1 node, soak 0)
    nodes = Nodes(publisher)
    nodes.report("s-b1", "beta", "synced", c1)
    hub.wait_for(lambda: stage(hub, "stable")["gate_status"]["open"])
    status, body = post(hub, "/api/v1/stages/stable/promote", {"reason": "go", "who": "alice"})
    assert status == 200 and body["to"] == c1, body
    assert (history(hub, "stable")[0]["who"], history(hub, "stable")[0]["on_behalf"]) == (
        "admin",
        "alice",
    )

    # rollback: to an unrelated commit is refused; default goes to the previous commit
    stray = repo.commit({"other": "x"}, branch="stray")
    status, body = post(hub, "/api/v1/stages/stable/rollback", {"to": stray})
    assert status == 409 and "neither a previous head" in body["error"], body
    out = cli(hub, "rollback", "stable", "--reason", "bad release")
    assert out.returncode == 0 and "rolled back" in out.stdout, out.stderr
    assert repo.head("stable") == c0
    assert stage(hub, "stable")["paused"]["kind"] == "rollback"
    # manual promote into a paused stage needs --force
    status, body = post(hub, "/api/v1/stages/stable/promote", {})
    assert status == 409 and "paused" in body["error"], body
    entries = history(hub)
    assert [e["action"] for e in entries[:2]] == ["rollback", "promote"]
    assert (entries[0]["from"], entries[0]["to"]) == (c1, c0)


# -- the concurrent-push race, in-process -----------------------------------------------


def _cfg(tmp_path: Path, url: str) -> HubConfig:
    import tomllib  # noqa: PLC0415

    data = tomllib.loads(f'[git]\nurl = "{url}"\n' + STAGES)
    return parse_config(data, tmp_path / "fleet.toml")


async def test_concurrent_push_is_never_overwritten(
    tmp_path: Path, daemon: tuple[FleetRepo, GitDaemon], any_store: HubStore
) -> None:
    repo, server = daemon
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="canary")
    repo.push("beta", c0)
    c1 = repo.commit({"common/files/etc/motd": "v1\n"}, branch="canary")
    cfg = _cfg(tmp_path, server.url())
    store = any_store
    git = StageGit(GitSettings(url=server.url()), tmp_path / "mirror.git")
    heads = {"canary": c1, "beta": c0}
    moved: list[tuple[str, str]] = []
    rollout = Rollout(cfg, store, git, lambda: heads, lambda b, s: moved.append((b, s)))
    # 1. someone pushes to beta after the gate was checked (the hub saw c0)
    theirs = repo.commit({"common/files/etc/hotfix": "1"}, branch="beta")
    with pytest.raises(RolloutRefused, match="moved by someone else since the gate"):
        await rollout.promote("beta", "alice", "race 1", force=True)
    assert repo.head("beta") == theirs and not moved

    # 2. someone pushes while our update is on the wire (after the advertisement)
    heads["beta"] = theirs
    # a canary commit on top of theirs (made on the local beta branch, pushed to canary)
    c2 = repo.commit({"common/files/etc/motd": "v2\n"}, branch="beta", push=False)
    repo.push("canary", c2)
    heads["canary"] = c2
    rival: list[str] = []

    def push_first(branch: str, old: str | None, new: str) -> None:
        rival.append(repo.commit({"common/files/etc/rival": "1"}, branch="beta"))

    git.before_update = push_first
    with pytest.raises(RolloutRefused, match="during the push"):
        await rollout.promote("beta", "alice", "race 2", force=True)
    assert repo.head("beta") == rival[0] and not moved

    audit = await rollout.history("beta")
    assert [(a["outcome"], a["reason"].split(":")[0]) for a in audit] == [
        ("refused", "race 2"),
        ("refused", "race 1"),
    ]
    assert "was not overwritten" in audit[0]["reason"]

    # 3. without a rival the same call goes through (fast-forward from the real head)
    git.before_update = None
    heads["beta"] = rival[0]
    c3 = repo.commit({"common/files/etc/motd": "v3\n"}, branch="beta", push=False)
    repo.push("canary", c3)
    heads["canary"] = c3
    result = await rollout.promote("beta", "alice", "ok now", force=True)
    assert result["to"] == c3 and repo.head("beta") == c3 and moved == [("beta", c3)]

    # 4. a candidate that does not descend from the stage head is refused
    repo.push("beta", c0, force=True)
    heads["beta"] = c0
    orphan = subprocess.run(
        ["git", "-C", str(repo.work), "commit-tree", "-m", "unrelated",
         f"{c3}^{{tree}}"], capture_output=True, text=True, check=True,
        env={"GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x",
             "GIT_COMMITTER_EMAIL": "x@x", "PATH": "/usr/bin:/bin"},
    ).stdout.strip()  # fmt: skip
    repo.push("canary", orphan, force=True)
    heads["canary"] = orphan
    with pytest.raises(RolloutRefused, match="not a fast-forward"):
        await rollout.promote("beta", "alice", "history rewrite", force=True)
    assert repo.head("beta") == c0


async def test_git_down_is_audited_as_failed(
    tmp_path: Path, daemon: tuple[FleetRepo, GitDaemon], any_store: HubStore
) -> None:
    repo, server = daemon
    c0 = repo.commit({"a": "0"}, branch="canary")
    repo.push("beta", c0)
    c1 = repo.commit({"a": "1"}, branch="canary")
    store = any_store
    git = StageGit(GitSettings(url=server.url()), tmp_path / "mirror.git")
    rollout = Rollout(_cfg(tmp_path, server.url()), store, git,
                      lambda: {"canary": c1, "beta": c0}, lambda b, s: None)  # fmt: skip
    server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(RolloutRefused, match="failed"):
            await rollout.promote("beta", "bob", "while down", force=True)
        assert time.monotonic() - started < 10
        (entry,) = await rollout.history()
        assert entry["outcome"] == "failed" and entry["forced"]
    finally:
        server.start()


@pytest.mark.timeout(30)
async def test_hung_git_server_fails_promotion_within_the_timeout(
    tmp_path: Path, silent_git_url: str, any_store: HubStore
) -> None:
    store = any_store
    git = StageGit(GitSettings(url=silent_git_url, timeout=1.0), tmp_path / "mirror.git")
    heads = {"canary": "c" * 40, "beta": "b" * 40}
    rollout = Rollout(_cfg(tmp_path, silent_git_url), store, git, lambda: heads,
                      lambda b, s: None)  # fmt: skip
    # The second attempt fails the same way instead of waiting for a held lock.
    for attempt in ("first", "second"):
        with pytest.raises(RolloutRefused, match=r"git fetch git://\S+: no answer within 1s"):
            await rollout.promote("beta", "bob", attempt, force=True)
    audit = await rollout.history()
    assert [(a["outcome"], a["reason"].split(":")[0]) for a in audit] == [
        ("failed", "second"),
        ("failed", "first"),
    ]
