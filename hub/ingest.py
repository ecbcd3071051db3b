"""Ingest: validate node messages and write them to the store in batches.

Every message is checked on arrival (size, topic, JSON, schema, types, that the node
in the payload is the node in the topic); a bad one is counted by reason, logged at
most once per reason per 10 s, acknowledged and dropped. Good ones are collected and
written every ``interval`` seconds in one transaction; their MQTT acks are sent only
after that commit, so a hub crash loses nothing the broker considers delivered.

Ordering rules: a status with a lower seq than the stored one is ignored (late
delivery); the same seq again is a heartbeat (refreshes "last heard"); events are
deduplicated by (node, seq) in SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from common import wire
from hub.errors import HubError, StoreError
from hub.mqtt import Message
from hub.store import Batch, EventRow, StatusRow, Store

log = logging.getLogger(__name__)

KINDS = ("status", "online", "events")
TOPICS = tuple(f"{wire.PREFIX}/node/+/{kind}" for kind in KINDS)
DROP_REASONS = (
    "too_large",
    "bad_topic",
    "bad_json",
    "bad_schema",
    "bad_type",
    "node_mismatch",
)
_LOG_EVERY = 10.0
_RETENTION_EVERY = 300.0
_MAX_ROUTES = 300_000


class Rejected(HubError):
    """A message that must be dropped; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Status(NamedTuple):
    node: str
    seq: int
    state: str
    branch: str | None
    applied: str | None
    desired: str | None
    drift_count: int
    heartbeat: float
    observed_at: float | None
    doc: str


class Event(NamedTuple):
    node: str
    seq: int
    at: float | None
    type: str
    commit: str | None
    details: str


_MAX_INT = 2**63 - 1
"""SQLite's INTEGER range: a larger seq could not be stored."""


def _no_constant(name: str) -> NoReturn:
    # NaN and Infinity are not JSON: SQLite's JSON functions reject a stored document
    # holding one, which would break every API query over all nodes.
    raise Rejected("bad_type", f"{name} is not a JSON number")


_decode = json.JSONDecoder(parse_constant=_no_constant).decode


def _load(payload: bytes) -> tuple[dict[str, Any], str]:
    try:
        text = payload.decode("utf-8")
        doc = _decode(text)
    except (ValueError, RecursionError) as err:  # RecursionError: deeply nested input
        raise Rejected("bad_json", str(err)[:80]) from err
    if type(doc) is not dict:
        raise Rejected("bad_json", f"top level is {type(doc).__name__}, not an object")
    return doc, text


def _check_header(doc: dict[str, Any], node: str) -> int:
    schema = doc.get("schema")
    if type(schema) is not int or schema != wire.SCHEMA:
        raise Rejected("bad_schema", f"schema {str(schema)[:32]!r} (want {wire.SCHEMA})")
    payload_node = doc.get("node")
    if type(payload_node) is not str:
        raise Rejected("bad_type", "node is not a string")
    if payload_node != node:
        raise Rejected("node_mismatch", f"payload node {payload_node[:64]!r} on topic of {node!r}")
    seq = doc.get("seq")
    if type(seq) is not int or not 0 <= seq <= _MAX_INT:
        raise Rejected("bad_type", f"seq {str(seq)[:32]!r} is not an integer in 0..2^63-1")
    return seq


def _column(value: object, key: str) -> str | None:
    """A string (or null) that becomes an SQLite column: lone surrogates (JSON allows
    ``\\ud800``) cannot be encoded to UTF-8 and would fail the whole batch."""
    if value is None:
        return None
    if type(value) is not str:
        raise Rejected("bad_type", f"{key} is {type(value).__name__}, not a string")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as err:
            raise Rejected("bad_type", f"{key} is not valid Unicode") from err
    return value


def _number(value: object, key: str) -> float | None:
    # bool is an int in Python; JSON true is not a number here
    if value is None:
        return None
    if type(value) is float:
        if math.isfinite(value):  # 1e999 parses as inf
            return value
    elif type(value) is int:
        with contextlib.suppress(OverflowError):  # a 400-digit integer
            return float(value)
    raise Rejected("bad_type", f"{key} is not a finite number")


_OTHER_STR = ("last_good", "reason", "message", "version")
_DICT_OR_NONE = ("resources", "health")
_MAX_STATE = 32


def parse_status(node: str, payload: bytes) -> Status:
    """Validate a status document (wire.StatusDoc); raises Rejected.

    Written for speed (it runs for every message): plain loops and type checks.
    """
    doc, text = _load(payload)
    seq = _check_header(doc, node)
    get = doc.get
    # A state this hub does not know (a newer agent) is stored as sent: the effective
    # state is then ``unknown`` (hub.states), the raw value the node's reported_state.
    state = _column(get("state"), "state")
    if not state or len(state) > _MAX_STATE:
        raise Rejected("bad_type", f"state {str(state)[:32]!r} is not a short string")
    branch = _column(get("branch"), "branch")
    applied = _column(get("applied"), "applied")
    desired = _column(get("desired"), "desired")
    for key in _OTHER_STR:
        value = get(key)
        if value is not None and type(value) is not str:
            raise Rejected("bad_type", f"{key} is {type(value).__name__}, not a string")
    for key in _DICT_OR_NONE:
        value = get(key)
        if value is not None and type(value) is not dict:
            raise Rejected("bad_type", f"{key} is {type(value).__name__}, not an object")
    labels = get("labels") or {}
    if type(labels) is not dict:
        raise Rejected("bad_type", "labels must map strings to strings")
    for value in labels.values():
        if type(value) is not str:
            raise Rejected("bad_type", "labels must map strings to strings")
    drift = get("drift") or []
    if type(drift) is not list:
        raise Rejected("bad_type", "drift must be a list of items with target, subject, kind")
    for item in drift:
        if (
            type(item) is not dict
            or type(item.get("target")) is not str
            or type(item.get("subject")) is not str
            or type(item.get("kind")) is not str
        ):
            raise Rejected("bad_type", "drift must be a list of items with target, subject, kind")
    paths = get("paths") or []
    if type(paths) is not list:
        raise Rejected("bad_type", "paths must be a list of strings")
    for path in paths:
        if type(path) is not str:
            raise Rejected("bad_type", "paths must be a list of strings")
    heartbeat = _number(get("heartbeat"), "heartbeat") or 0.0
    observed_at = _number(get("observed_at"), "observed_at")
    return Status(
        node, seq, state, branch, applied, desired, len(drift), max(heartbeat, 0.0),
        observed_at, text,
    )  # fmt: skip


def parse_event(node: str, payload: bytes) -> Event:
    """Validate an event document (wire.EventDoc); raises Rejected."""
    doc, _ = _load(payload)
    seq = _check_header(doc, node)
    type_ = _column(doc.get("type"), "type")
    if not type_ or len(type_) > 64:
        raise Rejected("bad_type", "type must be a non-empty string of at most 64 characters")
    details = doc.get("details") or {}
    if type(details) is not dict:
        raise Rejected("bad_type", "details must be an object")
    try:
        # allow_nan=False: 1e999 parsed as inf must not be stored as non-JSON "Infinity"
        details_text = json.dumps(details, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (ValueError, RecursionError) as err:
        raise Rejected("bad_type", f"details cannot be stored: {str(err)[:80]}") from err
    return Event(
        node=node,
        seq=seq,
        at=_number(doc.get("at"), "at"),
        type=type_,
        commit=_column(doc.get("commit"), "commit"),
        details=details_text,
    )


def parse_online(payload: bytes) -> int:
    if payload in (b"0", b"1"):
        return int(payload)
    raise Rejected("bad_type", f"online payload {payload[:16]!r} is not 0 or 1")


@dataclass
class IngestCounters:
    received: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    stored: Counter[str] = field(default_factory=Counter)
    committed: int = 0
    """Valid messages committed to the database (and then acknowledged)."""
    status_out_of_order: int = 0
    events_duplicate: int = 0
    batches: int = 0
    batch_errors: int = 0
    last_batch_seconds: float = 0.0
    last_commit_at: float = 0.0


class _LogLimiter:
    """One log line per key per period, with the number of suppressed repeats."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self._period:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        extra = self._suppressed.pop(key, 0)
        log.warning(
            msg + (" (%d similar suppressed)" if extra else ""), *args, *((extra,) if extra else ())
        )


@dataclass
class _Pending:
    statuses: dict[str, tuple[Status, bool, float]] = field(default_factory=dict)
    onlines: dict[str, tuple[int, bool, float]] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.acks or self.statuses or self.onlines or self.events)


class Ingest:
    """Feed with :meth:`submit` (from the MQTT callback); :meth:`run` writes batches."""

    def __init__(
        self,
        store: Store,
        stale_after: float,
        ack: Callable[[int, int], None],
        on_commit: Callable[[], None] = lambda: None,
        interval: float = 0.1,
        max_batch: int = 20_000,
        events_max_age: float = 30 * 86400.0,
        events_max: int = 1_000_000,
    ) -> None:
        self._store = store
        self._stale_after = stale_after
        self._ack = ack
        self._on_commit = on_commit
        self._interval = interval
        self._max_batch = max_batch
        self._events_max_age = events_max_age
        self._events_max = events_max
        self._seqs: dict[str, int] = {}
        self._routes: dict[str, tuple[str, str]] = {}
        self._pending = _Pending()
        self._retry: tuple[Batch, list[tuple[int, int]], list[tuple[str, int]]] | None = None
        self._full = asyncio.Event()
        self._limiter = _LogLimiter(_LOG_EVERY)
        self.counters = IngestCounters()

    async def start(self) -> None:
        """Load the stored seq per node (the out-of-order check runs in memory)."""
        self._seqs = await self._store.node_seqs()
        await self._store.restale(self._stale_after)

    def submit(self, msg: Message) -> None:
        try:
            self._accept(msg)
        except Rejected as rej:
            self.counters.dropped[rej.reason] += 1
            self._limiter.warning(rej.reason, "dropped message on %s: %s", msg.topic[:200], rej)
            self._ack(msg.mid, msg.qos)

    def _route(self, topic: str) -> tuple[str, str]:
        """(node, kind) of a node topic; remembered, as each node sends on three topics."""
        route = self._routes.get(topic)
        if route is not None:
            return route
        parsed = wire.parse_node_topic(topic)
        kind = parsed[1] if parsed and parsed[1] in KINDS else "unknown"
        if parsed is None or kind == "unknown" or not wire.valid_node_name(parsed[0]):
            return "", kind
        if len(self._routes) >= _MAX_ROUTES:  # bounded, whatever topics a broker lets in
            self._routes.clear()
        route = self._routes[topic] = (parsed[0], kind)
        return route

    def _accept(self, msg: Message) -> None:
        node, kind = self._route(msg.topic)
        self.counters.received[kind] += 1
        if len(msg.payload) > wire.MAX_PAYLOAD:
            raise Rejected("too_large", f"{len(msg.payload)} bytes > {wire.MAX_PAYLOAD}")
        if not node:
            raise Rejected("bad_topic", "not edgefleet/v1/node/<node>/(status|online|events)")
        now = time.time()
        pending = self._pending
        if kind == "status":
            status = parse_status(node, msg.payload)
            old = pending.statuses.get(node)
            if old is None or status.seq >= old[0].seq:
                pending.statuses[node] = (status, not msg.retain, now)
            else:
                self.counters.status_out_of_order += 1
        elif kind == "online":
            pending.onlines[node] = (parse_online(msg.payload), not msg.retain, now)
        else:
            ev = parse_event(node, msg.payload)
            pending.events.append(
                EventRow(node, ev.seq, ev.at, ev.type, ev.commit, ev.details, now)
            )
        pending.acks.append((msg.mid, msg.qos))
        if len(pending.acks) >= self._max_batch:
            self._full.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``interval`` (sooner when a batch is full) until ``stop``; then once more."""
        next_prune = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._interval)
            self._full.clear()
            await self.flush()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + _RETENTION_EVERY
                await self._prune()
        await self.flush()

    async def _prune(self) -> None:
        try:
            removed = await self._store.prune_events(
                time.time() - self._events_max_age, self._events_max
            )
        except StoreError as err:
            log.warning("event retention failed: %s", err)
            return
        if removed:
            log.info("event retention removed %d old events", removed)

    def _build(self) -> tuple[Batch, list[tuple[int, int]], list[tuple[str, int]]]:
        pending, self._pending = self._pending, _Pending()
        batch = Batch(events=pending.events)
        seqs: list[tuple[str, int]] = []
        for status, live, received in pending.statuses.values():
            heard = received
            known = self._seqs.get(status.node, -1)
            if status.seq > known:
                if not live and status.observed_at is not None:
                    heard = min(heard, status.observed_at)  # a replay proves nothing about now
                batch.statuses.append(
                    StatusRow(
                        status.node, status.branch, status.state, status.seq, status.applied,
                        status.desired, status.drift_count, status.heartbeat,
                        heard, self._stale_after, status.observed_at, status.doc, live,
                    )
                )  # fmt: skip
                seqs.append((status.node, status.seq))
            elif status.seq == known and live:
                batch.heartbeats.append((heard, self._stale_after, status.node))
            else:
                self.counters.status_out_of_order += 1
        for node, (online, live, heard) in pending.onlines.items():
            batch.onlines.append((node, online, heard, self._stale_after, live and online == 1))
        return batch, pending.acks, seqs

    async def flush(self) -> None:
        """Commit what is pending, then acknowledge it. A failed commit is retried."""
        if self._retry is None:
            if not self._pending:
                return
            self._retry = self._build()
        batch, acks, seqs = self._retry
        started = time.perf_counter()
        try:
            inserted, seen = await self._store.write_batch(batch)
        except StoreError as err:
            self.counters.batch_errors += 1
            self._limiter.warning("store", "ingest batch not stored, will retry: %s", err)
            return
        self._retry = None
        self._seqs.update(seqs)
        for mid, qos in acks:
            self._ack(mid, qos)
        c = self.counters
        c.batches += 1
        c.committed += len(acks)
        c.last_batch_seconds = time.perf_counter() - started
        c.last_commit_at = time.time()
        c.stored["status"] += len(batch.statuses)
        c.stored["heartbeat"] += len(batch.heartbeats)
        c.stored["online"] += len(batch.onlines)
        c.stored["events"] += inserted
        c.events_duplicate += seen - inserted
        if len(batch):
            self._on_commit()
