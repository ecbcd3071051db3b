"""Templates and secrets: render + decrypt cost, and the daemon's idle RSS afterwards.

Method: a fleet commit with 500 ``*.j2`` files under files/ (each reads values from
two values.toml layers and the node's built-ins; every tenth also reads a secret from
secrets.toml.age) and 50 ``*.age`` files encrypted for the node with the real ``age``
CLI. (1) ``agent.render.source.render`` on that commit, as the daemon calls it: one
child process renders and decrypts everything; median of N runs, and the child's peak
RSS. (2) A real ``edgefleet-agent run`` (files target, MQTT, ref notification) applies
the commit; RSS/PSS are read from /proc 5 s after the apply, and the daemon's memory
maps are searched for pyrage's native library (it must never be loaded there).
Run: ``python bench/bench_render.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.desired import DesiredFile, DesiredState
from agent.render.source import NodeFacts, render
from bench.bench_agent import rss_kib
from common import wire
from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher

TEMPLATES = 500
SECRETS = 50
TEMPLATE = (
    "# {{ node }} ({{ facts.arch }}, {{ facts.os_id }} {{ facts.os_version }})\n"
    "listen = {{ app.listen }}:{{ app.port + n }}\n"
    "{% for peer in app.peers %}peer = {{ peer }}\n{% endfor %}"
    "site = {{ labels.site | default('none') }}\n"
)


def age_encrypt(data: bytes, recipient: str) -> bytes:
    return subprocess.run(
        ["age", "-r", recipient], input=data, capture_output=True, check=True
    ).stdout


def fleet_files(root: Path, recipient: str) -> dict[str, bytes]:
    files = {
        "common/values.toml": b'[app]\nlisten = "0.0.0.0"\nport = 8000\npeers = ["a", "b", "c"]\n',
        "nodes/bench/values.toml": b"[app]\nport = 9000\n",
        "common/secrets.toml.age": age_encrypt(b'[db]\npassword = "bench-pw"\n', recipient),
        "common/edgefleet.toml": b'[requires]\nagent = ">= 0.2"\n',
    }
    for i in range(TEMPLATES):
        body = "{% set n = " + str(i) + " %}" + TEMPLATE
        if i % 10 == 0:
            body += "password = {{ secrets.db.password }}\n"
        files[f"common/files{root}/conf/app-{i}.conf.j2"] = body.encode()
    for i in range(SECRETS):
        files[f"nodes/bench/files{root}/secrets/key-{i}.age"] = age_encrypt(
            f"secret-{i}\n".encode(), recipient
        )
    return files


def as_desired(files: dict[str, bytes]) -> tuple[DesiredState, list[dict[str, Any]]]:
    overlay = {}
    layers: dict[str, dict[str, Any]] = {
        p: {"origin": p, "values": None, "secrets": None} for p in ("common", "nodes/bench")
    }
    for path, data in files.items():
        origin = "common" if path.startswith("common/") else "nodes/bench"
        rel = path.removeprefix(origin + "/")
        if rel in ("values.toml", "secrets.toml.age"):
            layers[origin]["values" if rel == "values.toml" else "secrets"] = base64.b64encode(
                data
            ).decode()
        elif rel != "edgefleet.toml":
            overlay[rel] = DesiredFile(rel, data, 0o100644, origin)
    desired = DesiredState("0" * 40, ("common", "nodes/bench"), overlay)
    return desired, list(layers.values())


def bench_render(work: Path, identity: Path, recipient: str, runs: int) -> None:
    desired, layers = as_desired(fleet_files(work / "root", recipient))
    facts = NodeFacts("bench", {"site": "bench"}, "stable", identity)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = render(desired, layers, facts)
        times.append(time.perf_counter() - started)
    assert len(out.files) == TEMPLATES + SECRETS
    assert sum(f.secret for f in out.files.values()) == SECRETS + TEMPLATES // 10
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("| measure | value |")
    print("|---|---:|")
    print(
        f"| render {TEMPLATES} templates + decrypt {SECRETS} secrets, median of {runs} | "
        f"{statistics.median(times) * 1000:.0f} ms |"
    )
    print(f"| same, max | {max(times) * 1000:.0f} ms |")
    print(f"| rendering child peak RSS | {peak / 1024:.1f} MB |")


async def bench_daemon(work: Path, kind: str) -> tuple[float, int, int, str]:
    """A fresh daemon applies one commit (``kind``: one, plain, rendered, few); idle RSS."""
    broker = Mosquitto(work / "mq")
    broker.start()
    repo = FleetRepo(work / "repos")
    key = SigningKey.create(work / "key")
    setup = write_agent_config(
        work / "agent",
        repo.url,
        node="bench",
        paths=("common", "nodes/bench"),
        allowed_signers=key.allowed_signers,
        mqtt_url=broker.url,
        interval=3600,
        extra=f'[secrets]\nidentity = "{work}/agent/age.key"\n',
    )
    recipient = setup.cli("keygen").stdout.strip()
    repo.commit({"common/README": b"base\n", "nodes/bench/keep": b""}, sign=key)
    files = fleet_files(setup.root, recipient)
    if kind == "one":
        files = {f"nodes/bench/files{setup.root}/one.conf": b"one\n"}
    elif kind == "few":  # a typical node: five templates (one reads a secret), five secrets
        files = {p: d for p, d in files.items() if not re.search(r"-([5-9]|\d\d+)\.", p)}
    elif kind == "plain":
        files = {
            f"nodes/bench/files{setup.root}/plain/f-{i}": f"plain {i}\n".encode()
            for i in range(TEMPLATES + SECRETS)
        }
    watcher = Watcher(broker.port, [wire.status_topic("bench")])
    await watcher.ready()
    proc = setup.popen("run")
    try:

        async def applied(commit: str) -> float:
            while True:
                msg = await watcher.next(300)
                doc = json.loads(msg.payload)
                if doc.get("applied") == commit:
                    return time.perf_counter()
                if doc.get("state") in ("refused", "failed"):
                    raise RuntimeError(doc.get("message"))

        await applied(repo.head())
        sha = repo.commit(files, sign=key, push=False)
        started = time.perf_counter()
        repo.push("stable")
        await watcher.publish(wire.ref_topic("stable"), wire.ref_payload(sha, time.time()))
        took = await applied(sha) - started
        await asyncio.sleep(5)
        rss, pss = rss_kib(proc.pid)
        maps = await asyncio.to_thread(Path(f"/proc/{proc.pid}/maps").read_text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        watcher.close()
        broker.stop()
    return took, rss, pss, maps


async def bench_daemons(work: Path) -> None:
    print()
    print("| a fresh daemon (files, MQTT) applies | pushed -> applied | idle RSS | idle PSS |")
    print("|---|---:|---:|---:|")
    kinds = {
        "one": "1 plain file (reference)",
        "plain": "550 plain files",
        "rendered": "500 templates + 50 secrets",
        "few": "5 templates + 5 secrets",
    }
    for kind, what in kinds.items():
        took, rss, pss, maps = await bench_daemon(work / kind, kind)
        print(f"| {what} | {took * 1000:.0f} ms | {rss / 1024:.1f} MB | {pss / 1024:.1f} MB |")
    print(f"\npyrage mapped in the daemon: {'YES' if 'pyrage' in maps else 'no'}")


def main(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-render-"))
    identity = work / "age.key"
    subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, check=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], capture_output=True, text=True, check=True
    ).stdout.strip()
    bench_render(work, identity, recipient, runs)
    asyncio.run(bench_daemons(work))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    main(parser.parse_args().runs)
