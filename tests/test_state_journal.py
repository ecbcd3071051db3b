"""The inventory journal: linear writes, and no ownership lost to a kill -9 or a torn line."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.state import NodeState, Owned, StateStore
from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey


def owned(n: int) -> Owned:
    return Owned(f"sha256:{n:064x}", "c1", {"mode": 0o644})


def test_records_survive_without_a_save_and_compact_into_state_json(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = store.load()
    store.save(state)
    for n in range(600):
        store.record("files", f"/srv/f{n}", owned(n))
    store.record("files", "/srv/f7", None)
    replayed = StateStore(tmp_path).load()
    assert set(replayed.owned("files")) == {f"/srv/f{n}" for n in range(600) if n != 7}
    assert replayed.owned("files")["/srv/f3"] == owned(3)

    store.save(replayed)
    assert not store.journal.exists()
    assert StateStore(tmp_path).load().counts() == {"files": 599}


def test_torn_last_line_is_ignored_then_overwritten(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(NodeState())
    store.record("files", "/srv/a", owned(1))
    with store.journal.open("ab") as f:
        f.write(b'{"owned": null, "subj')  # what a kill in the middle of a write leaves
    reader = StateStore(tmp_path)
    state = reader.load()
    assert set(state.owned("files")) == {"/srv/a"}
    reader.record("files", "/srv/b", owned(2))
    assert set(StateStore(tmp_path).load().owned("files")) == {"/srv/a", "/srv/b"}


def test_journal_of_an_older_generation_is_not_replayed(tmp_path: Path) -> None:
    """A journal whose compaction finished but whose removal did not reach the disk."""
    store = StateStore(tmp_path)
    store.save(NodeState())
    store.record("files", "/srv/a", owned(1))
    stale = store.journal.read_bytes()
    state = store.load()
    state.owned("files").pop("/srv/a")
    store.save(state)
    store.journal.write_bytes(stale)
    assert StateStore(tmp_path).load().owned("files") == {}


def test_corrupt_journal_line_is_a_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(NodeState())
    store.record("files", "/srv/a", owned(1))
    store.record("files", "/srv/b", owned(2))
    store.journal.write_bytes(store.journal.read_bytes().replace(b'"/srv/a"', b"/srv/a"))
    with pytest.raises(StateError, match=r"inventory\.journal line 2 is corrupt"):
        StateStore(tmp_path).load()


def test_kill_9_during_a_large_apply_loses_no_ownership(
    tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    agent = write_agent_config(
        tmp_path / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )
    count = 2000
    files = {f"common/files{agent.root}/d{i % 40}/f{i}.conf": f"{i}\n" for i in range(count)}
    head = fleet_repo.commit(files, sign=signing_key)
    journal = agent.state_dir / "inventory.journal"
    proc = agent.popen("sync", "--once")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") > 300:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the apply finished before the kill"

    def inventory() -> set[str]:
        done = agent.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        return {item["subject"] for item in json.loads(done.stdout)["inventory"]}

    written = {str(p) for p in agent.root.rglob("*.conf") if not p.name.startswith(".")}
    assert 300 <= len(written) < count
    # Only the file in flight (renamed into place, not yet journaled) may be unowned; the
    # resume adopts it because its bytes are already the desired ones.
    assert len(written - inventory()) <= 1, "files written before the kill are not owned"

    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    on_disk = {str(p) for p in agent.root.rglob("*.conf")}
    assert len(on_disk) == count
    assert inventory() == on_disk
    assert json.loads(agent.cli("status", "--json").stdout)["applied"] == head
    assert not journal.exists(), "the finished apply left its journal uncompacted"
