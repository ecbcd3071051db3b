"""A bounded, crash-safe on-disk queue of events waiting for the broker's PUBACK.

Two files under the outbox directory:

``events.jsonl``
    append-only segment, one JSON event per line, each append fsynced. A line torn by
    ``kill -9`` or a full disk is the last one; it is ignored on load and cut off so the
    next append starts on a clean line.
``meta.json``
    written atomically: the highest seq ever assigned (so seqs keep increasing after the
    segment is compacted), the removal watermark ``floor`` (every seq <= floor is
    delivered or dropped) plus the out-of-order removals above it, and how many events
    were dropped for space and not yet reported.

An event is removed (acked or dropped) by rewriting only ``meta.json``; the segment is
compacted once nothing is pending or when removed lines dominate it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from agent.atomic import fsync_dir, write_atomic
from agent.errors import StateError
from common.wire import EventDoc

FORMAT = 1
SEGMENT = "events.jsonl"
META = "meta.json"
COMPACT_MIN_LINES = 1000
"""Rewrite the segment once it holds this many removed lines (and more removed than pending)."""

log = logging.getLogger(__name__)


class Outbox:
    """Events in seq order, each stored durably before :meth:`append` returns."""

    def __init__(self, directory: Path, max_events: int) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.dir = directory
        self.max_events = max_events
        self._segment = directory / SEGMENT
        self._meta = directory / META
        self._pending: dict[int, EventDoc] = {}
        self._last_seq = 0
        self._dropped = 0
        self._lines = 0
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._load()
            self._fd = os.open(
                self._segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            fsync_dir(directory)
        except OSError as err:
            raise StateError(f"cannot open outbox {directory}: {err.strerror or err}") from err
        if len(self._pending) > max_events:  # the bound was lowered since the last run
            self._drop_oldest(len(self._pending) - max_events)

    # -- public API -------------------------------------------------------------------

    def append(self, event: EventDoc) -> int:
        """Assign the next seq to ``event``, store it durably and return the seq."""
        seq = self._last_seq + 1
        stored: EventDoc = {**event, "seq": seq}
        line = json.dumps(stored, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        self._write_line(line)
        event["seq"] = seq
        self._last_seq = seq
        self._pending[seq] = stored
        self._lines += 1
        if len(self._pending) > self.max_events:
            try:
                self._drop_oldest(len(self._pending) - self.max_events)
            except StateError as err:
                # The event is stored; the bound is enforced again on the next append.
                log.warning("outbox over its bound: %s", err)
        return seq

    def pending(self, after: int = 0, limit: int | None = None) -> list[EventDoc]:
        """Undelivered events in seq order (those with seq > ``after``, at most ``limit``).

        The oldest pending event carries ``details.dropped`` while events dropped for
        space have not been reported by a delivered event yet.
        """
        events: list[EventDoc] = []
        oldest = next(iter(self._pending), None)
        for seq, event in self._pending.items():  # insertion order is seq order
            if seq <= after:
                continue
            if limit is not None and len(events) >= limit:
                break
            if seq == oldest and self._dropped:
                details = {**event.get("details", {}), "dropped": self._dropped}
                event = {**event, "details": details}  # noqa: PLW2901
            events.append(event)
        return events

    def ack(self, *seqs: int) -> None:
        """The broker has these seqs (PUBACK): forget them with one durable write.

        Unknown or already removed seqs are ignored.
        """
        known = [s for s in seqs if s in self._pending]
        if not known:
            return
        reported = self._dropped and next(iter(self._pending)) in known
        self._remove(known, dropped=0 if reported else self._dropped)
        self._maybe_compact()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def dropped(self) -> int:
        """Events dropped for space that no delivered event has reported yet."""
        return self._dropped

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- internals --------------------------------------------------------------------

    def _write_line(self, line: bytes) -> None:
        try:
            offset = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as err:
            raise StateError(f"cannot append to {self._segment}: {err.strerror}") from err
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as err:
            # Cut a partial line (e.g. ENOSPC mid-write) so the file stays line-clean.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, offset)
            raise StateError(f"cannot append to {self._segment}: {err.strerror}") from err

    def _drop_oldest(self, count: int) -> None:
        oldest = list(self._pending)[:count]
        self._remove(oldest, dropped=self._dropped + count)
        log.warning(
            "outbox full (%d events): dropped %d oldest undelivered event(s)",
            self.max_events,
            count,
        )

    def _remove(self, seqs: list[int], dropped: int) -> None:
        # Every seq up to last_seq is either pending or removed, so the removed set is
        # derived: everything below the oldest pending one, plus the gaps above it.
        gone = set(seqs)
        oldest = next((s for s in self._pending if s not in gone), None)
        floor = self._last_seq if oldest is None else oldest - 1
        left = self._pending.keys() - gone
        removed = {s for s in range(floor + 1, self._last_seq + 1) if s not in left}
        self._save_meta(floor, removed, dropped)
        for seq in seqs:
            del self._pending[seq]
        self._dropped = dropped

    def _save_meta(self, floor: int, removed: set[int], dropped: int) -> None:
        doc = {
            "format": FORMAT,
            "last_seq": self._last_seq,
            "floor": floor,
            "removed": sorted(removed),
            "dropped": dropped,
        }
        try:
            write_atomic(self._meta, json.dumps(doc).encode(), 0o600)
        except OSError as err:
            raise StateError(f"cannot write {self._meta}: {err.strerror}") from err

    def _maybe_compact(self) -> None:
        removed_lines = self._lines - len(self._pending)
        if self._pending and (
            removed_lines < COMPACT_MIN_LINES or removed_lines < len(self._pending)
        ):
            return
        if not self._pending and self._lines == 0:
            return
        data = b"".join(
            json.dumps(self._pending[s], separators=(",", ":"), sort_keys=True).encode() + b"\n"
            for s in self._pending
        )
        try:
            # meta already records last_seq, so the seq survives an emptied segment.
            write_atomic(self._segment, data, 0o600)
            new_fd = os.open(self._segment, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as err:
            # Compaction is an optimisation: the old segment is still intact and valid.
            log.warning("cannot compact outbox %s: %s", self._segment, err.strerror)
            return
        os.close(self._fd)
        self._fd = new_fd
        self._lines = len(self._pending)

    def _load(self) -> None:
        meta = self._read_meta()
        self._last_seq = int(meta.get("last_seq", 0))
        floor = int(meta.get("floor", 0))
        removed = {int(s) for s in meta.get("removed", [])}
        self._dropped = int(meta.get("dropped", 0))
        try:
            raw = self._segment.read_bytes()
        except FileNotFoundError:
            return
        good_end = 0
        for line in raw.splitlines(keepends=True):
            event = _parse_line(line)
            if event is None:
                if line.endswith(b"\n"):
                    log.warning("outbox %s: skipping a corrupt line", self._segment)
                    good_end += len(line)
                    continue
                break  # a torn last line: never completed, so never acknowledged to anyone
            good_end += len(line)
            self._lines += 1
            seq = event["seq"]
            self._last_seq = max(self._last_seq, seq)
            if seq > floor and seq not in removed:
                self._pending[seq] = event
        if good_end < len(raw):
            log.warning("outbox %s: ignoring a torn last line", self._segment)
            with self._segment.open("r+b") as fh:
                fh.truncate(good_end)
                os.fsync(fh.fileno())

    def _read_meta(self) -> dict[str, Any]:
        try:
            raw = self._meta.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise StateError(f"{self._meta} is corrupt ({err}); move it away") from err
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StateError(f"{self._meta}: unsupported outbox format")
        return doc


def _parse_line(line: bytes) -> EventDoc | None:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("seq"), int):
        return None
    return doc  # type: ignore[return-value]
