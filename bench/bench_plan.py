"""Fleet-wide plan cost: wall time of a plan over real agents, and the hub-side cost of
parsing and grouping 10,000 answers.

1. Real fleet (tests/testbed/planfleet.py): six beta agents (plus canary-0), hub,
   mosquitto, git daemon on loopback. Each run pushes a new signed candidate to a pull
   ref and times ``POST /api/v1/stages/beta/plan`` for it (every node fetches the
   commit, verifies its signature, reads and plans it), then once more for the same
   commit (already fetched). Needs root (mount namespaces).
2. Synthetic: 10,000 encoded answers of 20 changes each (18 shared subjects, 2 of the
   node's own; 1% refusals) parsed strictly (``common.plan.parse_answer``) and grouped
   (``hub.plan.aggregate``), as the hub does.

Run: ``.venv/bin/python bench/bench_plan.py [--runs 5] [--answers 10000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.plan import PlanAnswer, PlanChange, Refusal, parse_answer
from hub.plan import aggregate
from tests.testbed.fleetrepo import SigningKey, git
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.planfleet import plan_fleet

AGENTS = 6
SHA = "c" * 40


def fleet_runs(runs: int) -> tuple[list[float], list[float]]:
    """(seconds per plan of a new commit, seconds per plan of a fetched one)."""
    fresh: list[float] = []
    cached: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        directory = Path(tmp)
        broker = Mosquitto(directory / "mosquitto")
        broker.start()
        key = SigningKey.create(directory / "signing")
        try:
            with plan_fleet(directory, key, broker, AGENTS, require_plan=False) as fleet:
                for run in range(runs):
                    files = {f"common/files{fleet.app_root}/app.conf": f"run {run}\n"}
                    for i in range(20):
                        files[f"common/files{fleet.app_root}/conf.d/{i}.conf"] = f"{run} {i}\n"
                    sha = fleet.repo.commit(files, branch="pr", sign=key, push=False)
                    git(fleet.repo.work, "push", "-q", "origin", f"{sha}:refs/pull/{run}/head")
                    for seconds in (fresh, cached):
                        body = json.dumps({"commit": sha, "timeout": 60}).encode()
                        start = time.perf_counter()
                        status, plan = fleet.hub.request(
                            "POST", "/api/v1/stages/beta/plan", fleet.hub.token, body
                        )
                        seconds.append(time.perf_counter() - start)
                        assert status == 200 and plan["answered"] == AGENTS, plan
        finally:
            broker.stop()
    return fresh, cached


def synthetic(count: int) -> tuple[float, float, int]:
    """(seconds to parse, seconds to group, payload bytes) for ``count`` answers."""
    payloads = []
    for i in range(count):
        node = f"node-{i:05d}"
        if i % 100 == 0:
            answer = PlanAnswer("r1", node, SHA, refused=Refusal("Untrusted", "no signature"))
        else:
            changes = [PlanChange("files", f"/etc/app/conf.d/{k}.conf", "configured")
                       for k in range(18)]  # fmt: skip
            changes += [PlanChange("files", f"/etc/app/nodes/{node}.conf", "created"),
                        PlanChange("systemd", f"app@{node}.service", "deleted")]  # fmt: skip
            answer = PlanAnswer("r1", node, SHA, tuple(changes))
        payloads.append((node, answer.payload()))
    start = time.perf_counter()
    answers = {node: parse_answer(node, data) for node, data in payloads}
    parsed = time.perf_counter() - start
    start = time.perf_counter()
    plan = aggregate("stable", "a" * 40, SHA, answers, answers)
    grouped = time.perf_counter() - start
    assert plan["answered"] == count and len(plan["refused"]) == count // 100
    return parsed, grouped, sum(len(p) for _, p in payloads)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--answers", type=int, default=10_000)
    args = parser.parse_args()
    fresh, cached = fleet_runs(args.runs)
    print(f"| plan over {AGENTS} real agents | median | max |")
    print("|---|---:|---:|")
    for what, values in (("new commit (fetch + verify + plan)", fresh),
                         ("same commit again (already fetched)", cached)):  # fmt: skip
        print(f"| {what} | {statistics.median(values) * 1000:.0f} ms "
              f"| {max(values) * 1000:.0f} ms |")  # fmt: skip
    parsed, grouped, size = synthetic(args.answers)
    print(f"\n| hub side, {args.answers:,} answers ({size / 1e6:.1f} MB) | time |")
    print("|---|---:|")
    print(f"| strict parse | {parsed * 1000:.0f} ms |")
    print(f"| group (aggregate) | {grouped * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
