"""Manifests built to exhaust the agent: alias bombs, alias cycles, runaway nesting.

Refused while parsing (no API server needed), then once through the real pipeline with
the k3s target against the real kube-apiserver.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from agent.desired import DesiredFile
from agent.errors import PlanError
from agent.k8s.manifests import MAX_ALIAS_NODES, parse
from tests.test_k3s_pipeline import k3s_agent, out, status, sync
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.kube import Kube


def laughs(levels: int, ns: str = "default") -> str:
    """A ConfigMap whose data is 9**levels strings once its aliases are expanded."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = string.ascii_lowercase
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    body = "\n".join("  " + line for line in lines)
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {names[levels]}\n"
        f"  namespace: {ns}\ndata:\n{body}\n"
    )


def manifest_files(text: str) -> dict[str, DesiredFile]:
    return {"app.yaml": DesiredFile("manifests/app.yaml", text.encode(), 0o100644, "common")}


@pytest.mark.parametrize("levels", [6, 8, 12])
def test_alias_bomb_is_refused_while_parsing(levels: int) -> None:
    text = laughs(levels)
    assert len(text) < 1000
    with pytest.raises(PlanError, match=r"manifests/app\.yaml: document 0: .*aliases expand"):
        parse(manifest_files(text))


def test_aliases_within_the_bound_are_accepted() -> None:
    """Anchors and merge keys are legal YAML that real manifests use."""
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"
        "  labels: &labels {app: web, tier: front}\n"
        "  annotations:\n    <<: *labels\n    extra: x\n"
        "data:\n  a: &v hello\n  b: *v\n"
    )
    (manifest,) = parse(manifest_files(text))
    assert manifest.body["metadata"]["annotations"] == {"app": "web", "tier": "front", "extra": "x"}
    assert manifest.body["data"] == {"a": "hello", "b": "hello"}
    # Three levels of 9 stay far below the bound and parse.
    assert MAX_ALIAS_NODES > 9**3
    assert len(parse(manifest_files(laughs(3)))) == 1


def test_alias_expansion_is_bounded_for_the_whole_commit() -> None:
    """Many bombs each under the bound add up: 2 files of 9**5 nodes pass 100,000."""
    one = manifest_files(laughs(5))
    assert len(parse(one)) == 1
    two = {**one, "more.yaml": DesiredFile("manifests/more.yaml", one["app.yaml"].data, 0, "c")}
    with pytest.raises(PlanError, match=r"manifests/more\.yaml: document 0: .*aliases expand"):
        parse(two)


def test_alias_cycle_is_refused() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata: &d\n  self: *d\n"
    with pytest.raises(PlanError, match="cycle"):
        parse(manifest_files(text))


def test_runaway_nesting_is_refused() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: " + "[" * 5000
    with pytest.raises(PlanError, match="nested too deeply"):
        parse(manifest_files(text + "]" * 5000 + "\n"))


async def test_alias_bomb_commit_is_refused_by_the_k3s_pipeline(
    tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey, kube: Kube
) -> None:
    agent = k3s_agent(tmp_path / "a", fleet_repo, signing_key, kube, ["default"])
    head = fleet_repo.commit({"common/manifests/app.yaml": laughs(8)}, sign=signing_key)
    done = await sync(agent)
    assert done.returncode == 1, out(done)
    assert "Traceback" not in out(done)
    assert "refused" in done.stdout and "aliases expand" in done.stdout, out(done)
    assert "manifests/app.yaml" in done.stdout
    st = status(agent)
    assert st["applied"] is None and head not in st["bad_commits"]
