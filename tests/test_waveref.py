"""agent.waveref against a real git daemon: a node follows its wave ref only along its
stage branch's lineage, else the branch (and says why)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.source import GitSource
from agent.waveref import INVALID, WaveSource, parse_wave_payload
from tests.testbed.fleetrepo import FleetRepo, git
from tests.testbed.gitserver import GitRemote

WAVE = "refs/edgefleet/waves/stable/pilot"


def wave_msg(ref: str = WAVE, **extra: str) -> bytes:
    return json.dumps({"ref": ref, **extra}).encode()


def set_ref(repo: FleetRepo, ref: str, sha: str) -> None:
    git(repo.bare, "update-ref", ref, sha)


@pytest.fixture
def waves(git_remote: GitRemote, tmp_path: Path) -> Iterator[tuple[WaveSource, list[str]]]:
    notes: list[str] = []
    src = GitSource(git_remote.config(), tmp_path / "state")
    yield WaveSource(src, src, "stable", lambda head, why: notes.append(why)), notes
    src.close()


def test_wave_payloads() -> None:
    assert parse_wave_payload(b"") is None
    assert parse_wave_payload(wave_msg()) == WAVE
    assert parse_wave_payload(wave_msg(commit="a" * 40)) == WAVE
    for bad in (b"{", b"[]", wave_msg("refs/heads/stable"), wave_msg(WAVE + "/../x"),
                json.dumps({"ref": 5}).encode(), b"\xff"):  # fmt: skip
        assert parse_wave_payload(bad) == INVALID, bad


async def test_wave_ahead_on_the_lineage_is_followed(
    git_remote: GitRemote, waves: tuple[WaveSource, list[str]]
) -> None:
    source, notes = waves
    repo = git_remote.repo
    c0 = repo.commit({"common/motd": "v0\n"})
    c1 = repo.commit({"common/motd": "v1\n"}, push=False)
    repo.push("beta", c1)  # the objects reach the server; the branch stays on c0
    set_ref(repo, WAVE, c1)
    assert await source.remote_head() == c0  # no wave message yet: the branch
    assert source.set_wave(wave_msg()) is True
    assert await source.remote_head() == c1
    assert source.read_desired(c1).files["motd"].data == b"v1\n"
    assert notes == []
    # The same message again changes nothing; a new commit hint wakes the node.
    assert source.set_wave(wave_msg()) is False
    assert source.set_wave(wave_msg(commit=c1)) is True
    # An empty message (no wave any more): the branch again.
    assert source.set_wave(b"") is True
    assert await source.remote_head() == c0


async def test_missing_or_off_lineage_wave_falls_back_to_the_branch(
    git_remote: GitRemote, waves: tuple[WaveSource, list[str]]
) -> None:
    source, notes = waves
    repo = git_remote.repo
    c0 = repo.commit({"common/motd": "v0\n"})
    source.set_wave(wave_msg())
    assert await source.remote_head() == c0
    assert notes == [f"wave ref {WAVE} does not exist"]
    # A commit beside the branch (not a descendant of its head): never taken.
    side = git(repo.work, "commit-tree", "-m", "beside", f"{c0}^{{tree}}")
    repo.push("side", side)
    set_ref(repo, WAVE, side)
    assert await source.remote_head() == c0
    assert notes[-1] == f"wave ref {WAVE} at {side[:12]} does not descend from {c0[:12]}"
    assert source.why_branch == notes[-1]
    # Once on the lineage, the wave is followed and the reason cleared.
    c1 = repo.commit({"common/motd": "v1\n"}, branch="stable", push=False)
    repo.push("beta", c1)
    set_ref(repo, WAVE, c1)
    assert await source.remote_head() == c1 and source.why_branch is None
    # A malformed message is ignored: the node keeps its wave.
    assert source.set_wave(b"{") is False and source.wave == WAVE
