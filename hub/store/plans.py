"""The latest fleet-wide plan of each stage, kept in the database so every hub replica
answers ``GET /api/v1/plans`` with the plan whichever replica made it."""

from __future__ import annotations

from typing import Protocol

from hub.store.db import Db


class PlanRecords(Protocol):
    async def save_plan(self, stage: str, doc: str, at: float) -> None:
        """Keep ``doc`` (the plan as JSON text) as ``stage``'s latest plan."""
        ...

    async def latest_plans(self) -> dict[str, str]:
        """stage -> its latest plan as JSON text."""
        ...


class SqlitePlans(Db, PlanRecords):
    """Contract: :class:`PlanRecords`."""

    async def save_plan(self, stage: str, doc: str, at: float) -> None:
        await self._write(
            "INSERT OR REPLACE INTO latest_plans (stage, doc, at) VALUES (?, ?, ?)",
            (stage, doc, at),
            "saving a plan",
        )

    async def latest_plans(self) -> dict[str, str]:
        return {stage: doc for stage, doc in await self._all("SELECT stage, doc FROM latest_plans")}
