"""The import contract of docs/design.md: the hub uses only agent.wire, agent.tomlconf and
agent.mqttloop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB_MAY_IMPORT = {"agent", "agent.wire", "agent.tomlconf", "agent.mqttloop"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if node.module == "agent")  # fmt: skip
    return names


def test_hub_imports_only_the_agents_format_modules() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "hub").rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] == "agent" and name not in HUB_MAY_IMPORT
    }
    assert not offenders, sorted(offenders)


def test_agent_never_imports_the_hub() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "agent").rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] == "hub"
    }
    assert not offenders, sorted(offenders)
