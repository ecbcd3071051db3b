"""Shared pytest setup: every module in tests/testbed/ is a fixture plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

# Testbed modules import each other; have pytest rewrite their asserts before any import.
pytest.register_assert_rewrite("tests.testbed")

pytest_plugins = sorted(
    f"tests.testbed.{p.stem}"
    for p in (Path(__file__).parent / "testbed").glob("*.py")
    if not p.stem.startswith("_")
)
