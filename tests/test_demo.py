"""The README's main job: ``edgefleet-hub demo`` runs a whole fleet and promotes a change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.testbed.mosquitto import free_port


def test_demo_flows_a_change_through_every_stage(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "demo", "--port", str(free_port()),
         "--dir", str(work), "--exit-after", "0.5"],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "promoting canary -> beta" in out and "promoting beta -> stable" in out
    assert "v2 is live everywhere" in out
    assert "stable: " in out.splitlines()[-5] or "dashboard:" in out
    assert not work.exists(), "the demo leaves no work directory behind without --keep"
