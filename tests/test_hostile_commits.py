"""Signed commits a red team built to crash or exhaust the agent, through the real CLI.

Each one must end in a refused commit with a message naming the culprit, never a
traceback, and a running daemon must stay up to refuse it.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.testbed.agentcfg import AgentSetup, write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey


def conf(setup: AgentSetup, name: str) -> str:
    return f"common/files{setup.root}/{name}"


@pytest.fixture
def agent(tmp_path: Path, fleet_repo: FleetRepo, signing_key: SigningKey) -> AgentSetup:
    return write_agent_config(
        tmp_path / "agent", fleet_repo.url, allowed_signers=signing_key.allowed_signers
    )


def assert_refused(setup: AgentSetup, *words: str) -> str:
    done = setup.cli("sync", "--once")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out, out
    assert "refused" in done.stdout, out
    for word in words:
        assert word in out, out
    return out


def test_regular_file_where_a_directory_is_needed_is_refused(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    (agent.root / "etc").write_text("a file, not a directory\n")
    fleet_repo.commit({conf(agent, "etc/app.conf"): "v1\n"}, sign=signing_key)
    assert_refused(agent, f"{agent.root}/etc", "not a directory")
    assert (agent.root / "etc").read_text() == "a file, not a directory\n"


def test_daemon_stays_up_after_refusing_a_commit(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    (agent.root / "etc").write_text("a file\n")
    fleet_repo.commit({conf(agent, "etc/app.conf"): "v1\n"}, sign=signing_key)
    daemon = agent.popen("run")
    try:
        assert daemon.stdout is not None
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while time.monotonic() < deadline:
            line = daemon.stdout.readline()
            seen.append(line)
            if "refusing" in line or not line:
                break
        assert any("refusing" in line and "not a directory" in line for line in seen), seen
        assert daemon.poll() is None, "".join(seen)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, "".join(seen) + out
    assert "Traceback" not in "".join(seen) + out
    doc = json.loads(agent.cli("status", "--json").stdout)
    assert doc["applied"] is None


@pytest.mark.parametrize(
    ("name", "shown", "problem"),
    [
        ("bad\xff.conf", "bad\\xff.conf", "is not valid UTF-8"),
        ("two\nlines.conf", "two\\nlines.conf", "contains a control character"),
        ("esc\x1b[2J.conf", "esc\\x1b[2J.conf", "contains a control character"),
    ],
)
def test_file_names_that_are_not_clean_text_are_refused(
    agent: AgentSetup,
    fleet_repo: FleetRepo,
    signing_key: SigningKey,
    name: str,
    shown: str,
    problem: str,
) -> None:
    raw = name.encode("latin-1").decode("utf-8", "surrogateescape")
    fleet_repo.commit(
        {conf(agent, "fine.conf"): "fine\n", conf(agent, raw): "x\n"}, sign=signing_key
    )
    assert_refused(agent, shown, problem)
    assert list(agent.root.iterdir()) == [], "a refused commit wrote something"


def test_unit_and_manifest_names_are_checked_too(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    fleet_repo.commit({"common/systemd/a\nb.service": "[Service]\n"}, sign=signing_key)
    assert_refused(agent, "common/systemd/a\\nb.service", "control character")
    fleet_repo.commit(
        {"common/systemd/a\nb.service": None, "common/manifests/\xe9\udcff.yaml": "{}\n"},
        sign=signing_key,
    )
    assert_refused(agent, "common/manifests/\\xc3\\xa9\\xff.yaml", "not valid UTF-8")


def limit_files(setup: AgentSetup, keys: str) -> None:
    text = setup.config.read_text()
    setup.config.write_text(text.replace("[targets.files]\n", f"[targets.files]\n{keys}\n", 1))


def test_file_over_max_file_size_is_refused_before_it_is_read(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    limit_files(agent, "max_file_size = 100_000")
    big = bytes(range(256)) * 600  # 153,600 bytes that do not compress away
    fleet_repo.commit(
        {conf(agent, "fine.conf"): "fine\n", conf(agent, "big.bin"): big}, sign=signing_key
    )
    assert_refused(agent, f"{agent.root}/big.bin", "153,600 bytes", "max_file_size (100,000")
    assert list(agent.root.iterdir()) == []

    # The same file as a small edit of an earlier one: a delta in the Git cache.
    agent.config.write_text(agent.config.read_text().replace("100_000", "200_000"))
    assert agent.cli("sync", "--once").returncode == 0
    fleet_repo.commit({conf(agent, "big.bin"): big + big[:60_000]}, sign=signing_key)
    assert_refused(agent, f"{agent.root}/big.bin", "213,600 bytes", "max_file_size")
    assert (agent.root / "big.bin").read_bytes() == big


def test_files_over_max_total_size_are_refused(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    limit_files(agent, "max_total_size = 50_000")
    files = {conf(agent, f"part{i}.bin"): bytes([i]) * 20_000 for i in range(3)}
    fleet_repo.commit(files, sign=signing_key)
    assert_refused(agent, "add up to 60,000 bytes", "max_total_size (50,000 bytes)")
    assert list(agent.root.iterdir()) == []


def test_size_limits_must_be_positive(agent: AgentSetup) -> None:
    limit_files(agent, "max_file_size = 0")
    done = agent.cli("sync", "--once")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "max_file_size" in done.stderr and "Traceback" not in done.stderr


def test_deeply_nested_options_file_is_refused(
    agent: AgentSetup, fleet_repo: FleetRepo, signing_key: SigningKey
) -> None:
    nested = "x = " + "[" * 5000 + "]" * 5000 + "\n"
    fleet_repo.commit({"common/edgefleet.toml": nested}, sign=signing_key)
    assert_refused(agent, "common/edgefleet.toml", "nested too deeply")
