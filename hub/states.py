"""Node state names and the effective-state rule, defined once for the whole hub.

A node reports one of :data:`common.wire.STATES`; the hub overrides that with
``offline`` (its LWT said 0), ``stale`` (not heard within its stale window) and
``unknown`` (a state this hub does not know), in that order. :data:`OVERRIDES` is the
rule: the store generates its SQL from it (one CASE expression, and per-override counts
for the summary's single index scan), so no other module re-implements it.
"""

from __future__ import annotations

from typing import Final

from common import wire

STALE: Final = "stale"
OFFLINE: Final = "offline"
UNKNOWN: Final = "unknown"
"""Effective state of a node reporting a state this hub does not know (a newer agent: hubs
are upgraded first, but not always); its raw value stays the node's ``reported_state``."""
UNREPORTED: Final = "progressing"
"""Effective state of a node that went online but never sent a status."""
HEALTHY: Final = "synced"
DEFERRED: Final = "deferred"
"""A node holding a new commit back (update lock, maintenance window): never healthy,
never failed, so it holds a rollout without halting it."""
ALL_STATES: Final[tuple[str, ...]] = (*wire.STATES, UNKNOWN, STALE, OFFLINE)
"""Every effective state, in the order the API lists them."""

HEARTBEAT_MISSES: Final = 3
"""A node is stale after this many missed heartbeats (or ``stale_after``, if longer)."""

OVERRIDES: Final[tuple[tuple[str, str], ...]] = (
    (OFFLINE, "online = 0"),
    (STALE, "stale_at < :now"),
    (
        UNKNOWN,
        "state IS NOT NULL AND state NOT IN (" + ", ".join(f"'{s}'" for s in wire.STATES) + ")",
    ),
)
"""(effective state, SQL condition on a ``nodes`` row), first match wins; ``:now`` is
bound to the current time."""

REPORTED_SQL: Final = f"coalesce(state, '{UNREPORTED}')"
"""What the node last said, as an effective state when no override applies."""

EFFECTIVE_STATE_SQL: Final = (
    "CASE "
    + " ".join(f"WHEN {cond} THEN '{state}'" for state, cond in OVERRIDES)
    + f" ELSE {REPORTED_SQL} END"
)


_EXCLUSIVE_OVERRIDES: Final = tuple(
    "".join(f"NOT ({earlier}) AND " for _s, earlier in OVERRIDES[:i]) + f"({cond})"
    for i, (_state, cond) in enumerate(OVERRIDES)
)
"""Each override's condition, excluding the rows an earlier one took."""

OVERRIDE_COUNTS_SQL: Final = ", ".join(f"sum({cond})" for cond in _EXCLUSIVE_OVERRIDES)
"""One aggregate per override, in order, each counting the rows no earlier one took."""

OVERRIDE_FILTERS_SQL: Final = ", ".join(
    f"count(*) FILTER (WHERE {cond})" for cond in _EXCLUSIVE_OVERRIDES
)
""":data:`OVERRIDE_COUNTS_SQL` for PostgreSQL, which cannot sum booleans."""


def stale_window_sql(stale_after: str, heartbeat: str, larger: str = "max") -> str:
    """SQL for a node's stale window (seconds) from two SQL operands; ``larger`` is the
    dialect's two-argument maximum (PostgreSQL: ``greatest``)."""
    return f"{larger}({stale_after}, {HEARTBEAT_MISSES} * {heartbeat})"
