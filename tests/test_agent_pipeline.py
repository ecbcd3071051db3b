"""The whole agent pipeline through its real CLI: Git -> trust -> files -> state.

Every test drives ``edgefleet-agent`` as a subprocess against a real Git repository
with commits signed by git itself, so what is tested is what an operator runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey


def conf(setup: AgentSetup, name: str) -> str:
    """Repo path placing a file at <root>/<name>."""
    return f"common/files{setup.root}/{name}"


def status(setup: AgentSetup) -> dict[str, object]:
    done = setup.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


@pytest.fixture
def agent(tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey) -> AgentSetup:
    return write_agent_config(
        tmp_path / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )


def test_applies_commits_and_noop_writes_nothing(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    c1 = fleet_repo.commit(
        {conf(agent, "app.conf"): "v1\n", conf(agent, "sub/b.conf"): "b\n"}, sign=signing_key
    )
    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "synced" in done.stdout and "created" in done.stdout
    assert (agent.root / "app.conf").read_text() == "v1\n"
    assert status(agent)["applied"] == c1

    c2 = fleet_repo.commit(
        {conf(agent, "app.conf"): "v2\n", conf(agent, "sub/b.conf"): None}, sign=signing_key
    )
    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "configured" in done.stdout and "deleted" in done.stdout
    assert (agent.root / "app.conf").read_text() == "v2\n"
    assert not (agent.root / "sub/b.conf").exists()
    assert status(agent)["applied"] == c2

    state_file = agent.state_dir / "state.json"
    before = state_file.stat().st_mtime_ns, (agent.root / "app.conf").stat().st_mtime_ns
    done = agent.cli("sync", "--once")
    assert done.returncode == 0
    after = state_file.stat().st_mtime_ns, (agent.root / "app.conf").stat().st_mtime_ns
    assert before == after, "a no-op reconcile wrote something"


def test_dry_run_prints_changes_and_applies_nothing(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fleet_repo.commit({conf(agent, "x.conf"): "x\n"}, sign=signing_key)
    done = agent.cli("sync", "--once", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"created    files:{agent.root}/x.conf" in done.stdout
    assert not (agent.root / "x.conf").exists()
    assert status(agent)["applied"] is None


def test_dry_run_of_a_commit_the_node_would_refuse_exits_1(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fleet_repo.commit({"common/files/opt/elsewhere/x.conf": "x\n"}, sign=signing_key)
    done = agent.cli("sync", "--once", "--dry-run")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused" in done.stdout and "outside allowed_roots" in done.stdout
    assert status(agent)["applied"] is None


def test_unsigned_and_untrusted_commits_are_refused(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey, tmp_path: Path
) -> None:
    good = fleet_repo.commit({conf(agent, "app.conf"): "good\n"}, sign=signing_key)
    assert agent.cli("sync", "--once").returncode == 0

    fleet_repo.commit({conf(agent, "app.conf"): "unsigned\n"})
    done = agent.cli("sync", "--once")
    assert done.returncode == 1
    assert "refused" in done.stdout and "not signed" in done.stdout
    assert (agent.root / "app.conf").read_text() == "good\n"

    stranger = SigningKey.create(tmp_path / "stranger", principal="mallory@example.org")
    fleet_repo.commit({conf(agent, "app.conf"): "evil\n"}, sign=stranger)
    done = agent.cli("sync", "--once")
    assert done.returncode == 1 and "refused" in done.stdout
    assert (agent.root / "app.conf").read_text() == "good\n"
    st = status(agent)
    assert st["applied"] == good and st["last_good"] == good


def test_forced_push_policy(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    base = fleet_repo.commit({conf(agent, "app.conf"): "base\n"}, sign=signing_key, push=False)
    older = fleet_repo.commit({conf(agent, "app.conf"): "older\n"}, sign=signing_key, push=False)
    c1 = fleet_repo.commit({conf(agent, "app.conf"): "one\n"}, sign=signing_key)
    assert agent.cli("sync", "--once").returncode == 0
    c2 = fleet_repo.commit({conf(agent, "app.conf"): "two\n"}, sign=signing_key)
    assert agent.cli("sync", "--once").returncode == 0

    # Back to an older commit this node never applied: refused under known-good.
    fleet_repo.push("stable", older, force=True)
    done = agent.cli("sync", "--once")
    assert done.returncode == 1 and "refused" in done.stdout, done.stdout
    assert (agent.root / "app.conf").read_text() == "two\n"

    # Back to c1, which this node applied successfully before: accepted (hub rollback).
    fleet_repo.push("stable", c1, force=True)
    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (agent.root / "app.conf").read_text() == "one\n"
    assert status(agent)["applied"] == c1
    assert base and c2


def test_hostile_paths_refused_and_nothing_written(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey, tmp_path: Path
) -> None:
    fleet_repo.commit(
        {conf(agent, "fine.conf"): "fine\n", "common/files/etc/evil.conf": "x\n"},
        sign=signing_key,
    )
    done = agent.cli("sync", "--once")
    assert done.returncode == 1
    assert "outside allowed_roots" in done.stdout
    assert not (agent.root / "fine.conf").exists(), "a refused commit wrote something"
    assert not Path("/etc/evil.conf").exists()


def test_git_unreachable_keeps_state_then_recovers(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fleet_repo.commit({conf(agent, "app.conf"): "v1\n"}, sign=signing_key)
    assert agent.cli("sync", "--once").returncode == 0
    c2 = fleet_repo.commit({conf(agent, "app.conf"): "v2\n"}, sign=signing_key)
    hidden = fleet_repo.bare.with_name("hidden.git")
    fleet_repo.bare.rename(hidden)
    try:
        done = agent.cli("sync", "--once")
        assert done.returncode == 1
        assert "error" in done.stdout
        assert (agent.root / "app.conf").read_text() == "v1\n"
    finally:
        hidden.rename(fleet_repo.bare)
    assert agent.cli("sync", "--once").returncode == 0
    assert (agent.root / "app.conf").read_text() == "v2\n"
    assert status(agent)["applied"] == c2


def test_drift_corrected_or_reported(
    tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    correct = write_agent_config(
        tmp_path / "a", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )
    report = write_agent_config(
        tmp_path / "b",
        fleet_repo.url,
        paths=("other",),
        allowed_signers=signing_key.allowed_signers,
        drift_mode="report",
    )
    fleet_repo.commit(
        {
            conf(correct, "app.conf"): "git\n",
            f"other/files{report.root}/app.conf": "git\n",
        },
        sign=signing_key,
    )
    for setup in (correct, report):
        assert setup.cli("sync", "--once").returncode == 0
        (setup.root / "app.conf").write_text("by hand\n")

    done = correct.cli("sync", "--once")
    assert done.returncode == 0, done.stdout
    assert (correct.root / "app.conf").read_text() == "git\n"

    done = report.cli("sync", "--once")
    assert done.returncode == 1
    assert "drifted" in done.stdout and "modified" in done.stdout
    assert (report.root / "app.conf").read_text() == "by hand\n"


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3, 0.45, 0.6, 0.8])
def test_kill_9_during_apply_resumes(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey, delay: float
) -> None:
    """kill -9 at different points of a large apply; the next sync converges cleanly."""
    first = {conf(agent, f"d{i % 7}/f{i}.conf"): f"one {i}\n" * 50 for i in range(300)}
    fleet_repo.commit(first, sign=signing_key)
    assert agent.cli("sync", "--once").returncode == 0
    second = {conf(agent, f"d{i % 7}/f{i}.conf"): f"two {i}\n" * 50 for i in range(0, 300, 2)}
    second.update({conf(agent, f"d{i % 7}/f{i}.conf"): None for i in range(1, 300, 4)})
    second.update({conf(agent, f"new/n{i}.conf"): f"new {i}\n" for i in range(100)})
    c2 = fleet_repo.commit(second, sign=signing_key)

    proc = agent.popen("sync", "--once")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    # Whatever was on disk at the kill: only complete old or new files, never torn ones
    # (the agent's own half-written temp files are expected; the resume removes them).
    for path in agent.root.rglob("*.conf"):
        if path.name.startswith(".edgefleet-tmp-"):
            continue
        text = path.read_text()
        assert text and text.endswith("\n") and len(set(text.splitlines())) == 1, path

    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    assert status(agent)["applied"] == c2
    for i in range(300):
        path = agent.root / f"d{i % 7}/f{i}.conf"
        if i % 4 == 1:
            assert not path.exists(), path
        elif i % 2 == 0:
            assert path.read_text() == f"two {i}\n" * 50
        else:
            assert path.read_text() == f"one {i}\n" * 50
    assert len(list((agent.root / "new").iterdir())) == 100
    leftovers = [p for p in agent.root.rglob(".edgefleet-tmp-*")]
    assert leftovers == []
    st = status(agent)
    assert st["interrupted_apply"] is None
    owned = {item["subject"] for item in st["inventory"]}  # type: ignore[attr-defined]
    on_disk = {str(p) for p in agent.root.rglob("*.conf")}
    assert owned == on_disk


def test_second_agent_on_same_state_dir_is_refused(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fleet_repo.commit({conf(agent, "app.conf"): "v1\n"}, sign=signing_key)
    daemon = agent.popen("run")
    try:
        deadline = time.monotonic() + 20
        while not (agent.root / "app.conf").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (agent.root / "app.conf").exists()
        done = agent.cli("sync", "--once")
        assert done.returncode == 1 and "another edgefleet-agent" in done.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, out


def test_sigterm_exits_cleanly_and_quickly(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fleet_repo.commit({conf(agent, "app.conf"): "v1\n"}, sign=signing_key)
    daemon = agent.popen("run")
    deadline = time.monotonic() + 20
    while not (agent.root / "app.conf").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    out, _ = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, out
    assert time.monotonic() - start < 8
    assert "Traceback" not in out


def test_full_disk_is_an_error_not_a_torn_file(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    small = agent.root / "small"
    small.mkdir()
    assert os.system(f"mount -t tmpfs -o size=64k tmpfs {small}") == 0
    try:
        fleet_repo.commit({conf(agent, "small/app.conf"): "v1\n"}, sign=signing_key)
        assert agent.cli("sync", "--once").returncode == 0
        fleet_repo.commit({conf(agent, "small/app.conf"): "v2\n" * 100_000}, sign=signing_key)
        done = agent.cli("sync", "--once")
        assert done.returncode == 1
        assert "No space left" in done.stdout or "No space left" in done.stderr
        assert (small / "app.conf").read_text() == "v1\n"
    finally:
        subprocess.run(["umount", str(small)], check=False)
        shutil.rmtree(small, ignore_errors=True)


def test_malformed_allowed_signers_is_a_config_error(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    """Checked at start in the signature child process: exit 2 and nothing applied."""
    fleet_repo.commit({conf(agent, "app.conf"): "v1\n"}, sign=signing_key)
    signing_key.allowed_signers.write_text("ops@example.org ssh-ed25519 not-base64!\n")
    done = agent.cli("sync", "--once")
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(signing_key.allowed_signers) in done.stderr and "line 1" in done.stderr
    assert not (agent.root / "app.conf").exists()


def test_verify_and_status_text(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey, tmp_path: Path
) -> None:
    head = fleet_repo.commit({conf(agent, "app.conf"): "v1\n"}, sign=signing_key)
    done = agent.cli("verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stable is at {head}" in done.stdout
    assert "signed by ops@example.org" in done.stdout

    fleet_repo.commit({conf(agent, "app.conf"): "unsigned\n"})
    done = agent.cli("verify")
    assert done.returncode == 1 and "not signed" in done.stderr

    hidden = fleet_repo.bare.with_name("gone.git")
    fleet_repo.bare.rename(hidden)
    try:
        done = agent.cli("verify")
        assert done.returncode == 1 and "FAILED" in done.stderr
    finally:
        hidden.rename(fleet_repo.bare)

    fleet_repo.push("stable", head, force=True)
    assert agent.cli("sync", "--once").returncode == 0
    done = agent.cli("status")
    assert done.returncode == 0
    assert f"applied    {head}" in done.stdout and "files      1 object(s)" in done.stdout


def test_stale_git_locks_from_a_killed_fetch_are_cleared(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    """What kill -9 during a fetch leaves in the cache must not block later fetches."""
    fleet_repo.commit({conf(agent, "app.conf"): "v1\n"}, sign=signing_key)
    assert agent.cli("sync", "--once").returncode == 0
    cache = agent.state_dir / "repo.git"
    packs = list((cache / "objects/pack").glob("*.idx"))
    assert packs
    stale = [
        packs[0].with_name(packs[0].name + ".lock"),
        cache / "refs/heads/stable.lock",
        cache / "shallow.lock",
        cache / "objects/pack/tmp_pack_abc123",
    ]
    for path in stale:
        path.write_bytes(b"")
    c2 = fleet_repo.commit({conf(agent, "app.conf"): "v2\n"}, sign=signing_key)
    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    assert status(agent)["applied"] == c2
    assert not [p for p in stale if p.exists()]


def test_fresh_node_creates_its_missing_allowed_root(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    """A new device has no /srv/app yet: the first signed commit creates it (0755)."""
    agent.root.rmdir()
    c1 = fleet_repo.commit({conf(agent, "app.conf"): "v1\n"}, sign=signing_key)
    done = agent.cli("sync", "--once")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (agent.root / "app.conf").read_text() == "v1\n"
    assert agent.root.stat().st_mode & 0o777 == 0o755
    assert status(agent)["applied"] == c1
