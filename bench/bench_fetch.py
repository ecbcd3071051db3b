"""Depth-1 fetch of one branch: agent.source.GitSource vs ``git fetch --depth 1``.

Both fetch the same ref from the same local ``git daemon`` into a fresh bare repository,
N runs each, interleaved. Prints a Markdown table of medians. Budget: GitSource within 2x
of the git CLI. Run: ``python bench/bench_fetch.py [--runs N] [--files F] [--commits C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import GitConfig
from agent.source import GitSource
from tests.testbed.fleetrepo import FleetRepo, git
from tests.testbed.gitserver import GitDaemon


def build_repo(root: Path, files: int, commits: int) -> FleetRepo:
    repo = FleetRepo(root)
    content = {
        f"common/files/etc/app{i // 50}/f{i:04}.conf": f"key{i} = {'x' * (i % 200)}\n" * 8
        for i in range(files)
    }
    repo.commit(content, push=False)
    for c in range(commits - 1):
        repo.commit({f"common/files/etc/app0/f{c % files:04}.conf": f"rev {c}\n"}, push=False)
    repo.push("stable")
    return repo


def time_gitsource(url: str, work: Path) -> float:
    state = Path(tempfile.mkdtemp(dir=work))
    src = GitSource(GitConfig(url=url, paths=("common",)), state)
    started = time.perf_counter()
    asyncio.run(src.fetch())
    elapsed = time.perf_counter() - started
    src.close()
    shutil.rmtree(state)
    return elapsed


def time_git_cli(url: str, work: Path) -> float:
    target = Path(tempfile.mkdtemp(dir=work))
    git(target, "init", "-q", "--bare")
    started = time.perf_counter()
    git(
        target,
        "-c",
        "protocol.version=2",
        "fetch",
        "-q",
        "--depth",
        "1",
        url,
        "refs/heads/stable:refs/heads/stable",
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--commits", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        root = Path(tmp)
        repo = build_repo(root / "repos", args.files, args.commits)
        count = git(repo.bare, "rev-list", "--count", "stable")
        daemon = GitDaemon(root / "repos", root / "daemon.log")
        daemon.start()
        try:
            url = daemon.url()
            time_gitsource(url, root)  # warm-up (imports, page cache)
            time_git_cli(url, root)
            ours, theirs = [], []
            for _ in range(args.runs):
                ours.append(time_gitsource(url, root))
                theirs.append(time_git_cli(url, root))
        finally:
            daemon.stop()

    med_ours, med_git = statistics.median(ours), statistics.median(theirs)
    ratio = med_ours / med_git
    print(f"Depth-1 fetch over git:// of a branch with {count} commits and {args.files} files")
    print(f"({args.runs} interleaved runs each, fresh bare repository per run)\n")
    print("| client | median ms | min ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, runs in (("GitSource (dulwich)", ours), ("git fetch --depth 1", theirs)):
        print(
            f"| {name} | {statistics.median(runs) * 1000:.1f} | "
            f"{min(runs) * 1000:.1f} | {max(runs) * 1000:.1f} |"
        )
    print(
        f"\nratio GitSource / git: **{ratio:.2f}x** (budget 2x: {'ok' if ratio <= 2 else 'OVER'})"
    )


if __name__ == "__main__":
    main()
