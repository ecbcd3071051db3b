"""The promotion gate and maintenance windows as pure functions (no I/O)."""

from __future__ import annotations

import calendar
import tomllib
from pathlib import Path

import pytest

from common.windows import parse_schedule
from hub.config import Gate, parse_config
from hub.errors import ConfigError
from hub.gate import duration, evaluate_gate, failed_on
from hub.store import NodeState

C = "c" * 40
OLD = "0" * 40
GATE = Gate(min_nodes=2, min_ready_ratio=0.8, max_failed=0, soak=60.0)


def node(name: str, state: str = "synced", applied: str = C, reported: str | None = None,
         desired: str | None = None) -> NodeState:  # fmt: skip
    return NodeState(name, state, reported or state, applied, desired or applied)


def test_open_after_soak_and_reason_counts_down() -> None:
    nodes = [node(f"n{i}") for i in range(5)]
    first = evaluate_gate(GATE, C, nodes, None, now=1000.0)
    assert not first.open and first.holding_since == 1000.0
    assert first.reason == "5/5 nodes applied ccccccc, soak 60s left"
    later = evaluate_gate(GATE, C, nodes, first.holding_since, now=1059.0)
    assert not later.open and later.soak_left == pytest.approx(1.0)
    done = evaluate_gate(GATE, C, nodes, first.holding_since, now=1060.0)
    assert done.open and done.soak_left == 0 and "healthy for 60s" in done.reason
    assert done.evidence()["ready"] == 5


def test_ratio_rounds_up_and_min_nodes_applies() -> None:
    # 0.8 of 5 = 4 (float rounding must not turn it into 5)
    four = [node(f"n{i}") for i in range(4)] + [node("old", applied=OLD)]
    assert evaluate_gate(GATE, C, four, 0.0, now=100.0).open
    three = [node(f"n{i}") for i in range(3)] + [node(f"o{i}", applied=OLD) for i in range(2)]
    res = evaluate_gate(GATE, C, three, 0.0, now=100.0)
    assert not res.open and res.holding_since is None
    assert res.reason == "3/5 nodes applied ccccccc, need 4"
    # a single node never satisfies min_nodes = 2, whatever the ratio
    assert not evaluate_gate(GATE, C, [node("only")], 0.0, now=100.0).open


def test_stale_and_offline_count_against_never_for() -> None:
    nodes = [node("a"), node("b"), node("c", state="stale"), node("d", state="offline"),
             node("e")]  # fmt: skip
    res = evaluate_gate(GATE, C, nodes, 0.0, now=100.0)
    assert not res.open
    assert (res.ready, res.total, res.stale, res.offline) == (3, 5, 1, 1)
    assert res.reason == "3/5 nodes applied ccccccc, need 4 (1 stale, 1 offline)"


def test_deferred_nodes_hold_the_gate_without_failing_it() -> None:
    nodes = [node("a"), node("b"), node("c"),
             node("d", state="deferred", applied=OLD, desired=C),
             node("e", state="deferred", applied=OLD, desired=C)]  # fmt: skip
    res = evaluate_gate(GATE, C, nodes, 0.0, now=100.0)
    assert not res.open and (res.ready, res.failed) == (3, 0)
    assert res.reason == "3/5 nodes applied ccccccc, need 4 (2 deferred)"


def test_failure_closes_and_resets_soak() -> None:
    nodes = [node(f"n{i}") for i in range(5)]
    held = evaluate_gate(GATE, C, nodes, None, now=0.0)
    # a node that rolled back locally: failed, desired = candidate, applied = old
    nodes[0] = node("n0", state="failed", applied=OLD, desired=C)
    broken = evaluate_gate(GATE, C, nodes, held.holding_since, now=30.0)
    assert not broken.open and broken.holding_since is None
    assert broken.reason == "1 node failed on ccccccc (max 0)"
    # healthy again: the soak starts over
    nodes[0] = node("n0")
    again = evaluate_gate(GATE, C, nodes, broken.holding_since, now=31.0)
    assert again.holding_since == 31.0 and not again.open


def test_stale_failure_is_still_evidence() -> None:
    nodes = [node("a"), node("b"), node("c"), node("d"),
             node("e", state="stale", reported="refused", applied=OLD, desired=C)]  # fmt: skip
    assert failed_on(nodes, C) == ["e"]
    assert not evaluate_gate(Gate(min_nodes=1, min_ready_ratio=0.5, soak=0), C, nodes, 0, 1).open


def test_max_failed_tolerates_some() -> None:
    gate = Gate(min_nodes=1, min_ready_ratio=0.5, max_failed=1, soak=0.0)
    nodes = [node("a"), node("b"), node("c", state="failed", applied=OLD, desired=C)]
    assert evaluate_gate(gate, C, nodes, None, now=5.0).open


def test_no_candidate_or_no_nodes() -> None:
    assert (
        evaluate_gate(GATE, None, [], None, 0).reason == "the source stage branch has no head yet"
    )
    res = evaluate_gate(GATE, C, [], None, 0)
    assert not res.open and res.reason == "0/0 nodes applied ccccccc, need 2"


def test_duration() -> None:
    assert [duration(s) for s in (0.2, 59, 240, 7200 * 2)] == ["1s", "59s", "4m", "4.0h"]


def _utc(y: int, mo: int, d: int, h: int, mi: int) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, 0, 0, 0, 0)))


def test_windows() -> None:
    # 2024-01-01 is a Monday
    office = parse_schedule("mon-fri 09:00-17:00", "UTC")
    assert office.contains(_utc(2024, 1, 1, 9, 0))
    assert not office.contains(_utc(2024, 1, 1, 17, 0))
    assert not office.contains(_utc(2024, 1, 6, 10, 0))  # Saturday
    night = parse_schedule("fri 22:00-04:00", "UTC")  # Friday night into Saturday
    assert night.contains(_utc(2024, 1, 5, 23, 0))
    assert night.contains(_utc(2024, 1, 6, 3, 59))
    assert not night.contains(_utc(2024, 1, 7, 3, 0))  # Sunday early: Saturday not listed


def test_stage_window_in_its_timezone() -> None:
    data = tomllib.loads(STAGES.format(window="09:00-17:00") + 'timezone = "Asia/Tokyo"\n')
    beta = parse_config(data, Path("/etc/edgefleet/fleet.toml")).stages[1]
    assert beta.window is not None
    assert beta.window.contains(_utc(2024, 1, 1, 0, 0))  # 09:00 in Tokyo
    assert not beta.window.contains(_utc(2024, 1, 1, 9, 0))  # 18:00 in Tokyo


def test_stage_window_list() -> None:
    text = STAGES.format(window="X").replace('"X"', '["sat 10:00-12:00", "sun 10:00-12:00"]')
    beta = parse_config(tomllib.loads(text), Path("/etc/edgefleet/fleet.toml")).stages[1]
    assert beta.window is not None and beta.window_spec == ("sat 10:00-12:00", "sun 10:00-12:00")
    assert beta.window.contains(_utc(2024, 1, 7, 11, 0))  # Sunday
    assert not beta.window.contains(_utc(2024, 1, 5, 11, 0))  # Friday


STAGES = """
[[stages]]
name = "canary"
[[stages]]
name = "beta"
promote_from = "canary"
auto = true
auto_rollback = true
gate = {{ min_nodes = 2, soak = 5 }}
window = "{window}"
"""


def test_config_auto_rollback_and_window() -> None:
    data = tomllib.loads(STAGES.format(window="mon-fri 22:00-04:00"))
    cfg = parse_config(data, Path("/etc/edgefleet/fleet.toml"))
    beta = cfg.stages[1]
    assert beta.auto_rollback and beta.gate.soak == 5 and beta.window is not None
    assert (beta.window.windows[0].start, beta.window.windows[0].end) == (22 * 60, 4 * 60)


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        (STAGES.format(window="10:00-10:00"), "stages[1].window", "empty"),
        (STAGES.format(window="sat-xyz 10:00-11:00"), "stages[1].window", "unknown day"),
        ('[[stages]]\nname = "b"\npromote_from = "a"\n[[stages]]\nname = "a"\n',
         "stages[0].promote_from", "must be defined before"),
        ('[[stages]]\nname = "a"\nauto_rollback = "yes"\n', "stages[0].auto_rollback",
         "true or false"),
        ('[[stages]]\nname = "a"\ngate = { min_ready_ratio = 1.5 }\n',
         "stages[0].gate.min_ready_ratio", "between 0 and 1"),
        ('[[stages]]\nname = "a"\ngate = { max_failed = -1 }\n', "stages[0].gate.max_failed",
         "between 0 and 1000000"),
    ],
)  # fmt: skip
def test_stage_validation(toml: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(toml), Path("/f.toml"))
    assert info.value.key == key and problem in info.value.problem, str(info.value)
