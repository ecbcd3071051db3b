"""Latest plans on PostgreSQL: the same contract as :mod:`hub.store.plans`."""

from __future__ import annotations

from hub.store.pgdb import PgDb
from hub.store.plans import PlanRecords


class PgPlans(PgDb, PlanRecords):
    """Contract: :class:`~hub.store.plans.PlanRecords`."""

    async def save_plan(self, stage: str, doc: str, at: float) -> None:
        await self._write(
            "INSERT INTO latest_plans (stage, doc, at) VALUES ($1, $2, $3) "
            "ON CONFLICT (stage) DO UPDATE SET doc = excluded.doc, at = excluded.at",
            (stage, doc, at),
            "saving a plan",
        )

    async def latest_plans(self) -> dict[str, str]:
        return {stage: doc for stage, doc in await self._all("SELECT stage, doc FROM latest_plans")}
