"""A stage with waves for tests and benchmarks: real agents on the host (one on beta,
three on stable labelled pilot/shop/shop), a broker, a git daemon and a real hub whose
stable stage rolls out in two waves: ``pilot`` (label site=pilot, its own soak) then
``rest``. Each node applies ``common`` plus ``nodes/<node>``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey, git
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.rolloutfleet import _stop, agent_argv
from tests.testbed.wait import wait_until

WAVE_STAGES = """
[[stages]]
name = "beta"

[[stages]]
name = "stable"
promote_from = "beta"
gate = {{ min_nodes = 1, soak = 0 }}

[[stages.waves]]
name = "pilot"
select = {{ site = "pilot" }}
soak = {soak}

[[stages.waves]]
name = "rest"
"""
NODES = {"beta-0": ("beta", "shop"), "stable-pilot": ("stable", "pilot"),
         "stable-a": ("stable", "shop"), "stable-b": ("stable", "shop")}  # fmt: skip
TOKEN = "s3cret-token"


@dataclass
class WaveFleet:
    repo: FleetRepo
    key: SigningKey
    hub: HubProc
    setups: dict[str, AgentSetup]
    procs: dict[str, subprocess.Popen[bytes]]

    def commit(self, content: str, extra: dict[str, str | None] | None = None) -> str:
        """A signed commit on beta changing every node's motd."""
        files: dict[str, str | None] = {
            f"nodes/{n}/files{s.root}/motd": content for n, s in self.setups.items()
        }
        files.update(extra or {})
        return self.repo.commit(files, branch="beta", message=content, sign=self.key)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["node"]: n for n in self.hub.try_get("/api/v1/nodes").get("nodes", [])}

    def on(self, commit: str, *nodes: str) -> bool:
        seen = self.nodes()
        return all(
            n in seen and seen[n]["applied"] == commit and seen[n]["state"] == "synced"
            for n in nodes
        )

    def hub_head(self, stage: str) -> str | None:
        """The head of ``stage`` as the hub saw it last."""
        stages = self.hub.try_get("/api/v1/stages").get("stages", [])
        return next((s["head"] for s in stages if s["name"] == stage), None)

    def waves(self) -> dict[str, dict[str, Any]]:
        stages = self.hub.try_get("/api/v1/stages").get("stages", [])
        stable = next((s for s in stages if s["name"] == "stable"), {})
        return {w["name"]: w for w in stable.get("waves", [])}

    def wave_head(self, wave: str) -> str:
        return git(self.repo.bare, "rev-parse", f"refs/edgefleet/waves/stable/{wave}")

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return self.hub.request(
            "POST", path, TOKEN, json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip

    def start_agent(self, node: str) -> None:
        setup = self.setups[node]
        with (setup.config.parent / "agent.log").open("ab") as log:
            proc = subprocess.Popen(agent_argv(setup), stdout=log, stderr=subprocess.STDOUT)
        self.procs[node] = proc

    def relabel(self, node: str, site: str) -> None:
        """Change the node's ``site`` label in its agent.toml and restart its agent."""
        _stop(self.procs[node])
        config = self.setups[node].config
        text = config.read_text()
        config.write_text(text[: text.index("[labels]")] + f'[labels]\nsite = "{site}"\n')
        self.start_agent(node)

    def wait(self, what: str, predicate: Any, timeout: float = 60) -> None:
        def evidence() -> str:
            logs = "\n".join(
                f"--- {n}\n" + (s.config.parent / "agent.log").read_text(errors="replace")[-1500:]
                for n, s in self.setups.items()
            )
            return f"nodes: {self.nodes()}\nwaves: {self.waves()}\n{self.hub.log_text()}\n{logs}"

        wait_until(predicate, timeout, what, 0.1, evidence)


@contextlib.contextmanager
def wave_fleet(
    directory: Path, key: SigningKey, broker: Mosquitto, soak: float
) -> Iterator[WaveFleet]:
    """Every node on a first signed commit ``c0`` (waited for)."""
    with contextlib.ExitStack() as stack:
        repo = FleetRepo(directory / "repos")
        daemon = GitDaemon(repo.root, directory / "git-daemon.log")
        daemon.start()
        stack.callback(daemon.stop)
        setups = {
            node: write_agent_config(
                directory / node, daemon.url(), node=node, branch=branch,
                paths=("common", f"nodes/{node}"), allowed_signers=key.allowed_signers,
                mqtt_url=broker.url, interval=2, heartbeat=1,
                extra=f'[labels]\nsite = "{site}"\n',
            )
            for node, (branch, site) in NODES.items()
        }  # fmt: skip
        stages = WAVE_STAGES.format(soak=soak)
        hub = HubProc(directory / "hub", broker, heartbeat=1.0, stale_after=5.0,
                      git_url=daemon.url(), stages=stages, token=TOKEN)  # fmt: skip
        fleet = WaveFleet(repo, key, hub, setups, {})
        c0 = fleet.commit("v0\n", {"common/README": "shared by every node\n"})
        repo.push("stable", c0)
        hub.start()
        stack.callback(hub.stop)
        stack.callback(lambda: [_stop(p) for p in fleet.procs.values()])
        for node in setups:
            fleet.start_agent(node)
        fleet.wait("every node on c0", lambda: fleet.on(c0, *NODES))
        yield fleet
