"""Ingest: validate node messages and write them to the store in batches.

Every message is checked on arrival (size, topic, then once, strictly, by
:mod:`common.strict`: JSON, schema, types, that the node in the payload is the node in
the topic); a bad one is counted by reason, logged at most once per reason per 10 s,
acknowledged and dropped. The store gets the typed fields and the re-encoding of the
validated status, never the raw payload. Good ones are collected and
written every ``interval`` seconds in one transaction; their MQTT acks are sent only
after that commit, so a hub crash loses nothing the broker considers delivered.

Ordering rules: a status with a lower seq than the stored one is ignored (late
delivery); the same seq again is a heartbeat (refreshes "last heard"); events are
deduplicated by (node, incarnation, seq) in SQL. A status whose incarnation differs from
the stored one is a new life of the node (re-imaged, its seqs restarted): it replaces
the old one whatever its seq. Statuses without an incarnation (older agents) are only
ordered by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from common import wire
from common.canonical import stored_status_json
from common.status import ContractError, Status, details_json
from common.strict import parse_event, parse_status
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


def parse_online(payload: bytes) -> int:
    if payload in (b"0", b"1"):
        return int(payload)
    raise Rejected("bad_type", f"online payload {payload[:16]!r} is not 0 or 1")


def _new_life(known: str | None, incarnation: str | None) -> bool:
    """A status of another incarnation than the ``known`` one: the node's seqs
    restarted, so seq order says nothing."""
    return incarnation is not None and incarnation != known


class _Stored(NamedTuple):
    """A status committed for ``node``: the next ones are ordered against it."""

    node: str
    seq: int
    incarnation: str | None


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
    statuses: dict[str, tuple[Status, bytes, bool, float]] = field(default_factory=dict)
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
        self._lives: dict[str, str] = {}
        """Incarnation of each node's stored status (nodes of older agents have none)."""
        self._routes: dict[str, tuple[str, str]] = {}
        self._pending = _Pending()
        self._retry: tuple[Batch, list[tuple[int, int]], list[_Stored]] | None = None
        self._full = asyncio.Event()
        self._limiter = _LogLimiter(_LOG_EVERY)
        self.counters = IngestCounters()

    async def start(self) -> None:
        """Load the stored seq per node (the out-of-order check runs in memory)."""
        self._seqs = await self._store.node_seqs()
        self._lives = await self._store.node_incarnations()
        await self._store.restale(self._stale_after)

    def forget(self, node: str) -> None:
        """Drop what is known of a forgotten node: whatever it sends next is new."""
        self._seqs.pop(node, None)
        self._lives.pop(node, None)

    def submit(self, msg: Message) -> None:
        try:
            self._accept(msg)
        except (Rejected, ContractError) as rej:
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
        if not msg.payload and kind != "events":  # a retained message cleared (forget)
            self._ack(msg.mid, msg.qos)
            return
        now = time.time()
        pending = self._pending
        if kind == "status":
            status = parse_status(node, msg.payload)
            old = pending.statuses.get(node)
            if (
                old is None
                or status.seq >= old[0].seq
                or _new_life(old[0].incarnation, status.incarnation)
            ):
                pending.statuses[node] = (status, msg.payload, not msg.retain, now)
            else:
                self.counters.status_out_of_order += 1
        elif kind == "online":
            pending.onlines[node] = (parse_online(msg.payload), not msg.retain, now)
        else:
            ev = parse_event(node, msg.payload)
            pending.events.append(
                EventRow(node, ev.seq, ev.at, ev.type, ev.commit, details_json(ev), now,
                         ev.incarnation or "")
            )  # fmt: skip
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

    def _build(self) -> tuple[Batch, list[tuple[int, int]], list[_Stored]]:
        pending, self._pending = self._pending, _Pending()
        batch = Batch(events=pending.events)
        seqs: list[_Stored] = []
        for status, payload, live, received in pending.statuses.values():
            heard = received
            r = status.report
            known = self._seqs.get(r.node, -1)
            if status.seq > known or _new_life(self._lives.get(r.node), status.incarnation):
                if not live and status.observed_at is not None:
                    heard = min(heard, status.observed_at)  # a replay proves nothing about now
                batch.statuses.append(
                    StatusRow(
                        r.node, r.branch, r.state, status.seq, r.applied, r.desired,
                        r.drift_total, status.heartbeat, heard, self._stale_after,
                        status.observed_at, stored_status_json(status, payload), live,
                    )
                )  # fmt: skip
                seqs.append(_Stored(r.node, status.seq, status.incarnation))
            elif status.seq == known and live:
                batch.heartbeats.append((heard, self._stale_after, r.node))
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
        for stored in seqs:
            self._seqs[stored.node] = stored.seq
            if stored.incarnation is not None:
                self._lives[stored.node] = stored.incarnation
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
