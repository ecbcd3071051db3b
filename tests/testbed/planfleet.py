"""A fleet for plan tests and benchmarks: real agents (``edgefleet-agent run``), a real
hub process, mosquitto and a git daemon, all on loopback.

Stages: canary (one node, ``canary-0``) -> beta (``beta-0`` ... ``beta-<n-1>``), beta
promoted automatically with ``require_plan``. Every agent applies ``common`` plus
``nodes/<node>`` and may write only under one shared host path, ``PlanFleet.app_root``:
each agent runs in its own mount namespace where its own directory is bind-mounted
there, so the same file is the same subject on every node (plans group by subject)
while each node keeps its own bytes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.rolloutfleet import _stop as stop_process
from tests.testbed.wait import wait_until

STAGES = """
[[stages]]
name = "canary"

[[stages]]
name = "beta"
promote_from = "canary"
auto = true
gate = {{ min_nodes = 1, soak = 0.5, require_plan = {require_plan} }}
"""


@dataclass
class PlanNode:
    node: str
    stage: str
    setup: AgentSetup
    proc: subprocess.Popen[bytes] | None = None

    def files(self) -> dict[str, bytes]:
        """Everything under this node's own copy of the app root."""
        return {
            str(p.relative_to(self.setup.root)): p.read_bytes()
            for p in sorted(self.setup.root.rglob("*"))
            if p.is_file()
        }

    def pause(self) -> None:
        """Stop the agent process (SIGSTOP): still online for the hub, but deaf."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@dataclass
class PlanFleet:
    repo: FleetRepo
    key: SigningKey
    hub: HubProc
    app_root: Path
    nodes: list[PlanNode] = field(default_factory=list)

    def node(self, name: str) -> PlanNode:
        return next(n for n in self.nodes if n.node == name)

    def reported(self) -> dict[str, dict[str, Any]]:
        return {n["node"]: n for n in self.hub.try_get("/api/v1/nodes").get("nodes", [])}

    def all_on(self, commit: str, stage: str | None = None) -> bool:
        reported = self.reported()
        return all(
            n.node in reported
            and reported[n.node]["applied"] == commit
            and reported[n.node]["state"] == "synced"
            for n in self.nodes
            if stage is None or n.stage == stage
        )

    def stage(self, name: str) -> dict[str, Any]:
        stages = self.hub.try_get("/api/v1/stages").get("stages", [])
        return next((s for s in stages if s["name"] == name), {})

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
        def evidence() -> str:
            logs = "\n".join(
                f"--- {n.node}\n"
                + (n.setup.config.parent / "agent.log").read_text(errors="replace")[-1500:]
                for n in self.nodes
            )
            nodes = json.dumps(self.reported(), indent=1)[:2000]
            return f"nodes: {nodes}\nhub log:\n{self.hub.log_text()}\n{logs}"

        wait_until(predicate, timeout, what, 0.1, evidence)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real ``edgefleet-hub`` client against this hub."""
        return subprocess.run(
            [sys.executable, "-m", "hub.cli", *args, "--url", self.hub.url,
             "--token-file", str(self.hub.token_file)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


def _agent(node: PlanNode, app_root: Path) -> subprocess.Popen[bytes]:
    """The agent in a mount namespace of its own, its directory bound at ``app_root``."""
    argv = [sys.executable, "-m", "agent.cli", "--config", str(node.setup.config), "run"]
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'
    with (node.setup.config.parent / "agent.log").open("ab") as log:
        return subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script,
             str(node.setup.root), str(app_root), *argv],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGCONT)  # a paused agent must be able to take SIGTERM
    stop_process(proc)


@contextlib.contextmanager
def plan_fleet(
    directory: Path,
    key: SigningKey,
    broker: Mosquitto,
    beta_nodes: int = 4,
    require_plan: bool = True,
    heartbeat: float = 30.0,
) -> Iterator[PlanFleet]:
    """Hub, git daemon and 1 + ``beta_nodes`` running agents, all on a first signed
    commit ``v0`` (waited for) that places ``app.conf`` on every node."""
    with contextlib.ExitStack() as stack:
        app_root = Path(tempfile.mkdtemp(prefix="edgefleet-plan-"))
        stack.callback(app_root.rmdir)
        repo = FleetRepo(directory / "repos")
        daemon = GitDaemon(repo.root, directory / "git-daemon.log")
        daemon.start()
        stack.callback(daemon.stop)
        hub = HubProc(
            directory / "hub",
            broker,
            heartbeat=heartbeat,
            git_url=daemon.url(),
            stages=STAGES.format(require_plan=str(require_plan).lower()),
        )
        fleet = PlanFleet(repo, key, hub, app_root)
        names = [("canary-0", "canary")] + [(f"beta-{i}", "beta") for i in range(beta_nodes)]
        for name, stage in names:
            setup = write_agent_config(
                directory / name,
                daemon.url(),
                node=name,
                branch=stage,
                paths=("common", f"nodes/{name}"),
                allowed_signers=key.allowed_signers,
                mqtt_url=broker.url,
                interval=2,
                heartbeat=heartbeat,
            )
            text = setup.config.read_text().replace(f'["{setup.root}"]', f'["{app_root}"]')
            setup.config.write_text(text)
            fleet.nodes.append(PlanNode(name, stage, setup))
        files = {f"nodes/{n.node}/README": f"{n.node}\n" for n in fleet.nodes}
        files[f"common/files{app_root}/app.conf"] = "v0\n"
        v0 = repo.commit(files, branch="canary", message="v0", sign=key)
        repo.push("beta", v0)
        hub.start()
        stack.callback(hub.stop)
        for node in fleet.nodes:
            node.proc = _agent(node, app_root)
            stack.callback(_stop, node.proc)
        fleet.wait("every node on v0", lambda: fleet.all_on(v0))
        yield fleet
