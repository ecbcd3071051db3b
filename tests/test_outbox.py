"""Outbox: durable, bounded, crash-safe event queue (real files, a real tiny tmpfs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.outbox import META, SEGMENT, Outbox
from common.wire import EventDoc
from tests.testbed.tmpfs import small_tmpfs


def ev(i: int) -> EventDoc:
    return {"type": "t", "commit": None, "details": {"i": i}, "at": 1.0}


def seqs(box: Outbox) -> list[int]:
    return [e["seq"] for e in box.pending()]


def test_seq_monotonic_across_reopen_and_compaction(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 100)
    assert [box.append(ev(i)) for i in range(3)] == [1, 2, 3]
    box.close()
    box = Outbox(tmp_path, 100)
    assert seqs(box) == [1, 2, 3]
    box.ack(1, 2, 3)  # everything delivered: the segment is emptied
    assert (tmp_path / SEGMENT).stat().st_size == 0
    box.close()
    box = Outbox(tmp_path, 100)
    assert box.pending() == []
    assert box.append(ev(9)) == 4
    box.close()


def test_append_sets_seq_and_stores_event(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 10)
    event = ev(7)
    seq = box.append(event)
    assert event["seq"] == seq
    box.close()
    (stored,) = Outbox(tmp_path, 10).pending()
    assert stored["details"] == {"i": 7} and stored["seq"] == seq


def test_ack_persists_out_of_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 100)
    for i in range(5):
        box.append(ev(i))
    box.ack(3)
    box.ack(1)
    box.ack(42)  # unknown: ignored
    box.close()
    box = Outbox(tmp_path, 100)
    assert seqs(box) == [2, 4, 5]
    assert seqs(Outbox(tmp_path, 100)) == [2, 4, 5]
    assert [e["seq"] for e in box.pending(after=2, limit=1)] == [4]
    box.close()


def test_bound_drops_oldest_and_reports_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path, 3)
    for i in range(5):
        box.append(ev(i))
    assert seqs(box) == [3, 4, 5]
    assert "dropped 1 oldest" in caplog.text
    first = box.pending()[0]
    assert first["details"] == {"i": 2, "dropped": 2}
    box.close()
    box = Outbox(tmp_path, 3)  # the count survives a restart
    assert box.pending()[0]["details"]["dropped"] == 2
    box.ack(4)  # not the one carrying the count: still owed
    assert box.dropped == 2
    box.ack(3)
    assert box.dropped == 0
    assert box.pending()[0]["details"] == {"i": 4}
    box.close()


def test_lowered_bound_applies_on_open(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 10)
    for i in range(6):
        box.append(ev(i))
    box.close()
    box = Outbox(tmp_path, 4)
    assert seqs(box) == [3, 4, 5, 6]
    assert box.dropped == 2
    box.close()


def test_torn_last_line_is_ignored_and_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path, 10)
    box.append(ev(1))
    box.append(ev(2))
    box.close()
    with (tmp_path / SEGMENT).open("ab") as fh:
        fh.write(b'{"seq":3,"type":"t","det')  # kill -9 mid-write
    box = Outbox(tmp_path, 10)
    assert seqs(box) == [1, 2]
    assert "torn last line" in caplog.text
    assert box.append(ev(3)) == 3  # starts on a clean line
    box.close()
    lines = (tmp_path / SEGMENT).read_bytes().splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [1, 2, 3]


def test_corrupt_meta_is_a_state_error(tmp_path: Path) -> None:
    Outbox(tmp_path, 10).close()
    (tmp_path / META).write_text("{nope")
    with pytest.raises(StateError, match="corrupt"):
        Outbox(tmp_path, 10)


def test_compaction_keeps_pending(tmp_path: Path) -> None:
    box = Outbox(tmp_path, 5000)
    for i in range(2100):
        box.append(ev(i))
    box.ack(*range(1, 2001))  # 2000 removed lines > 1000 and > 100 pending -> rewrite
    lines = (tmp_path / SEGMENT).read_bytes().splitlines()
    assert len(lines) == 100
    box.close()
    box = Outbox(tmp_path, 5000)
    assert seqs(box) == list(range(2001, 2101))
    assert box.append(ev(0)) == 2101
    box.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs so ENOSPC is genuine."""
    with small_tmpfs(tmp_path / "tiny", "64k") as mnt:
        yield mnt


def test_full_disk_raises_state_error_and_loses_nothing(tiny_fs: Path) -> None:
    box = Outbox(tiny_fs / "outbox", 100_000)
    big = {"blob": "x" * 2000}
    stored: list[int] = []
    with pytest.raises(StateError, match="cannot append"):
        for _ in range(1000):
            stored.append(box.append({"type": "t", "commit": None, "details": big}))
    assert len(stored) > 5
    assert seqs(box) == stored
    box.close()
    box = Outbox(tiny_fs / "outbox", 100_000)  # reopen: no torn line, nothing lost
    assert seqs(box) == stored
    box.close()
