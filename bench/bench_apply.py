"""Applying a commit of many small files: wall time and bytes the agent writes.

Method: a real ``edgefleet-agent sync --once`` process (files target only) against a
file:// fleet repo with one SSH-signed commit of N files of 64 bytes each. Time = the
whole process (fetch, verify, plan, apply, state). Bytes written = the process's
``wchar`` from /proc/self/io at exit, less the placed payload: what the state, the Git
cache and the logs cost. The inventory must cost O(N) bytes, not O(N^2).
Run: ``python bench/bench_apply.py [--files 500 5000] [--timeout S]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey

SIZE = 64
# Runs the CLI and prints the process's own write counter when it exits.
WRAPPER = """
import atexit, runpy, sys
def io():
    for line in open("/proc/self/io"):
        if line.startswith("wchar:"):
            print("WCHAR", line.split()[1], file=sys.stderr)
atexit.register(io)
sys.argv = ["edgefleet-agent", *sys.argv[1:]]
runpy.run_module("agent.cli", run_name="__main__")
"""


def measure(work: Path, count: int, timeout: float) -> tuple[str, str, str, str]:
    repo = FleetRepo(work / f"repos{count}")
    key = SigningKey.create(work / f"key{count}")
    setup = write_agent_config(
        work / f"agent{count}", repo.url, allowed_signers=key.allowed_signers
    )
    files = {f"common/files{setup.root}/d{i % 50}/f{i}.conf": f"{i:063d}\n" for i in range(count)}
    repo.commit(files, sign=key)
    args = [sys.executable, "-c", WRAPPER, "--config", str(setup.config), "sync", "--once"]
    started = time.perf_counter()
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"{count:,}", f"not finished after {timeout:.0f} s", "-", "-"
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sync failed:\n{done.stdout}{done.stderr}")
    wchar = int(done.stderr.rpartition("WCHAR ")[2].split()[0])
    state = (setup.state_dir / "state.json").stat().st_size
    other = (wchar - count * SIZE) / 1e6
    return f"{count:,}", f"{elapsed:.2f} s", f"{other:.1f} MB", f"{state / 1e6:.2f} MB"


def main(counts: list[int], timeout: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-apply-"))
    print("| files | sync --once | bytes written beyond the payload | state.json |")
    print("|---:|---:|---:|---:|")
    for count in counts:
        print("| " + " | ".join(measure(work, count, timeout)) + " |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--timeout", type=float, default=600)
    options = parser.parse_args()
    main(options.files, options.timeout)
