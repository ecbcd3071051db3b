"""The import contract of docs/design.md ("Layers"): ``common`` imports neither ``agent``
nor ``hub``; ``agent`` never imports ``hub``; ``hub`` never imports ``agent`` - except
for the edges in ALLOWED, each with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "common": {"agent", "hub"},
    "agent": {"hub"},
    "hub": {"agent"},
}
ALLOWED = {
    # enroll checks the agent.toml it writes with the agent's own parser (and its error).
    "hub/enroll/agentconf.py": {"agent.config", "agent.errors"},
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_allowed_layers(package: str) -> None:
    offenders = set()
    for path in (ROOT / package).rglob("*.py"):
        where = str(path.relative_to(ROOT))
        for name in imported_modules(path) - ALLOWED.get(where, set()):
            if name.split(".")[0] in FORBIDDEN[package]:
                offenders.add(f"{where}: {name}")
    assert not offenders, sorted(offenders)


def test_every_allowed_edge_is_used() -> None:
    for where, names in ALLOWED.items():
        assert names <= imported_modules(ROOT / where), where


def test_the_rule_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from hub.store import Store\nimport agent.config\n")
    assert imported_modules(bad) == {"hub.store", "agent.config"}
