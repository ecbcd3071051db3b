"""Write real agent.toml files for tests and run the real ``edgefleet-agent`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class AgentSetup:
    """One agent's config file, state dir and allowed root, all under a test directory."""

    config: Path
    state_dir: Path
    root: Path

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--config", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def write_agent_config(
    directory: Path,
    url: str,
    *,
    node: str = "node-1",
    branch: str = "stable",
    paths: tuple[str, ...] = ("common",),
    allowed_signers: Path | None = None,
    mqtt_url: str | None = None,
    extra: str = "",
    drift_mode: str = "correct",
    interval: float = 60,
    heartbeat: float = 30,
) -> AgentSetup:
    directory.mkdir(parents=True, exist_ok=True)
    root = directory / "root"
    root.mkdir(exist_ok=True)
    state = directory / "state"
    trust = (
        f'allowed_signers = "{allowed_signers}"\n'
        if allowed_signers
        else "require_signed = false\n"
    )
    mqtt = f'[mqtt]\nurl = "{mqtt_url}"\nheartbeat = {heartbeat}\n' if mqtt_url else ""
    text = f"""node = "{node}"
state_dir = "{state}"
[git]
url = "{url}"
branch = "{branch}"
paths = {list(paths)!r}
interval = {interval}
[trust]
{trust}
{mqtt}
[targets.files]
allowed_roots = ["{root}"]
[drift]
mode = "{drift_mode}"
interval = 3600
[health]
timeout = 10
settle = 0
{extra}
"""
    config = directory / "agent.toml"
    config.write_text(text.replace("paths = [", "paths = [", 1).replace("'", '"'))
    return AgentSetup(config=config, state_dir=state, root=root)
