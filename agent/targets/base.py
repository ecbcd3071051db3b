"""The one small interface every target implements (files, systemd, k3s).

The reconcile pipeline calls, per commit: ``plan`` for every target (nothing written;
a PlanError refuses the whole commit), then ``apply`` in target order (files, systemd,
k3s), then ``prune`` in reverse order, then ``health``. ``drift`` compares live state
with the inventory; ``correct`` restores what drift found. Targets never write the
state file themselves: they call ``ctx.record`` after each object so that a crash
leaves an inventory that is true for every object already touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.changeset import ChangeSet
from agent.desired import DesiredState
from agent.state import Owned
from common.wire import DriftItem


@dataclass
class ApplyContext:
    commit: str
    record: Callable[[str, str, Owned | None], None]
    """record(target, subject, owned) persists one inventory entry (None = forget it)."""
    changes: Mapping[str, ChangeSet] = field(default_factory=dict)
    """ChangeSets of the targets applied earlier in this run (systemd reads files')."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("agent"))


@dataclass(frozen=True)
class HealthProblem:
    target: str
    subject: str
    reason: str
    unavailable: bool = False
    """Health could not be checked (the target's server was unreachable): no verdict."""


class Target(Protocol):
    name: str

    async def plan(self, desired: DesiredState, owned: Mapping[str, Owned]) -> ChangeSet:
        """Compare desired with owned; raise PlanError for input that must not be applied."""
        ...

    async def apply(self, plan: ChangeSet, desired: DesiredState, ctx: ApplyContext) -> None:
        """Make created/configured changes live; raise ApplyError on failure."""
        ...

    async def prune(self, plan: ChangeSet, ctx: ApplyContext) -> None:
        """Remove deleted objects; a failed delete stays in the inventory."""
        ...

    async def health(self, desired: DesiredState, ctx: ApplyContext) -> list[HealthProblem]:
        """Empty when everything this target applied is healthy right now."""
        ...

    async def drift(self, desired: DesiredState, owned: Mapping[str, Owned]) -> list[DriftItem]:
        """Differences between live state and the applied desired state (read-only)."""
        ...

    async def correct(
        self, drift: list[DriftItem], desired: DesiredState, ctx: ApplyContext
    ) -> None:
        """Restore the desired state for each drift item of this target."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...
