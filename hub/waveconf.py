"""Waves inside a stage: ``[[stages.waves]]`` and which wave a node belongs to.

A wave selects nodes by labels (``select``), by a stable share of node names
(``percent``, cumulative over the waves before it) or takes the rest (neither). The
first wave that matches a node wins; membership is computed from the node's current
labels at each promotion, so relabelling a node moves it without re-enrolment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from common.durations import DAY
from common.tomlconf import Section

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_NODES = 1_000_000


@dataclass(frozen=True)
class Wave:
    name: str
    select: Mapping[str, str] = field(default_factory=dict)
    """Labels a node must all have (with these values)."""
    percent: int | None = None
    """Cumulative share of node names (0..100) by :func:`name_bucket`."""
    min_ready_ratio: float | None = None
    soak: float | None = None
    max_failed: int | None = None
    """Gate overrides for this wave (None: the stage's gate value)."""

    @property
    def is_rest(self) -> bool:
        return not self.select and self.percent is None


def name_bucket(node: str) -> int:
    """0..99 from sha256 of the node name: the same nodes are always early."""
    return int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big") % 100


def wave_of(waves: Iterable[Wave], node: str, labels: Mapping[str, str]) -> str | None:
    """The first wave matching ``node``; None when no wave matches (it follows the
    stage branch, moved last)."""
    for wave in waves:
        if wave.select:
            if all(labels.get(k) == v for k, v in wave.select.items()):
                return wave.name
        elif wave.percent is not None:
            if name_bucket(node) < wave.percent:
                return wave.name
        else:
            return wave.name
    return None


def wave_ref(stage: str, wave: str) -> str:
    """The wave's desired-commit ref (its own namespace: Git cannot hold
    ``refs/heads/stable`` and ``refs/heads/stable/<wave>`` together)."""
    return f"refs/edgefleet/waves/{stage}/{wave}"


def _select(sec: Section) -> dict[str, str]:
    raw = sec.table("select")
    out: dict[str, str] = {}
    for key in sorted(raw.data):
        value = raw.text(key)
        if not key or not value:
            raise raw.err(key, "label selectors need a non-empty name and string value")
        out[key] = value
    raw.done()
    return out


def _wave(sec: Section, previous_percent: int) -> Wave:
    name = sec.text("name")
    if name is None or not _NAME_RE.match(name):
        raise sec.err("name", f"is required: lowercase letters, digits, '-' or '_'; got {name!r}")
    select = _select(sec)
    percent = sec.integer("percent", -1, minimum=-1, maximum=100)
    if percent != -1 and select:
        raise sec.err("percent", "a wave takes select or percent, not both")
    if percent != -1 and percent <= previous_percent:
        raise sec.err(
            "percent",
            f"percentages are cumulative: {percent} must exceed the earlier {previous_percent}",
        )
    wave = Wave(
        name=name,
        select=select,
        percent=None if percent == -1 else percent,
        min_ready_ratio=(
            sec.number("min_ready_ratio", 1.0, minimum=0.0, maximum=1.0)
            if "min_ready_ratio" in sec.data
            else None
        ),
        soak=sec.duration("soak", 0.0, maximum=30 * DAY) if "soak" in sec.data else None,
        max_failed=(
            sec.integer("max_failed", 0, minimum=0, maximum=MAX_NODES)
            if "max_failed" in sec.data
            else None
        ),
    )
    sec.done()
    return wave


def parse_waves(stage: Section) -> tuple[Wave, ...]:
    """``[[stages.waves]]`` of one stage, checked: unique names, the rest wave last."""
    sections = stage.tables("waves")
    waves: list[Wave] = []
    last_percent = 0
    for sec in sections:
        if waves and waves[-1].is_rest:
            raise sec.err("name", f"wave {waves[-1].name!r} takes the rest: it must be last")
        wave = _wave(sec, last_percent)
        if any(w.name == wave.name for w in waves):
            raise sec.err("name", f"wave {wave.name!r} is defined twice")
        last_percent = wave.percent if wave.percent is not None else last_percent
        waves.append(wave)
    return tuple(waves)
