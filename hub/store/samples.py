"""Fleet state counts over time (one sample every few minutes), for the dashboard chart."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hub.errors import StoreError
from hub.store.db import Db


@dataclass(frozen=True)
class StateSample:
    at: float
    states: dict[str, int]
    """Nodes per effective state at ``at`` (states with no node left out)."""


def grouped_samples(rows: Iterable[Sequence[Any]]) -> list[StateSample]:
    """Rows of (at, state, nodes), in ``at`` order, as one sample per ``at`` (the empty
    state only marks a sample of an empty fleet)."""
    out: dict[float, dict[str, int]] = {}
    for at, state, nodes in rows:
        states = out.setdefault(at, {})
        if state:
            states[state] = nodes
    return [StateSample(at, states) for at, states in out.items()]


class SampleStore(Protocol):
    async def add_sample(self, at: float, states: Mapping[str, int]) -> None: ...

    async def samples(self, since: float) -> list[StateSample]:
        """Samples taken at or after ``since``, oldest first."""
        ...

    async def prune_samples(self, before: float) -> None: ...


class SqliteSamples(Db, SampleStore):
    """Contract: :class:`SampleStore`."""

    async def add_sample(self, at: float, states: Mapping[str, int]) -> None:
        # One row per state; the sample's rows share ``at``. The empty state marks a
        # sample of an empty fleet, so the chart still shows the time.
        rows = [(at, state, n) for state, n in states.items() if n] or [(at, "", 0)]
        async with self._write_lock:
            try:
                await self._w.executemany(
                    "INSERT OR REPLACE INTO state_samples (at, state, nodes) VALUES (?, ?, ?)",
                    rows,
                )
            except sqlite3.Error as err:
                raise StoreError(f"writing a state sample failed: {err}") from err

    async def samples(self, since: float) -> list[StateSample]:
        rows = await self._all(
            "SELECT at, state, nodes FROM state_samples WHERE at >= ? ORDER BY at", (since,)
        )
        return grouped_samples(rows)

    async def prune_samples(self, before: float) -> None:
        await self._write(
            "DELETE FROM state_samples WHERE at < ?", (before,), "pruning state samples"
        )
