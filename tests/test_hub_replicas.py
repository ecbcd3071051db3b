"""Several hub replicas on one real PostgreSQL and a real mosquitto: ingest split by
the shared subscription, every replica answering for the whole fleet, one leader, a
leader killed mid-soak, a stalled leader fenced off."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from common import wire
from hub.errors import StoreError
from hub.leader import LeaseLeadership, NotLeader
from hub.notify.config import MQTT_SINK
from hub.notify.deliver import Deliverer
from hub.store.outbox import OutboxItem
from hub.store.pg import PgStore
from hub.store.pglease import WAIT
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.gitserver import GitDaemon, GitRemote
from tests.testbed.hubproc import HubProc, Publisher, event_doc, status_doc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher
from tests.testbed.wait import until, wait_until

SOAKED = """
[[stages]]
name = "canary"

[[stages]]
name = "beta"
promote_from = "canary"
auto = true
gate = { min_nodes = 2, soak = 8 }
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[FleetRepo, GitDaemon]]:
    repo = FleetRepo(tmp_path / "repos")
    server = GitDaemon(repo.root, tmp_path / "git-daemon.log")
    server.start()
    yield repo, server
    server.stop()


def role(hub: HubProc) -> str | None:
    return hub.try_get("/api/v1/health").get("role")


def the_leader(hubs: list[HubProc]) -> HubProc:
    """Waits until exactly one replica says it leads; returns it."""

    def one() -> HubProc | None:
        leading = [h for h in hubs if role(h) == "leader"]
        return leading[0] if len(leading) == 1 else None

    found = wait_until(one, 20, "exactly one leader")
    assert all(role(h) == "standby" for h in hubs if h is not found)
    return found


def beta_gate(hub: HubProc) -> dict[str, Any]:
    stages = hub.get("/api/v1/stages")["stages"]
    return dict(next(s for s in stages if s["name"] == "beta")["gate_status"])


def test_replicas_split_ingest_and_each_answers_for_the_whole_fleet(
    hub_factory: Callable[..., HubProc], publisher: Publisher, pg_database: str
) -> None:
    hubs = [hub_factory(database=pg_database) for _ in range(2)]
    for i in range(300):
        publisher.status(status_doc(f"n{i:03}", 1, "failed" if i % 10 == 0 else "synced"))
        publisher.event(event_doc(f"n{i:03}", 1))
    for hub in hubs:
        hub.wait_for(lambda h=hub: h.get("/api/v1/summary")["nodes"] == 300)
        summary = hub.get("/api/v1/summary")
        assert (summary["states"]["synced"], summary["states"]["failed"]) == (270, 30)
        hub.wait_for(lambda h=hub: len(h.get("/api/v1/events?limit=1000")["events"]) == 300)
    committed = [_metric(h, "edgefleet_hub_messages_committed_total") for h in hubs]
    assert sum(committed) == 600 and all(c > 0 for c in committed), committed  # split
    leader = the_leader(hubs)
    assert _metric(leader, "edgefleet_hub_leader") == 1


def test_replicas_without_the_shared_subscription_each_ingest_all_and_store_it_once(
    hub_factory: Callable[..., HubProc], publisher: Publisher, pg_database: str
) -> None:
    """``shared = false`` (what mosquitto needs to lose nothing at its own restart): every
    replica ingests every message; the store keeps each status and event once."""
    hubs = [hub_factory(database=pg_database, mqtt_extra="shared = false") for _ in range(2)]
    for i in range(100):
        publisher.status(status_doc(f"n{i:03}", 1))
        publisher.event(event_doc(f"n{i:03}", 1))
    for hub in hubs:
        hub.wait_for(lambda h=hub: _metric(h, "edgefleet_hub_messages_committed_total") == 200)
        assert hub.get("/api/v1/summary")["nodes"] == 100
        assert len(hub.get("/api/v1/events?limit=1000")["events"]) == 100


def test_every_replicas_live_stream_shows_the_whole_fleet(
    hub_factory: Callable[..., HubProc], publisher: Publisher, pg_database: str
) -> None:
    """The shared subscription splits the statuses, yet one replica's stream reaches the
    whole fleet: its own commits wake it, the others' show at its periodic refresh."""
    watched, other = (hub_factory(database=pg_database) for _ in range(2))
    with urllib.request.urlopen(f"{watched.url}/api/v1/stream", timeout=10) as stream:
        assert _next_summary(stream)["nodes"] == 0
        for i in range(100):
            publisher.status(status_doc(f"n{i:03}", 1))
        deadline = time.monotonic() + 20
        while (seen := _next_summary(stream))["nodes"] != 100:
            assert time.monotonic() < deadline, f"the stream stopped at {seen['nodes']} nodes"
    shares = [_metric(h, "edgefleet_hub_messages_committed_total") for h in (watched, other)]
    assert sum(shares) == 100 and 0 < shares[0] < 100, shares  # the other replica's too


def _next_summary(stream: Any) -> dict[str, Any]:
    """The next ``event: summary`` of a server-sent event stream."""
    event = None
    for raw in stream:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event == "summary":
            return dict(json.loads(line[len("data: ") :]))
    raise AssertionError("the stream ended")


def _metric(hub: HubProc, name: str) -> int:
    for line in hub.get("/metrics").splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError(f"{name} missing")


def _recorded_soak(hub: HubProc) -> float | None:
    since = beta_gate(hub)["holding_since"]
    return since if since is not None and beta_gate(hub)["holding_since"] == since else None


def test_killing_the_leader_mid_soak_hands_the_rollout_over_once(
    hub_factory: Callable[..., HubProc],
    publisher: Publisher,
    pg_database: str,
    daemon: tuple[FleetRepo, GitDaemon],
) -> None:
    repo, server = daemon
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="canary")
    repo.push("beta", c0)
    options = {"database": pg_database, "git_url": server.url(), "stages": SOAKED}
    hubs = [hub_factory(**options) for _ in range(2)]
    first = the_leader(hubs)
    c1 = repo.commit({"common/files/etc/motd": "v1\n"}, branch="canary")
    for seq, node in enumerate(("c1", "c2"), start=1):
        publisher.status(status_doc(node, seq, "synced", branch="canary", applied=c1))
    # Until the leader's loop records it, the API shows "since now", new at every call.
    since = wait_until(lambda: _recorded_soak(first), 15, "the leader to record the soak")

    first.kill()  # kill -9 during the soak
    (second,) = [h for h in hubs if h is not first]
    second.wait_for(lambda: role(second) == "leader", timeout=15)
    assert beta_gate(second)["holding_since"] == since  # the soak goes on, not over
    second.wait_for(lambda: repo.head("beta") == c1, timeout=30)
    promotions = [
        h for h in second.get("/api/v1/history?stage=beta")["history"] if h["action"] == "promote"
    ]
    assert [(p["outcome"], p["to"]) for p in promotions] == [("done", c1)]
    assert promotions[0]["evidence"]["holding_since"] == since

    first.start()  # back as a standby: nothing is promoted twice
    first.wait_for(lambda: role(first) == "standby")
    assert len(first.get("/api/v1/history?stage=beta")["history"]) == 1


def test_a_stalled_leader_is_standby_when_it_wakes_and_refuses_to_act(
    hub_factory: Callable[..., HubProc], pg_database: str, daemon: tuple[FleetRepo, GitDaemon]
) -> None:
    repo, server = daemon
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="canary")
    repo.push("beta", c0)
    options = {"database": pg_database, "git_url": server.url(), "stages": SOAKED}
    hubs = [hub_factory(**options) for _ in range(2)]
    first = the_leader(hubs)
    (second,) = [h for h in hubs if h is not first]
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        second.wait_for(lambda: role(second) == "leader", timeout=15)
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    first.wait_for(lambda: role(first) == "standby")
    c1 = repo.commit({"common/files/etc/motd": "v1\n"}, branch="canary")
    first.wait_for(lambda: beta_gate(first)["candidate"] == c1)
    status, body = first.request(
        "POST", "/api/v1/stages/beta/promote", token="s3cret-token",
        body=b'{"force": true, "reason": "from the old leader"}',
    )  # fmt: skip
    assert status == 409 and f"the leader at {second.url}" in body["error"], body
    assert repo.head("beta") == c0


async def test_the_fencing_token_refuses_a_leader_whose_lease_lapsed(pg_database: str) -> None:
    """A leader stalled past its lease still believes it leads (its clock stood still);
    the token check in the database refuses it once another replica took over."""
    store = await PgStore.open(pg_database)
    try:
        frozen = LeaseLeadership(store, "http://a", lambda: None, ttl=2.0, clock=lambda: 0.0)
        other = LeaseLeadership(store, "http://b", lambda: None, ttl=2.0)
        await frozen.renew()
        await frozen.fence()  # leads, and the database agrees
        await other.renew()
        assert not other.is_leader()

        async def other_leads() -> bool:
            await other.renew()
            return other.is_leader()

        await until(other_leads, 10, "the lease to lapse and pass to the other replica")
        assert frozen.is_leader()  # its own view is stale...
        with pytest.raises(NotLeader, match="lost the leader lease"):
            await frozen.fence()  # ...the database's is not
        assert not frozen.is_leader()
        await frozen.renew()
        assert not frozen.is_leader()
        await other.fence()
        assert await other.may_act()

        async def frozen_leads() -> bool:
            await frozen.renew()
            return frozen.is_leader()

        # The same for what is skipped rather than refused (ref announcements).
        await until(frozen_leads, 10, "the lease to pass back to the stalled replica")
        await until(other_leads, 10, "the lease to lapse and pass to the other replica")
        assert frozen.is_leader()
        assert not await frozen.may_act()
        assert not frozen.is_leader()
    finally:
        await store.close()
        await asyncio.sleep(0)


async def test_a_lease_claim_without_answer_gives_up_and_the_next_one_starts_afresh(
    pg_database: str,
) -> None:
    """A claim stuck behind a row lock stands for one on a dead connection (a partition:
    tests/test_hub_partition.py): it fails after WAIT seconds, not the pool's minute,
    and the next one, on a new connection, takes the lease."""
    store = await PgStore.open(pg_database)
    blocker = await asyncpg.connect(pg_database)
    try:
        leader = LeaseLeadership(store, "http://a", lambda: None)
        async with blocker.transaction():
            await blocker.execute("SELECT * FROM leader_lease FOR UPDATE")
            with pytest.raises(StoreError, match=f"did not answer within {WAIT:g} s"):
                await store.claim(leader.holder, "http://a", 6.0)
        await leader.renew()
        assert leader.is_leader()
    finally:
        await blocker.close()
        await store.close()


async def test_notifications_go_out_from_the_leader_only_and_once(pg_database: str) -> None:
    """Both replicas run a deliverer on the shared outbox: the one whose lease lapsed
    (it still believes it leads) is refused by the fencing token before it sends, the
    leader sends each notification once."""
    store = await PgStore.open(pg_database)
    sent: dict[str, list[bytes]] = {"stalled": [], "leader": []}
    stop = asyncio.Event()
    try:
        stalled = LeaseLeadership(store, "http://a", lambda: None, ttl=2.0, clock=lambda: 0.0)
        leader = LeaseLeadership(store, "http://b", lambda: None, ttl=2.0)
        await stalled.renew()

        async def leader_leads() -> bool:
            await leader.renew()
            return leader.is_leader()

        await until(leader_leads, 10, "the lease to lapse and pass to the other replica")
        assert stalled.is_leader()  # its own view is stale
        now = time.time()
        await store.outbox_add([OutboxItem(f"e{i}", MQTT_SINK, f"n{i}", now, now)
                                for i in range(2)])  # fmt: skip

        def publisher(name: str) -> Callable[[str, bytes, int, bool], bool]:
            return lambda _topic, body, _qos, _retain: sent[name].append(body) is None

        tasks = [
            asyncio.create_task(Deliverer((), store, publisher(name), time.time, lead).run(stop))
            for name, lead in (("stalled", stalled), ("leader", leader))
        ]
        await until(lambda: len(sent["leader"]) == 2, 10, "the leader's deliveries")
        stop.set()
        await asyncio.gather(*tasks)
        assert sent == {"stalled": [], "leader": [b"n0", b"n1"]}
        assert await store.outbox_due(time.time() + 3600, [MQTT_SINK], 10) == []
    finally:
        stop.set()
        await store.close()


def test_a_replica_killed_during_a_burst_loses_nothing(
    hub_factory: Callable[..., HubProc], publisher: Publisher, pg_database: str
) -> None:
    hubs = [hub_factory(database=pg_database) for _ in range(2)]
    victim = hubs[1]
    burst = threading.Thread(
        target=lambda: [
            publisher.status(status_doc(f"n{i:02}", seq, retain=False))
            for seq in range(1, 21)
            for i in range(50)
        ]
    )
    burst.start()
    try:
        victim.wait_for(lambda: _metric(victim, "edgefleet_hub_messages_committed_total") > 100)
        victim.kill()  # kill -9 with messages delivered to it but not yet acked
    finally:
        burst.join()
    victim.start()  # same client id: the broker redelivers what it never acked
    for hub in hubs:
        hub.wait_for(
            lambda h=hub: {n["seq"] for n in h.get("/api/v1/nodes?limit=100")["nodes"]} == {20}
        )
        assert hub.get("/api/v1/summary")["nodes"] == 50


async def test_a_push_webhook_reaching_a_standby_is_announced_by_the_leader(
    hub_factory: Callable[..., HubProc],
    git_remote: GitRemote,
    mosquitto: Mosquitto,
    pg_database: str,
    tmp_path: Path,
) -> None:
    """Git is polled hourly here: only the webhook, forwarded through the lease row to
    the leader, can get the new head announced."""
    secret = tmp_path / "hook-secret"
    secret.write_text("s3cret-hook\n")
    first = git_remote.repo.commit({"common/files/etc/a": "1"}, branch="canary")
    options = {"database": pg_database, "git_url": git_remote.url, "git_interval": 3600,
               "git_extra": f'webhook_secret_file = "{secret}"'}  # fmt: skip
    hubs = [hub_factory(**options) for _ in range(2)]
    leader = await asyncio.to_thread(the_leader, hubs)
    (standby,) = [h for h in hubs if h is not leader]
    watcher = Watcher(mosquitto.port, [wire.ref_topic("canary")])
    await watcher.ready()
    try:
        assert wire.parse_ref_payload((await watcher.next(10)).payload) == first
        pushed = git_remote.repo.commit({"common/files/etc/a": "2"}, branch="canary")
        body = json.dumps({"ref": "refs/heads/canary", "after": pushed}).encode()
        signature = hmac.new(b"s3cret-hook", body, hashlib.sha256).hexdigest()
        status, _ = await asyncio.to_thread(
            standby.request, "POST", "/api/v1/hooks/git", None, body,
            {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={signature}",
             "Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 200
        announced = await watcher.next(15)
        assert wire.parse_ref_payload(announced.payload) == pushed
    finally:
        watcher.close()
