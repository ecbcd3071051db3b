"""Waiting for an applied commit to become healthy: every target's checks and the
node-level ``[[health.http]]`` checks must pass for ``settle`` seconds in a row before
the timeout (the commit's ``[health] timeout``, else the agent's)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from agent import httpcheck
from agent.changeset import ChangeSet
from agent.config import HealthConfig
from agent.desired import DesiredState
from agent.targets.base import ApplyContext, HealthProblem, Target

HEALTH_POLL = 0.25
"""Seconds between two rounds of checks."""


async def wait_healthy(
    targets: Sequence[Target],
    desired: DesiredState,
    ctx: ApplyContext,
    plans: dict[str, ChangeSet],
    cfg: HealthConfig,
) -> list[HealthProblem]:
    """[] once healthy for ``settle``; else the problems seen when the time ran out."""
    only_files = all(p.empty for n, p in plans.items() if n != "files")
    settle = 0.0 if only_files and not desired.options.http_checks else cfg.settle
    timeout = desired.options.health_timeout
    deadline = time.monotonic() + (cfg.timeout if timeout is None else timeout)
    healthy_since: float | None = None
    while True:
        problems = [p for t in targets for p in await t.health(desired, ctx)]
        problems += await http_health(desired)
        now = time.monotonic()
        healthy_since = None if problems else (healthy_since or now)
        if healthy_since is not None and now - healthy_since >= settle:
            return []
        if now >= deadline:
            return problems or [HealthProblem("agent", "settle", "not stable long enough")]
        await asyncio.sleep(HEALTH_POLL)


async def http_health(desired: DesiredState) -> list[HealthProblem]:
    """``[[health.http]]`` checks: node-level, so they apply whatever the targets."""
    checks = desired.options.http_checks
    results = await asyncio.gather(*(httpcheck.check(c) for c in checks))
    return [
        HealthProblem("http", check.url, failure)
        for check, failure in zip(checks, results, strict=True)
        if failure is not None
    ]
