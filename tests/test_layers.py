"""The import contract of docs/design.md ("Layers"): ``common`` imports neither ``agent``
nor ``hub``; ``agent`` never imports ``hub``; ``hub`` never imports ``agent``."""

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


def imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_allowed_layers(package: str) -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in imported_packages(path)
        if name in FORBIDDEN[package]
    }
    assert not offenders, sorted(offenders)


def test_the_rule_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from hub.store import Store\nimport agent.config\n")
    assert imported_packages(bad) == {"hub", "agent"}
