"""Agent versions on the hub: per node (API, CLI column), per stage (summary, stages),
and the gate key ``agent_version`` that counts a node ready only on that version."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.config import Gate, parse_config
from hub.gate import evaluate_gate
from hub.store import NodeState
from tests.test_hub_api import cli
from tests.testbed.hubproc import HubProc, Publisher, status_doc

pytestmark = pytest.mark.both_backends  # every hub here runs on SQLite, then PostgreSQL

C = "c" * 40
GATE = Gate(min_nodes=2, min_ready_ratio=1.0, max_failed=0, soak=0.0, agent_version="0.2.0")


def _node(name: str, version: str | None) -> NodeState:
    return NodeState(name, "synced", "synced", C, C, version)


def test_gate_counts_only_nodes_on_the_agent_version() -> None:
    nodes = [_node("a", "0.2.0"), _node("b", "0.1.0"), _node("c", None)]
    res = evaluate_gate(GATE, C, nodes, None, now=10.0)
    assert not res.open and res.ready == 1
    assert res.reason == "1/3 nodes applied ccccccc on agent 0.2.0, need 3"
    upgraded = [_node(n, "0.2.0") for n in "abc"]
    assert evaluate_gate(GATE, C, upgraded, None, now=10.0).open


def test_gate_without_agent_version_ignores_versions() -> None:
    plain = Gate(min_nodes=2, min_ready_ratio=1.0, max_failed=0, soak=0.0)
    assert evaluate_gate(plain, C, [_node("a", "0.1.0"), _node("b", None)], None, 1.0).open


def test_config_gate_agent_version() -> None:
    toml = '[[stages]]\nname = "canary"\n[[stages]]\nname = "beta"\npromote_from = "canary"\n'
    cfg = parse_config(
        tomllib.loads(toml + 'gate = { agent_version = "0.4.0" }\n'), Path("/f.toml")
    )
    assert cfg.stages[1].gate.agent_version == "0.4.0"
    assert cfg.stages[0].gate.agent_version is None


@pytest.fixture
def versioned_hub(hub_factory: Callable[..., HubProc], publisher: Publisher) -> HubProc:
    hub = hub_factory()
    for node, branch, version in (
        ("pi-01", "canary", "0.2.0"),
        ("pi-02", "canary", "0.1.0"),
        ("pi-03", "stable", "0.1.0"),
        ("pi-04", "stable", "0.1.0"),
    ):
        publisher.status(status_doc(node, 1, "synced", branch=branch, version=version))
    # A status without the field (any agent may leave it out) still counts, as unknown.
    old = status_doc("pi-05", 1, "synced", branch="stable")
    del old["version"]
    publisher.status(old)
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 5)
    return hub


def test_versions_per_node_and_stage(versioned_hub: HubProc) -> None:
    hub = versioned_hub
    nodes = {n["node"]: n["version"] for n in hub.get("/api/v1/nodes")["nodes"]}
    assert nodes == {"pi-01": "0.2.0", "pi-02": "0.1.0", "pi-03": "0.1.0", "pi-04": "0.1.0",
                     "pi-05": None}  # fmt: skip
    assert hub.get("/api/v1/nodes/pi-01")["version"] == "0.2.0"
    stages = hub.get("/api/v1/summary")["stages"]
    assert stages["canary"]["versions"] == {"0.1.0": 1, "0.2.0": 1}
    assert stages["stable"]["versions"] == {"0.1.0": 2, "unknown": 1}
    assert stages["beta"]["versions"] == {}  # no nodes yet, the key is there
    listed: dict[str, Any] = {s["name"]: s for s in hub.get("/api/v1/stages")["stages"]}
    assert listed["canary"]["versions"] == {"0.1.0": 1, "0.2.0": 1}
    assert listed["canary"]["gate"]["agent_version"] is None


def test_cli_nodes_version_column(versioned_hub: HubProc) -> None:
    cfg = str(versioned_hub.config)
    plain = cli("nodes", "--config", cfg)
    assert plain.returncode == 0, plain.stderr
    assert "VERSION" not in plain.stdout
    out = cli("nodes", "--config", cfg, "--version")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[-1] == "VERSION"
    pi01 = next(r for r in rows if r.startswith("pi-01"))
    assert pi01.split()[-1] == "0.2.0"
    data = json.loads(cli("nodes", "--config", cfg, "--version", "--json").stdout)
    assert data["nodes"][0]["version"] == "0.2.0"
