"""Blob sizes read from object headers agree with the blobs, loose, packed and deltified."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from dulwich.objects import Blob, ObjectID
from dulwich.repo import Repo

from agent.blobsize import SizeBudget, blob_size
from agent.errors import SourceError
from tests.testbed.fleetrepo import git


def all_blobs(repo: Repo) -> dict[ObjectID, int]:
    sizes = {}
    for sha in repo.object_store:
        obj = repo.object_store[sha]
        if isinstance(obj, Blob):
            sizes[sha] = len(obj.as_raw_string())
    return sizes


@pytest.mark.parametrize("packed", [False, True])
def test_sizes_match_the_blobs(tmp_path: Path, packed: bool) -> None:
    work = tmp_path / "w"
    git(tmp_path, "init", "-q", str(work))
    rng = random.Random(7)
    big = bytes(rng.getrandbits(8) for _ in range(300_000))
    for version in range(4):
        # Small edits of large files: git gc stores most of them as deltas.
        (work / "big.bin").write_bytes(big[: 200_000 + version * 1000] + bytes([version]) * 50)
        (work / "text.conf").write_text("line\n" * (1000 + version * 3000))
        (work / "empty").write_bytes(b"")
        git(work, "add", "-A")
        git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"v{version}")
    if packed:
        git(work, "gc", "-q", "--aggressive")
    with Repo(str(work)) as repo:
        want = all_blobs(repo)
        assert len(want) >= 9
        got = {sha: blob_size(repo.object_store, sha) for sha in want}  # type: ignore[arg-type]
        if packed:
            assert not list((work / ".git/objects").glob("??/*")), "expected a fully packed repo"
        assert got == want
        assert blob_size(repo.object_store, ObjectID(b"0" * 40)) is None  # type: ignore[arg-type]


def test_budget_names_the_file_and_the_limit() -> None:
    budget = SizeBudget("c" * 40, max_file_size=100, max_total_size=250)
    budget.take("common/files/a", 100)
    with pytest.raises(
        SourceError, match=r"common/files/b .* 101 bytes, over .*max_file_size \(100"
    ):
        budget.take("common/files/b", 101)
    budget.take("common/files/c", 100)
    with pytest.raises(SourceError, match=r"common/files/d add up to 300 bytes, over .*max_total"):
        budget.take("common/files/d", 100)
