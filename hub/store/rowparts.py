"""What both store backends do alike around their SQL: fold the summary's grouped
counts into states, turn result rows into typed rows, filter events. Dialect-free."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from hub.states import OVERRIDES
from hub.store.rows import AuditEntry, AuditRow, NodeRow, StateCount


def fold_state_counts(rows: Iterable[Sequence[Any]]) -> list[StateCount]:
    """Rows of (branch, reported state, nodes, one count per override) -> counts per
    (branch, effective state): each override takes its count, the rest stay reported."""
    counts: dict[tuple[str | None, str], int] = {}
    for branch, reported, n, *overridden in rows:
        parts = [*zip((state for state, _cond in OVERRIDES), overridden, strict=True)]
        parts.append((reported, n - sum(overridden)))
        for state, count in parts:
            if count:
                counts[branch, state] = counts.get((branch, state), 0) + count
    return [StateCount(b, s, n) for (b, s), n in counts.items()]


def node_row(r: Sequence[Any]) -> NodeRow:
    """A row of the node columns (labels as JSON text) as a :class:`NodeRow`."""
    labels = json.loads(r[6]) if r[6] else {}
    return NodeRow(
        node=r[0], branch=r[1], state=r[2], reported=r[3], applied=r[4], desired=r[5],
        labels=labels if isinstance(labels, dict) else {}, drift_count=r[7],
        online=bool(r[8]), last_heard=r[9], observed_at=r[10], seq=r[11], version=r[12],
    )  # fmt: skip


def event_filter(
    node: str | None, type_: str | None, since: float | None, limit: int
) -> tuple[str, dict[str, object]]:
    """WHERE clause (``:name`` placeholders) and parameters of an events query."""
    clauses: list[str] = []
    params: dict[str, object] = {"limit": limit}
    for column, value in (("node", node), ("type", type_)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if since is not None:
        clauses.append("at >= :since")
        params["since"] = since
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def audit_entries(rows: Iterable[Sequence[Any]]) -> list[AuditEntry]:
    """Rows of (id, AuditRow's columns) as entries; ``forced`` may come as 0/1."""
    return [
        AuditEntry(id_, AuditRow(at, action, stage, who, from_, to, outcome, bool(forced),
                                 reason, evidence, on_behalf))
        for id_, at, action, stage, who, from_, to, outcome, forced, reason, evidence,
        on_behalf in rows
    ]  # fmt: skip
