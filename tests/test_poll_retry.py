"""The reconcile outcome says in a typed field whether the poll loop should back off."""

from __future__ import annotations

from pathlib import Path

from agent.config import load_config
from agent.service import Agent
from common.backoff import ErrorKind
from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey


async def test_unreachable_git_is_transient_other_outcomes_are_not(
    tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    setup = write_agent_config(
        tmp_path / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )
    fleet_repo.commit({f"common/files{setup.root}/app.conf": "v1\n"}, sign=signing_key)
    agent = Agent(load_config(setup.config), with_reporter=False)
    try:
        synced = await agent.reconciler.reconcile()
        assert synced.state == "synced" and synced.retry is None

        refused = fleet_repo.commit({f"common/files{setup.root}/app.conf": "unsigned\n"})
        outcome = await agent.reconciler.reconcile()
        assert (outcome.state, outcome.commit, outcome.retry) == ("refused", refused, None)

        hidden = fleet_repo.bare.with_name("hidden.git")
        fleet_repo.bare.rename(hidden)
        try:
            outcome = await agent.reconciler.reconcile()
        finally:
            hidden.rename(fleet_repo.bare)
        assert outcome.reason == "GitUnreachable" and outcome.retry is ErrorKind.TRANSIENT
    finally:
        await agent.close()
