"""Drift: live state compared with the applied commit, target by target, and corrected
where ``[drift] mode = "correct"``. Unmanaged objects are never looked at."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.desired import DesiredState
from agent.errors import EdgefleetError, TransientError
from agent.state import NodeState
from agent.targets.base import ApplyContext, Target
from common.wire import DriftItem

log = logging.getLogger(__name__)


async def find_drift(
    targets: Sequence[Target], desired: DesiredState, state: NodeState
) -> list[DriftItem]:
    found: list[DriftItem] = []
    for target in targets:
        found.extend(await target.drift(desired, state.owned(target.name)))
    return found


async def correct_drift(
    targets: Sequence[Target],
    found: list[DriftItem],
    desired: DesiredState,
    ctx: ApplyContext,
    state: NodeState,
) -> list[DriftItem]:
    """Correct ``found``; returns what drift remains (``found`` if it cannot be looked at)."""
    try:
        for target in targets:
            mine = [d for d in found if d["target"] == target.name]
            if mine:
                await target.correct(mine, desired, ctx)
    except EdgefleetError as err:
        log.error("drift correction failed: %s", err)
    try:
        return await find_drift(targets, desired, state)
    except TransientError as err:
        log.warning("drift check after correction failed: %s", err)
        return found
