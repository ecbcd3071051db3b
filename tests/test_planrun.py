"""The node side of a plan, in process: a real agent (GitSource on a real repository,
the signature checker, the files target, its state) answering plan requests. The MQTT
side is tests/test_plan_e2e.py; here the answer is read where the agent hands it over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.planrun import PlanRunner
from agent.service import Agent
from common.plan import PlanChange, PlanRequest
from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey, git


@pytest.fixture
def setup(tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey) -> AgentSetup:
    return write_agent_config(
        tmp_path / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )


@pytest.fixture
async def agent(setup: AgentSetup) -> AsyncIterator[Agent]:
    made = Agent(load_config(setup.config), with_reporter=False)
    try:
        yield made
    finally:
        await made.close()


class Sent:
    """Where the runner hands its answers over (the reporter's publish, in the daemon)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.event = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> bool:
        self.messages.append((topic, payload))
        self.event.set()
        return True


def runner(agent: Agent, sent: Sent | None = None) -> PlanRunner:
    return PlanRunner(agent.cfg.node, agent.reconciler, agent.source, sent or Sent())


def app(setup: AgentSetup) -> str:
    return f"common/files{setup.root}/app.conf"


async def test_busy_node_answers_after_its_apply(
    agent: Agent, setup: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    c1 = fleet_repo.commit({app(setup): "v1\n"}, sign=signing_key)
    assert (await agent.sync_once()).state == "synced"
    c2 = fleet_repo.commit({app(setup): "v2\n"}, sign=signing_key, push=False)
    git(fleet_repo.work, "push", "-q", "origin", f"{c2}:refs/pull/1/head")
    plans = runner(agent)
    await agent.reconciler.lock.acquire()  # an apply in progress
    try:
        pending = asyncio.create_task(plans.answer(PlanRequest("p1", c2, "refs/pull/1/head")))
        await asyncio.sleep(0)
        # The plan queued on the reconciler lock (an asyncio.Lock keeps its waiters).
        assert not pending.done() and len(agent.reconciler.lock._waiters or ()) == 1
        assert not agent.source.has_commit(c2)  # nothing fetched before the apply ends
    finally:
        agent.reconciler.lock.release()
    answer = await pending
    assert answer.ok and answer.changes == (PlanChange("files", f"{setup.root}/app.conf",
                                                       "configured"),)  # fmt: skip
    assert (setup.root / "app.conf").read_text() == "v1\n"
    assert agent.reconciler.state.applied == c1
    assert agent.reconciler.desired_head == c1


async def test_refusals_are_answered_not_remembered(
    agent: Agent, setup: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    c0 = fleet_repo.commit({app(setup): "v0\n"}, sign=signing_key)
    fleet_repo.commit({app(setup): "v1\n"}, sign=signing_key)
    assert (await agent.sync_once()).state == "synced"  # c0 never applied here
    git(fleet_repo.work, "checkout", "-q", "-b", "old", c0)
    behind = fleet_repo.commit({app(setup): "old\n"}, branch="old", sign=signing_key)
    unsigned = fleet_repo.commit({app(setup): "unsigned\n"}, branch="old")
    sent = Sent()
    plans = runner(agent, sent)
    outcome = agent.reconciler.outcome

    moved = await plans.answer(PlanRequest("p1", behind, "refs/heads/old"))
    assert moved.refused is not None and moved.refused.reason == "Untrusted"
    assert "non_fast_forward" in moved.refused.message or "fast-forward" in moved.refused.message
    plain = await plans.answer(PlanRequest("p2", unsigned, None))  # by id, not advertised
    assert plain.refused is not None and plain.refused.reason == "Untrusted"
    assert "sign" in plain.refused.message
    assert agent.reconciler.outcome is outcome  # the node's status is untouched

    # The runner answers on its own topic; the hub parses what it sent.
    plans.submit({"op": "plan", "id": "p3", "commit": unsigned, "ref": None})
    plans.submit({"op": "plan", "id": "bad id", "commit": unsigned})  # ignored
    task = asyncio.create_task(plans.run())
    try:
        await asyncio.wait_for(sent.event.wait(), 30)
    finally:
        task.cancel()
    [(topic, payload)] = sent.messages
    assert topic == f"edgefleet/v1/node/{agent.cfg.node}/plan"
    assert b'"id":"p3"' in payload and b'"reason":"Untrusted"' in payload

    # A plan's refusal is not remembered: the real reconcile of that commit checks it.
    git(fleet_repo.work, "push", "-q", "--force", "origin", f"{unsigned}:refs/heads/stable")
    assert (await agent.sync_once()).reason == "Untrusted"


async def test_template_error_is_a_refusal_naming_the_file(
    agent: Agent, setup: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    c1 = fleet_repo.commit({app(setup): "v1\n"}, sign=signing_key)
    assert (await agent.sync_once()).state == "synced"
    outcome = agent.reconciler.outcome
    broken = f"common/files{setup.root}/broken.conf.j2"
    c2 = fleet_repo.commit(
        {app(setup): "v2\n", broken: "port = {{ missing }}\n"}, sign=signing_key, push=False
    )
    git(fleet_repo.work, "push", "-q", "origin", f"{c2}:refs/pull/2/head")

    answer = await runner(agent).answer(PlanRequest("p1", c2, "refs/pull/2/head"))
    assert answer.refused is not None and answer.refused.reason == "InvalidCommit"
    assert "broken.conf.j2 line 1: UndefinedError: 'missing' is undefined" in (
        answer.refused.message
    )
    assert answer.changes == ()
    assert (setup.root / "app.conf").read_text() == "v1\n"
    assert not (setup.root / "broken.conf").exists()
    assert agent.reconciler.state.applied == c1
    assert agent.reconciler.outcome is outcome
