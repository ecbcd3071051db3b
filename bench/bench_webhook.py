"""Push webhook latency: a commit pushed to canary until the canary node applied it,
with the hub hearing of the push only through ``POST /api/v1/hooks/git``.

Method: mosquitto, a git daemon serving a fleet repository with SSH-signed commits, a
real hub (``[git] interval = 3600`` so its poll cannot be what notices the push) and a
real ``edgefleet-agent run`` on the canary branch (files target, poll interval one hour
so only the hub's ref notification can make it fetch). Each run pushes a signed commit,
then posts a GitHub-signed push delivery as the forge would (the forge's own delivery
delay is not included); latency = from the start of the push to the agent's retained
status saying ``applied == commit``. Also measured: the hook's answer time (the hub's
ls-remote and ref publication happen before it answers) and how many ls-remotes a burst
of concurrent deliveries costs. Run: ``.venv/bin/python bench/bench_webhook.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import wire
from tests.testbed.agentcfg import write_agent_config
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import HubProc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher

SECRET = b"bench-webhook-secret"
BUDGET = 2.0
BURST = 10


async def deliver(session: aiohttp.ClientSession, hub: HubProc, commit: str) -> float:
    """Post a GitHub push delivery for canary; seconds until the hub answered."""
    body = json.dumps({"ref": "refs/heads/canary", "after": commit}).encode()
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature,
               "Content-Type": "application/json"}  # fmt: skip
    started = time.perf_counter()
    async with session.post(hub.url + "/api/v1/hooks/git", data=body, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == 200 and answer["head"] == commit, (resp.status, answer)
    return time.perf_counter() - started


async def applied(watcher: Watcher, commit: str) -> None:
    """Until the node's retained status says it applied ``commit``."""
    while json.loads((await watcher.next(30)).payload).get("applied") != commit:
        pass


async def main(runs: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-webhook-"))
    broker = Mosquitto(work / "mq")
    broker.start()
    repo = FleetRepo(work / "repos")
    daemon = GitDaemon(work / "repos", work / "git-daemon.log")
    daemon.start()
    key = SigningKey.create(work / "key")
    setup = write_agent_config(work / "agent", daemon.url(), node="canary-1", branch="canary",
                               allowed_signers=key.allowed_signers, mqtt_url=broker.url,
                               interval=3600)  # fmt: skip
    path = f"common/files{setup.root}/app.conf"
    repo.commit({path: "v0\n"}, branch="canary", sign=key)
    secret_file = work / "hook-secret"
    secret_file.write_text(SECRET.decode() + "\n")
    hub = HubProc(work / "hub", broker, git_url=daemon.url(), git_interval=3600,
                  git_extra=f'webhook_secret_file = "{secret_file}"')  # fmt: skip
    hub.start()
    watcher = Watcher(broker.port, [wire.status_topic("canary-1")])
    await watcher.ready()
    proc = setup.popen("run")
    latencies: list[float] = []
    answers: list[float] = []
    try:
        await applied(watcher, repo.head("canary"))
        async with aiohttp.ClientSession() as session:
            for i in range(runs):
                sha = repo.commit({path: f"v{i + 1}\n"}, branch="canary", sign=key, push=False)
                started = time.perf_counter()
                repo.push("canary")
                answers.append(await deliver(session, hub, sha))
                await applied(watcher, sha)
                latencies.append(time.perf_counter() - started)
            before = daemon.connections()
            await asyncio.gather(*(deliver(session, hub, sha) for _ in range(BURST)))
            burst_ls_remotes = daemon.connections() - before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        watcher.close()
        hub.stop()
        daemon.stop()
        broker.stop()
    lat, ans = sorted(latencies), sorted(answers)
    print("| measure | value |")
    print("|---|---:|")
    print(f"| push -> canary applied via webhook, median of {runs} | "
          f"{statistics.median(lat) * 1000:.0f} ms |")  # fmt: skip
    print(f"| push -> canary applied via webhook, max | {lat[-1] * 1000:.0f} ms |")
    print(f"| hook answered (ls-remote + ref published), median | "
          f"{statistics.median(ans) * 1000:.0f} ms |")  # fmt: skip
    print(f"| hook answered, max | {ans[-1] * 1000:.0f} ms |")
    print(f"| ls-remotes for {BURST} concurrent deliveries | {burst_ls_remotes} |")
    verdict = "OK" if lat[-1] < BUDGET else "OVER"
    print(f"\nworst push -> applied {lat[-1]:.2f} s (budget {BUDGET:g} s): {verdict}")
    return 0 if lat[-1] < BUDGET else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    sys.exit(asyncio.run(main(parser.parse_args().runs)))
