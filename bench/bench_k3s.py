"""Benchmark of the k3s target: 100 objects applied, a no-op reconcile, RSS.

Runs against the test bed's kube-apiserver (tests/testbed/kube.py, built by
tests/kube/build-apiserver) or a real cluster when EDGEFLEET_K3S_KUBECONFIG is set.
The measurements run in a fresh child process so its RSS is that of an agent that
imported the k3s target and applied the objects. Prints a Markdown table.

    .venv/bin/python bench/bench_k3s.py [--objects 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def manifests(ns: str, count: int) -> str:
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    ]
    for i in range(count):
        name = f"obj-{i:03d}"
        meta = {"name": name, "namespace": ns}
        if i % 3 == 0:
            objs.append(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"i": str(i)}}
            )
        elif i % 3 == 1:
            objs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": meta,
                    "spec": {
                        "selector": {"app": name},
                        "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
                    },
                }
            )
        else:
            labels = {"app": name}
            objs.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": meta,
                    "spec": {
                        "replicas": 0,
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]},
                        },
                    },
                }
            )
    return yaml.safe_dump_all(objs)


async def worker(kubeconfig: str, count: int, rounds: int) -> dict[str, float]:
    base = rss_mb()
    # Imported here, not at the top: the RSS they add is what is measured.
    from agent.changeset import Action  # noqa: PLC0415
    from agent.config import K3sConfig  # noqa: PLC0415
    from agent.desired import DesiredFile, DesiredState  # noqa: PLC0415
    from agent.state import Owned  # noqa: PLC0415
    from agent.targets.base import ApplyContext  # noqa: PLC0415
    from agent.targets.k3s import K3sTarget  # noqa: PLC0415

    imported = rss_mb()
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    inventory: dict[str, Owned] = {}

    def record(_target: str, subject: str, owned: Owned | None) -> None:
        if owned is None:
            inventory.pop(subject, None)
        else:
            inventory[subject] = owned

    def desired(text: str, commit: str) -> DesiredState:
        f = DesiredFile("manifests/all.yaml", text.encode(), 0o100644, "bench")
        return DesiredState(commit=commit, paths=("bench",), files={"manifests/all.yaml": f})

    with tempfile.TemporaryDirectory() as state:
        cfg = K3sConfig(enabled=True, kubeconfig=Path(kubeconfig), namespaces=(ns,))
        target = K3sTarget(cfg, Path(state), node="bench")
        try:
            full = desired(manifests(ns, count), "1" * 40)
            t0 = time.perf_counter()
            plan = await target.plan(full, inventory)
            t1 = time.perf_counter()
            await target.apply(plan, full, ApplyContext(commit=full.commit, record=record))
            t2 = time.perf_counter()
            assert len(plan.of(Action.CREATED)) == count + 1, plan.summary()
            noop: list[float] = []
            drift: list[float] = []
            for r in range(rounds):
                again = desired(manifests(ns, count), f"{r + 2:040x}")
                t = time.perf_counter()
                plan = await target.plan(again, inventory)
                noop.append(time.perf_counter() - t)
                assert plan.empty, plan.lines()[:3]
                t = time.perf_counter()
                items = await target.drift(again, inventory)
                drift.append(time.perf_counter() - t)
                assert not items, items[:3]
            applied = rss_mb()
            empty = desired("", "f" * 40)
            plan = await target.plan(empty, inventory)
            t = time.perf_counter()
            await target.prune(plan, ApplyContext(commit=empty.commit, record=record))
            pruned = time.perf_counter() - t
        finally:
            await target.close()
    return {
        "objects": count,
        "plan_create_s": t1 - t0,
        "apply_s": t2 - t1,
        "noop_plan_s": min(noop),
        "drift_s": min(drift),
        "prune_s": pruned,
        "rss_python_mb": base,
        "rss_imported_mb": imported,
        "rss_applied_mb": applied,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", metavar="KUBECONFIG")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(worker(args.worker, args.objects, args.rounds))))
        return
    # Only the parent starts the test bed: pytest must not count in the worker's RSS.
    from tests.testbed.kube import EXTERNAL_ENV, start_kube  # noqa: PLC0415

    kube = None
    tmp = tempfile.TemporaryDirectory()
    try:
        kubeconfig = os.environ.get(EXTERNAL_ENV)
        if not kubeconfig:
            kube = start_kube(Path(tmp.name))
            kubeconfig = str(kube.kubeconfig)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                kubeconfig,
                "--objects",
                str(args.objects),
                "--rounds",
                str(args.rounds),
            ],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if out.returncode != 0:
            sys.exit(f"benchmark worker failed:\n{out.stderr}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if kube is not None:
            kube.close()
        tmp.cleanup()
    n = res["objects"]
    rows = [
        (f"plan (dry-run validation) of {n} new objects", f"{res['plan_create_s'] * 1000:.0f} ms"),
        (f"apply of {n} objects (+1 Namespace)", f"{res['apply_s'] * 1000:.0f} ms"),
        (f"plan + apply, {n} objects", f"{(res['plan_create_s'] + res['apply_s']) * 1000:.0f} ms"),
        (
            f"no-op reconcile (plan, all unchanged), {n} objects",
            f"{res['noop_plan_s'] * 1000:.0f} ms",
        ),
        (f"drift check, {n} objects", f"{res['drift_s'] * 1000:.0f} ms"),
        (f"prune of {n} objects", f"{res['prune_s'] * 1000:.0f} ms"),
        ("RSS: bare python", f"{res['rss_python_mb']:.1f} MB"),
        ("RSS: agent + k3s target imported", f"{res['rss_imported_mb']:.1f} MB"),
        (f"RSS: after applying {n} objects", f"{res['rss_applied_mb']:.1f} MB"),
    ]
    print("| k3s target | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
