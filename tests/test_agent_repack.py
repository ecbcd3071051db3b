"""The daemon keeps its Git cache small: after applies, piled-up packs are repacked.

The real agent daemon (``Agent.run``) runs in-process against a real repository; its
reconciler reports to a recorder, so the test awaits each apply instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.service import Agent
from common.wire import StatusDoc
from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo


class Recorder:
    """The reconciler's Reporting seam: each applied commit with the cache's pack count
    at that moment (inside the reconcile: after any earlier repack, before the next)."""

    def __init__(self, packs: Path) -> None:
        self.packs = packs
        self.applied: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.seq = 0

    def publish_status(self, doc: StatusDoc) -> None:
        return

    def emit_event(self, type: str, commit: str | None, details: dict[str, Any]) -> int:
        if type == "applied" and commit is not None:
            self.applied.put_nowait((commit, len(list(self.packs.glob("*.pack")))))
        self.seq += 1
        return self.seq


@pytest.mark.timeout(60)
async def test_long_lived_daemon_repacks_its_git_cache(
    tmp_path: Path, fleet_repo: FleetRepo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.service")
    setup = write_agent_config(tmp_path / "agent", fleet_repo.url, interval=1)
    agent = Agent(load_config(setup.config))
    agent.repack_after = 3
    recorder = Recorder(setup.state_dir / "repo.git/objects/pack")
    agent.reconciler.report = recorder
    stop = asyncio.Event()
    daemon = asyncio.create_task(agent.run(stop))
    commits, packs = [], []
    try:
        for i in range(6):
            sha = fleet_repo.commit({f"common/files{setup.root}/app.conf": f"v{i}\n"})
            agent.wake.set()  # may be cleared by a loop still finishing; interval = 1 s
            applied, count = await recorder.applied.get()
            assert applied == sha
            commits.append(sha)
            packs.append(count)
    finally:
        stop.set()
        await daemon
    # One pack per fetch until a fourth piled up; after that apply they became one.
    assert packs == [1, 2, 3, 4, 2, 3]
    assert "Git cache repacked: 4 packs into 1" in caplog.text
    assert (setup.root / "app.conf").read_text() == "v5\n"
    try:
        # Kept: what was applied when it repacked, and everything fetched since.
        assert [agent.source.has_commit(c) for c in commits] == [False] * 3 + [True] * 3
    finally:
        agent.source.close()
