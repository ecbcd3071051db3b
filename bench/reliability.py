"""Regenerate the fault-campaign table in RELIABILITY.md.

Runs tests/test_faults.py with its JSON report (``--scale`` multiplies every trial count,
``--seed`` replays a campaign), or reads a report an earlier run left (``--report
FILE``: pytest prints its path at the end of the run), and rewrites the table between the
markers in RELIABILITY.md. Run from the repository root:

    .venv/bin/python bench/reliability.py [--scale 3] [--seed N] [--report FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "RELIABILITY.md"
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def run_campaign(scale: float, seed: int | None, report: Path) -> int:
    env = {**os.environ, "EDGEFLEET_FAULT_SCALE": str(scale), "EDGEFLEET_FAULT_REPORT": str(report)}
    if seed is not None:
        env["EDGEFLEET_FAULT_SEED"] = str(seed)
    # No per-test timeout: scaled-up trials outlast the suite's 120 s.
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--timeout=0",
           "tests/test_faults.py"]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def table(doc: dict[str, Any]) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    lines = [
        f"Seed {doc['seed']}, trial counts x{doc['scale']:g}, {today} (`bench/reliability.py`).",
        "",
        "| fault | trials | crashes | lost | corrupted | where the faults landed | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in doc["faults"].items():
        landed = ", ".join(f"{what}: {n}" for what, n in t["observed"].items()) or "-"
        lines.append(
            f"| {name} | {t['trials']} | {t['crashes']} | {t['lost']} | {t['corrupted']} "
            f"| {landed} | {t['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="trial count multiplier")
    parser.add_argument("--seed", type=int, help="replay this campaign seed")
    parser.add_argument("--report", type=Path, help="use this JSON report instead of running")
    args = parser.parse_args()
    report = args.report
    if report is None:
        report = Path(tempfile.mkdtemp(prefix="edgefleet-faults-")) / "reliability.json"
        rc = run_campaign(args.scale, args.seed, report)
        if rc != 0:
            print(f"the campaign failed (pytest exit {rc}); RELIABILITY.md left as it was")
            return rc
    new = table(json.loads(report.read_text()))
    text = DOC.read_text()
    if START not in text or END not in text:
        print(f"{DOC} lacks the {START} ... {END} markers")
        return 2
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{new}\n{END}{tail}")
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
