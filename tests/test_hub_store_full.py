"""A full disk under the hub's database: the real error is reported, nothing is lost."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.errors import StoreError
from hub.ingest import Ingest
from hub.mqtt import Message
from hub.store import Batch, StatusRow, Store
from tests.testbed.hubproc import status_doc
from tests.testbed.tmpfs import small_tmpfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    with small_tmpfs(tmp_path / "disk", "2m") as mnt:
        yield mnt


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file (deleted to free it)."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def big_status(node: str) -> StatusRow:
    doc = json.dumps({"labels": {"pad": "x" * 20_000}})
    return StatusRow(node, "stable", "synced", 1, "a", "a", 0, 0.0, 1.0, 90.0, 1.0, doc, True)


async def test_full_disk_fails_the_batch_with_sqlites_reason(small_disk: Path) -> None:
    store = await Store.open(small_disk / "hub.db")
    try:
        filler = fill(small_disk)
        batch = Batch(statuses=[big_status(f"n{i}") for i in range(40)])
        # SQLite rolls back by itself on SQLITE_FULL; a second ROLLBACK used to hide
        # this behind "cannot rollback - no transaction is active"
        with pytest.raises(StoreError, match="database or disk is full"):
            await store.write_batch(batch)
        assert await store.node_seqs() == {}
        filler.unlink()
        await store.write_batch(batch)  # the store is usable again once there is room
        assert len(await store.node_seqs()) == 40
    finally:
        await store.close()


async def test_full_disk_keeps_messages_unacked_until_stored(small_disk: Path) -> None:
    store = await Store.open(small_disk / "hub.db")
    acked: list[int] = []
    ingest = Ingest(store, 90.0, lambda mid, _qos: acked.append(mid))
    try:
        await ingest.start()
        filler = fill(small_disk)
        for i in range(40):
            doc = status_doc(f"n{i}", 1, labels={"pad": "x" * 20_000})
            topic = f"edgefleet/v1/node/n{i}/status"
            ingest.submit(Message(topic, json.dumps(doc).encode(), 1, False, i + 1))
        await ingest.flush()
        assert acked == []  # not stored, so not acknowledged: the broker would redeliver
        assert ingest.counters.batch_errors == 1
        filler.unlink()
        await ingest.flush()  # the retry stores the same messages, then acks them
        assert sorted(acked) == list(range(1, 41))
        assert len(await store.node_seqs()) == 40
    finally:
        await store.close()
