"""A staged-rollout fleet for tests and benchmarks: six real agents, each in its own
network namespace (``edge_network``), a broker and a git daemon listening on the bridge
address the edges reach (and loopback for the hub), a real hub process, and three stages
canary(2) -> beta(2) -> stable(2) with auto promotion, auto rollback and a short soak.

Each node applies ``common`` plus ``nodes/<node>``; :meth:`Fleet.commit` writes a signed
canary commit changing every node's ``motd`` under that node's own allowed root.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto, free_port, wait_port
from tests.testbed.nspawn import edge_network
from tests.testbed.wait import wait_until

STAGES = ("canary", "beta", "stable")
SOAK = 2.0
HUB_STAGES = """
[[stages]]
name = "canary"

[[stages]]
name = "beta"
promote_from = "canary"
auto = true
auto_rollback = true
gate = {{ min_nodes = 2, soak = {soak} }}

[[stages]]
name = "stable"
promote_from = "beta"
auto = true
auto_rollback = true
gate = {{ min_nodes = 2, soak = {soak} }}
"""


@dataclass
class Edge:
    node: str
    stage: str
    netns: str
    veth: str
    setup: AgentSetup
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Fleet:
    """Everything the scenarios drive; built by the ``fleet`` fixture."""

    repo: FleetRepo
    key: SigningKey
    hub: HubProc
    edges: list[Edge]

    def commit(self, content: str, extra: dict[str, str | None] | None = None) -> str:
        """A signed commit on canary changing every node's motd."""
        files: dict[str, str | None] = {
            f"nodes/{e.node}/files{e.setup.root}/motd": content for e in self.edges
        }
        files.update(extra or {})
        return self.repo.commit(files, branch="canary", message=content, sign=self.key)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["node"]: n for n in self.hub.try_get("/api/v1/nodes").get("nodes", [])}

    def applied(self, stage: str, commit: str) -> bool:
        nodes = self.nodes()
        mine = [e.node for e in self.edges if e.stage == stage]
        return all(
            n in nodes and nodes[n]["applied"] == commit and nodes[n]["state"] == "synced"
            for n in mine
        )

    def stage(self, name: str) -> dict[str, Any]:
        stages = self.hub.try_get("/api/v1/stages").get("stages", [])
        return next((s for s in stages if s["name"] == name), {})

    def history(self, stage: str) -> list[dict[str, Any]]:
        return list(self.hub.get(f"/api/v1/history?stage={stage}")["history"])

    def motd(self, edge: Edge) -> str:
        path = edge.setup.root / "motd"
        return path.read_text() if path.exists() else ""


def _start_git_daemon(base: Path, log: Path, host_ip: str, port: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["git", "daemon", "--export-all", "--reuseaddr", "--verbose",
             f"--base-path={base}", "--listen=127.0.0.1", f"--listen={host_ip}",
             f"--port={port}", "--enable=receive-pack"],
            stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    wait_port(port)
    wait_port(port, host=host_ip)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def rollout_fleet(directory: Path, key: SigningKey, soak: float = 2.0) -> Iterator[Fleet]:
    """Bridge + 6 namespaces, broker, git daemon, hub and six running agents, every node
    on a first signed commit ``v0`` (waited for)."""
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(edge_network())
        edge_port = free_port()
        broker = Mosquitto(
            directory / "mosquitto",
            extra=f"listener {edge_port} {net.host_ip}\nallow_anonymous true\n",
        )
        broker.start()
        stack.callback(broker.stop)
        repo = FleetRepo(directory / "repos")
        git_port = free_port()
        daemon = _start_git_daemon(repo.root, directory / "git-daemon.log", net.host_ip, git_port)
        stack.callback(_stop, daemon)
        edges: list[Edge] = []
        for i, stage in enumerate(s for s in STAGES for _ in range(2)):
            netns, _address = net.add_edge()
            node = f"{stage}-{i % 2}"
            setup = write_agent_config(
                directory / node,
                f"git://{net.host_ip}:{git_port}/fleet.git",
                node=node,
                branch=stage,
                paths=("common", f"nodes/{node}"),
                allowed_signers=key.allowed_signers,
                mqtt_url=f"mqtt://{net.host_ip}:{edge_port}",
                interval=2,
                heartbeat=1,
            )
            edges.append(Edge(node, stage, netns, net.veth(len(net.edges) - 1), setup))
        hub = HubProc(
            directory / "hub",
            broker,
            heartbeat=1.0,
            stale_after=3.0,
            git_url=f"git://127.0.0.1:{git_port}/fleet.git",
            stages=HUB_STAGES.format(soak=soak),
        )
        fleet = Fleet(repo, key, hub, edges)
        c0 = fleet.commit("v0\n", {"common/README": "shared by every node\n"})
        for stage in STAGES[1:]:
            repo.push(stage, c0)
        hub.start()
        stack.callback(hub.stop)
        for edge in edges:
            with (edge.setup.config.parent / "agent.log").open("ab") as log:
                edge.proc = subprocess.Popen(
                    ["ip", "netns", "exec", edge.netns, *agent_argv(edge.setup)],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            stack.callback(_stop, edge.proc)
        wait(fleet, "every node on v0", lambda: all(fleet.applied(s, c0) for s in STAGES))
        yield fleet


def agent_argv(setup: AgentSetup) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "--config", str(setup.config), "run"]


def agent_logs(fleet: Fleet) -> str:
    logs = [(e.node, e.setup.config.parent / "agent.log") for e in fleet.edges]
    return "\n".join(f"--- {n}\n" + p.read_text(errors="replace")[-1500:] for n, p in logs)


def wait(fleet: Fleet, what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
    def evidence() -> str:
        nodes = json.dumps(fleet.nodes(), indent=1)[:3000]
        return f"nodes: {nodes}\nhub log:\n{fleet.hub.log_text()}\n{agent_logs(fleet)}"

    wait_until(predicate, timeout, what, 0.1, evidence)


@pytest.fixture
def rollout_fleet_2s(tmp_path: Path, signing_key: SigningKey) -> Iterator[Fleet]:
    """The rollout fleet with a 2 s soak, every node on v0."""
    with rollout_fleet(tmp_path, signing_key, soak=2.0) as fleet:
        yield fleet
