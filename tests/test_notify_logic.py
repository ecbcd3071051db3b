"""Pure logic of notifications: event bodies, which sink wants what, the [[notify]]
config, and how the watcher turns state counts into one event per burst."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfig, parse_config
from hub.errors import ConfigError
from hub.notify.config import Sink
from hub.notify.events import Event, NodeCounts, from_audit
from hub.notify.service import _above
from hub.notify.watch import NodeWatch
from hub.store import AuditRow, NodeRow, StateCount

STAGES = '[[stages]]\nname = "canary"\n\n[[stages]]\nname = "beta"\npromote_from = "canary"\n'


def config(tmp_path: Path, extra: str = "") -> HubConfig:
    return parse_config(tomllib.loads(STAGES + extra), tmp_path / "fleet.toml")


def audit(action: str, outcome: str = "done", evidence: Any = None) -> AuditRow:
    return AuditRow(1.0, action, "beta", "olga", "a" * 40, "b" * 40, outcome, False, "why",
                    json.dumps(evidence or {}), "cli:alice")  # fmt: skip


def test_audit_rows_become_typed_events() -> None:
    assert from_audit(audit("promote")).type == "promotion"
    blocked = from_audit(audit("promote", "refused"))
    assert (blocked.type, blocked.reason) == ("gate_blocked", "refused: why")
    halt = from_audit(audit("halt", evidence={"failed": [f"n{i}" for i in range(7)]}))
    assert halt.type == "halt" and halt.nodes == NodeCounts(
        "failed", 7, 7, ("n0", "n1", "n2", "n3", "n4")
    )
    doc = from_audit(audit("rollback")).doc("https://hub.example")
    assert doc["commits"] == {"from": "a" * 40, "to": "b" * 40}
    assert (doc["who"], doc["on_behalf"], doc["url"]) == (
        "olga",
        "cli:alice",
        "https://hub.example/",
    )


def test_slack_body_is_one_readable_line() -> None:
    event = Event("node_stale", "beta", "3 nodes went stale", 1.0,
                  nodes=NodeCounts("stale", 3, 3, ("a", "b", "c")))  # fmt: skip
    body = json.loads(event.body("slack", "https://hub.example"))
    assert body == {
        "text": "edgefleet [beta] node stale: 3 nodes went stale (e.g. a, b, c) <https://hub.example/>"
    }
    assert json.loads(event.body("json", None))["id"] == event.id


def test_sinks_filter_by_event_stage_and_drift_threshold() -> None:
    sink = Sink("ops", "http://x", events=("drift", "halt"), stages=("beta",), drift_threshold=10)
    assert sink.wants("halt", "beta") and not sink.wants("halt", "canary")
    assert not sink.wants("promotion", "beta")

    def drift(count: int, total: int) -> Event:
        return Event("drift", "beta", "", 0.0, nodes=NodeCounts("drifted", count, total))

    assert _above(drift(5, 12), 10)  # 7 -> 12 crosses 10
    assert not _above(drift(2, 14), 10)  # 12 -> 14 was above already
    assert not _above(drift(3, 9), 10)


@pytest.mark.parametrize(
    ("sink", "key", "problem"),
    [
        ('name = "ops"\nurl = "ftp://x"', "url", "http"),
        ('name = "ops"\nurl = "http://x"\nevents = ["boom"]', "events", "unknown event"),
        ('name = "ops"\nurl = "http://x"\nstages = ["prod"]', "stages", "prod"),
        ('name = "mqtt"\nurl = "http://x"', "name", "not 'mqtt'"),
        ('name = "Oncall"\nurl = "http://x"', "name", "got 'Oncall'"),
        ('name = "ops"\nurl = "http://x"\nformat = "xml"', "format", "one of"),
        ('name = "ops"\nurl = "http://x"\nmax_backoff = "0s"', "max_backoff", "between"),
    ],
)
def test_bad_sinks_are_config_errors(tmp_path: Path, sink: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, f"[[notify]]\n{sink}\n")
    assert f"notify[0].{key}" in str(err.value) and problem in str(err.value)


def test_duplicate_sink_names_are_refused(tmp_path: Path) -> None:
    sink = '[[notify]]\nname = "ops"\nurl = "http://x"\n'
    with pytest.raises(ConfigError, match="defined twice"):
        config(tmp_path, sink + sink)


class Counts:
    """State counts the test sets (a fake NodeQueries: only what the watcher reads)."""

    def __init__(self) -> None:
        self.now: dict[tuple[str, str], int] = {}

    async def state_counts(self, now: float) -> list[StateCount]:
        return [StateCount(b, s, n) for (b, s), n in self.now.items()]

    async def list_nodes(self, now: float, branches: Iterable[str] | None = None,
                         state: str | None = None, labels: Any = None, limit: int = 100,
                         offset: int = 0) -> tuple[int, list[NodeRow]]:  # fmt: skip
        rows = [NodeRow(f"{state}-{i}", "beta", state or "", None, None, None, {}, 0, True, 0.0,
                        None, 1) for i in range(limit)]  # fmt: skip
        return len(rows), rows


async def test_a_burst_over_several_checks_is_one_event(tmp_path: Path) -> None:
    counts = Counts()
    watch = NodeWatch(config(tmp_path), counts, lambda: 0.0)  # type: ignore[arg-type]
    counts.now = {("beta", "synced"): 100}
    assert await watch.check() == []  # baseline
    counts.now = {("beta", "synced"): 70, ("beta", "stale"): 30}
    assert await watch.check() == []  # still moving
    counts.now = {("beta", "synced"): 50, ("beta", "stale"): 50}
    assert await watch.check() == []
    (event,) = await watch.check()  # held still: sent
    assert (event.type, event.stage, event.nodes) == (
        "node_stale", "beta", NodeCounts("stale", 50, 50, tuple(f"stale-{i}" for i in range(5)))
    )  # fmt: skip
    # nodes back from failed count as recovered; new synced nodes do not
    counts.now = {("beta", "synced"): 50, ("beta", "failed"): 50}
    await watch.check()
    await watch.check()
    counts.now = {("beta", "synced"): 90, ("beta", "failed"): 10, ("canary", "synced"): 5}
    await watch.check()
    (recovered,) = await watch.check()
    assert (recovered.type, recovered.nodes.count if recovered.nodes else None) == (
        "node_recovered", 40
    )  # fmt: skip
