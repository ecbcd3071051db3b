"""``[[notify]]``: where notifications go, which events, which stages, how fast."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from common.durations import HOUR
from common.tomlconf import Section

Format = Literal["json", "slack"]
EVENTS = (
    "promotion",
    "halt",
    "rollback",
    "resume",
    "gate_blocked",
    "node_failed",
    "node_refused",
    "node_recovered",
    "node_stale",
    "drift",
)
MQTT_SINK = "mqtt"
"""The built-in sink publishing every event on the hub events topic."""
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Sink:
    name: str
    url: str
    events: tuple[str, ...] = EVENTS
    stages: tuple[str, ...] = ()
    """Only events of these stages; empty = every stage."""
    secret_file: Path | None = None
    """Key of the ``X-Edgefleet-Signature`` HMAC, read at each delivery (rotation)."""
    format: Format = "json"
    drift_threshold: int = 0
    """A ``drift`` event is sent when a stage's drifted nodes rise above this."""
    min_interval: float = 1.0
    """Seconds between two deliveries (chat webhooks accept about one a second)."""
    max_backoff: float = 300.0
    """Longest wait between retries of a receiver that is down."""
    timeout: float = 10.0

    def wants(self, type_: str, stage: str | None) -> bool:
        return type_ in self.events and (not self.stages or stage in self.stages)


def _sink(sec: Section, stage_names: tuple[str, ...]) -> Sink:
    name = sec.text("name")
    if name is None or not _NAME_RE.match(name) or name == MQTT_SINK:
        raise sec.err(
            "name",
            f"is required: lowercase letters, digits, '-' or '_', not {MQTT_SINK!r}; got {name!r}",
        )
    url = sec.text("url")
    if url is None or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise sec.err("url", f"must be an http:// or https:// URL, got {url!r}")
    events = sec.str_list("events") or EVENTS
    for event in events:
        if event not in EVENTS:
            raise sec.err("events", f"unknown event {event!r}; use {', '.join(EVENTS)}")
    stages = sec.str_list("stages") or ()
    for stage in stages:
        if stage not in stage_names:
            raise sec.err("stages", f"no stage named {stage!r}")
    sink = Sink(
        name=name,
        url=url,
        events=events,
        stages=stages,
        secret_file=sec.file("secret_file"),
        format=cast(Format, sec.choice("format", "json", ("json", "slack"))),
        drift_threshold=sec.integer("drift_threshold", 0, maximum=1_000_000),
        min_interval=sec.duration("min_interval", 1.0, maximum=HOUR),
        max_backoff=sec.duration("max_backoff", 300.0, minimum=1.0, maximum=HOUR),
        timeout=sec.duration("timeout", 10.0, minimum=1.0, maximum=300.0),
    )
    sec.done()
    return sink


def parse_sinks(root: Section, stage_names: tuple[str, ...]) -> tuple[Sink, ...]:
    sections = root.tables("notify")
    sinks = tuple(_sink(sec, stage_names) for sec in sections)
    names = [s.name for s in sinks]
    for sec, sink in zip(sections, sinks, strict=True):
        if names.count(sink.name) > 1:
            raise sec.err("name", f"notify sink {sink.name!r} is defined twice")
    return sinks
