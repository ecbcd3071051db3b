"""Waves: how long a wave takes beyond its soak.

Real fleet (tests/testbed/wavefleet.py): four agents on the host, hub, mosquitto, git
daemon; stable rolls out in two waves, pilot (1 node, ``soak``) then the rest (2 nodes,
moved with the branch). Measured from the promotion call: the pilot applied (a wave's
start-up: ref push, wake-up, fetch, apply, report) and the rest applied; the rest's
overhead is its time beyond the pilot's soak. Run: ``.venv/bin/python bench/bench_waves.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.testbed.fleetrepo import SigningKey
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.wavefleet import wave_fleet

SOAKS = (1.0, 3.0, 5.0)
BUDGET = 10.0
REST = ("stable-a", "stable-b")


def one(soak: float, directory: Path) -> tuple[float, float]:
    """(pilot applied, rest applied) seconds after the promotion."""
    key = SigningKey.create(directory / "signing")
    broker = Mosquitto(directory / "mosquitto")
    broker.start()
    try:
        with wave_fleet(directory, key, broker, soak) as fleet:
            commit = fleet.commit(f"bench soak {soak}\n")
            fleet.wait("the hub to see the commit", lambda: fleet.hub_head("beta") == commit)
            start = time.monotonic()
            status, body = fleet.post("/api/v1/stages/stable/promote", {"force": True})
            if status != 200:
                raise RuntimeError(f"promotion refused: {body}")
            fleet.wait("the pilot on the commit", lambda: fleet.on(commit, "stable-pilot"))
            pilot = time.monotonic() - start
            fleet.wait("the rest on the commit", lambda: fleet.on(commit, *REST))
            return pilot, time.monotonic() - start
    finally:
        broker.stop()


def main() -> int:
    rows = []
    for soak in SOAKS:
        with tempfile.TemporaryDirectory(prefix="bench-waves-") as tmp:
            pilot, rest = one(soak, Path(tmp))
        rows.append((soak, pilot, rest, rest - pilot - soak))
    print("| pilot soak (s) | pilot applied (s) | rest applied (s) "
          "| rest wave beyond the soak (s) |")  # fmt: skip
    print("|---:|---:|---:|---:|")
    for soak, pilot, rest, overhead in rows:
        print(f"| {soak:g} | {pilot:.2f} | {rest:.2f} | {overhead:.2f} |")
    worst = max(max(r[1], r[3]) for r in rows)
    verdict = "OK" if worst < BUDGET else "OVER"
    print(f"\nworst per-wave overhead {worst:.2f} s (budget {BUDGET:g} s): {verdict}")
    return 0 if worst < BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
