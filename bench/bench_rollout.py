"""Rollout latency: a commit on canary until every stable node applied it.

Real fleet (tests/testbed/rolloutfleet.py): six agents in their own network namespaces,
hub, mosquitto, git daemon; canary -> beta -> stable with auto promotion and the same
``soak`` on both gates. Overhead = elapsed - 2 x soak (the two soaks the commit must sit
out). Needs root (network namespaces). Run: ``.venv/bin/python bench/bench_rollout.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.testbed.fleetrepo import SigningKey
from tests.testbed.rolloutfleet import rollout_fleet, wait

SOAKS = (1.0, 3.0, 5.0)
BUDGET = 10.0


def one(soak: float, directory: Path) -> tuple[float, float, float]:
    """(canary applied, beta applied, stable applied) seconds after the commit."""
    key = SigningKey.create(directory / "signing")
    with rollout_fleet(directory, key, soak=soak) as fleet:
        start = time.monotonic()
        commit = fleet.commit(f"bench soak {soak}\n")
        marks = []
        for stage in ("canary", "beta", "stable"):
            wait(fleet, f"{stage} on the commit", lambda s=stage: fleet.applied(s, commit), 60)
            marks.append(time.monotonic() - start)
        return marks[0], marks[1], marks[2]


def main() -> int:
    rows = []
    for soak in SOAKS:
        with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
            canary, beta, stable = one(soak, Path(tmp))
        rows.append((soak, canary, beta, stable, stable - 2 * soak))
    print("| soak per gate (s) | canary applied (s) | beta applied (s) | stable applied (s) "
          "| overhead beyond 2 x soak (s) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    for soak, canary, beta, stable, overhead in rows:
        print(f"| {soak:g} | {canary:.2f} | {beta:.2f} | {stable:.2f} | {overhead:.2f} |")
    worst = max(r[4] for r in rows)
    verdict = "OK" if worst < BUDGET else "OVER"
    print(f"\nworst overhead {worst:.2f} s (budget {BUDGET:g} s): {verdict}")
    return 0 if worst < BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
