"""The PostgreSQL store: the shared database of several hub replicas."""

from __future__ import annotations

from pathlib import Path

from hub.store.interface import HubStore
from hub.store.pgdb import PgDb
from hub.store.pglease import PgLease
from hub.store.pgnodes import PgNodes
from hub.store.pgoutbox import PgOutbox
from hub.store.pgplans import PgPlans
from hub.store.pgrollouts import PgRollouts
from hub.store.pgsamples import PgSamples
from hub.store.pgwaves import PgWaves


class PgStore(PgNodes, PgRollouts, PgOutbox, PgSamples, PgWaves, PgPlans, PgLease, HubStore):
    """Open with :meth:`open`; close with :meth:`close`."""

    @classmethod
    async def open(cls, url: str, ca_file: Path | None = None) -> PgStore:
        return cls(await PgDb.connect(url, ca_file))
