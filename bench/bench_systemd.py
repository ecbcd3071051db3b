"""Benchmark the systemd target against a real systemd (nspawn container, as in the tests).

A commit of N units (simple services) is planned + applied + pruned, then health is
polled until it is clean (settle excluded); then a no-op re-plan, a no-op drift check,
a one-unit change, and removing everything. systemctl invocations are counted by the
client. Prints a Markdown table. Run as root: ``.venv/bin/python bench/bench_systemd.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from agent.config import HealthConfig, SystemdConfig
from agent.desired import DesiredFile, DesiredState
from agent.state import Owned
from agent.targets.base import ApplyContext
from agent.targets.systemd import SystemdTarget
from tests.testbed.nspawn import container_at

UNIT = """\
[Unit]
Description=bench unit {i} ({rev})

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def desired(n: int, commit: str, rev: dict[int, str] | None = None) -> DesiredState:
    files = {}
    for i in range(n):
        path = f"systemd/bench-{i:03d}.service"
        data = UNIT.format(i=i, rev=(rev or {}).get(i, "r1")).encode()
        files[path] = DesiredFile(path, data, 0o100644, "bench")
    return DesiredState(commit=commit, paths=("bench",), files=files)


async def run(n: int) -> list[tuple[str, float, int]]:
    rows: list[tuple[str, float, int]] = []
    owned: dict[str, Owned] = {}

    def record(_target: str, subject: str, entry: Owned | None) -> None:
        if entry is None:
            owned.pop(subject, None)
        else:
            owned[subject] = entry

    with tempfile.TemporaryDirectory() as tmp, container_at(Path(tmp) / "ct") as ct:
        cfg = SystemdConfig(True, ct.unit_dir, tuple(ct.systemctl_prefix))
        target = SystemdTarget(cfg, HealthConfig(timeout=60, settle=0))
        sc = target.systemctl

        async def step(name: str, coro_fn: object) -> object:
            before = sc.calls
            start = time.perf_counter()
            result = await coro_fn()  # type: ignore[operator]
            rows.append((name, (time.perf_counter() - start) * 1000, sc.calls - before))
            return result

        async def sync(d: DesiredState) -> None:
            plan = await target.plan(d, owned)
            ctx = ApplyContext(commit=d.commit, record=record)
            await target.apply(plan, d, ctx)
            await target.prune(plan, ctx)

        d1 = desired(n, "c1")
        await step(f"apply {n} new units (write, enable, reload, start)", lambda: sync(d1))

        async def healthy(d: DesiredState) -> None:
            ctx = ApplyContext(commit=d.commit, record=record)
            # Polling is the contract: the pipeline calls health() repeatedly.
            while await target.health(d, ctx):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await step(f"health of {n} units until clean", lambda: healthy(d1))
        await step("no-op plan + apply (unchanged)", lambda: sync(d1))
        drift = await step("no-op drift check", lambda: target.drift(d1, owned))
        assert drift == [], drift
        d2 = desired(n, "c2", {0: "r2"})
        await step("change 1 of them (reload + restart 1)", lambda: sync(d2))
        d3 = DesiredState(commit="c3", paths=("bench",), files={})
        await step(f"remove all {n} (stop, disable, delete, reload)", lambda: sync(d3))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=20)
    args = parser.parse_args()
    rows = asyncio.run(run(args.units))
    print(f"| systemd target, {args.units} units | time (ms) | systemctl calls |")
    print("|---|---:|---:|")
    for name, ms, calls in rows:
        print(f"| {name} | {ms:.0f} | {calls} |")


if __name__ == "__main__":
    main()
