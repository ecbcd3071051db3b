"""A hub leader cut off from PostgreSQL by a network partition (issue 18).

Replica A runs in its own network namespace, wired to a test bridge where PostgreSQL and
mosquitto also listen; replica B runs on the host. An nft rule inside A's namespace
drops A's packets to and from PostgreSQL (drop, not reject: the connections hang as in
a real partition) while its API and MQTT stay reachable. A must stop acting as leader
before B starts, refuse rollout actions while cut off, and come back as a standby that
ingests again once the rule is gone.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed.edgenet import bridge_broker, edge_net, netns, run
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.hubproc import HubProc, Publisher, status_doc
from tests.testbed.postgres import postgres_server
from tests.testbed.wait import wait_until

FAILOVER = 15.0
"""Generous bound for B to take over (the lease lapses 6 s after A's last renewal)."""


@dataclass
class Roles:
    """Both replicas' roles as their health endpoints report them, sampled together."""

    a: HubProc
    b: HubProc
    samples: list[tuple[float, str | None, str | None]] = field(default_factory=list)

    def sample(self) -> tuple[str | None, str | None]:
        now = time.monotonic()
        roles = (_role(self.a), _role(self.b))
        self.samples.append((now, *roles))
        return roles

    def wait(self, want: tuple[str | None, str | None], timeout: float, what: str) -> float:
        """Sample until the roles are ``want``; returns when that was first seen."""
        wait_until(lambda: self.sample() == want, timeout, what, details=self.details)
        return self.samples[-1][0]

    def watch(self, seconds: float) -> None:
        """Keep sampling for ``seconds`` (the observation is the assertion)."""
        end = time.monotonic() + seconds
        wait_until(lambda: self.sample() and time.monotonic() > end, seconds + 5, "the watch")

    def details(self) -> str:
        logs = f"A:\n{self.a.log_text()}\nB:\n{self.b.log_text()}"
        return f"last samples: {self.samples[-5:]}\n{logs}"


def _role(hub: HubProc) -> str | None:
    return hub.try_get("/api/v1/health").get("role")


def _committed(hub: HubProc) -> int:
    for line in hub.get("/metrics").splitlines():
        if line.startswith("edgefleet_hub_messages_committed_total "):
            return int(float(line.split()[1]))
    raise AssertionError("edgefleet_hub_messages_committed_total missing")


@contextlib.contextmanager
def cut_off(ns: str, port: int) -> Iterator[None]:
    """Drop every packet between namespace ``ns`` and TCP port ``port`` (both ways)."""
    table = f"ef_cut_{secrets.token_hex(3)}"
    run(
        "nft",
        f"add table inet {table}; "
        f"add chain inet {table} out {{ type filter hook output priority 0; }}; "
        f"add chain inet {table} in {{ type filter hook input priority 0; }}; "
        f"add rule inet {table} out tcp dport {port} drop; "
        f"add rule inet {table} in tcp sport {port} drop",
        netns=ns,
    )
    try:
        yield
    finally:
        run("nft", f"delete table inet {table}", netns=ns)


def test_a_leader_cut_off_from_postgresql_steps_down_before_another_leads(
    tmp_path: Path,
) -> None:
    repo = FleetRepo(tmp_path / "repos")
    c0 = repo.commit({"common/files/etc/motd": "v0\n"}, branch="canary")
    repo.push("beta", c0)
    repo.commit({"common/files/etc/motd": "v1\n"}, branch="canary")  # the candidate
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(edge_net())
        ns, a_ip = stack.enter_context(netns(net))
        pg = stack.enter_context(postgres_server((net.host_ip, str(net.subnet))))
        broker, bridge_mqtt = stack.enter_context(bridge_broker(tmp_path / "mosquitto", net))
        options = {"database": pg.new_database(net.host_ip), "git_url": repo.url}
        a = HubProc(tmp_path / "a", broker, listen_host=a_ip, broker_url=bridge_mqtt,
                    prefix=("ip", "netns", "exec", ns), **options)  # fmt: skip
        b = HubProc(tmp_path / "b", broker, **options)
        for hub in (a, b):
            stack.callback(hub.stop)  # before the namespace and the servers go
        publisher = Publisher(broker).connect(broker)
        stack.callback(publisher.close)
        roles = Roles(a, b)

        a.start()
        roles.wait(("leader", None), 15, "A to lead alone")
        b.start()
        roles.wait(("leader", "standby"), 15, "B to join as a standby")
        before = _committed(a)

        with cut_off(ns, pg.port):
            cut = time.monotonic()
            for i in range(20):  # some land on A, whose ingest now hangs
                publisher.status(status_doc(f"n{i:02}", 1))
            took_over = roles.wait(("standby", "leader"), FAILOVER, "B to take over from A")
            stepped_down = next(
                t for t, a_role, _ in roles.samples if t >= cut and a_role == "standby"
            )
            status, body = a.request(
                "POST", "/api/v1/stages/beta/promote", token="s3cret-token",
                body=json.dumps({"force": True, "reason": "while cut off"}).encode(),
            )  # fmt: skip
            assert status == 409 and "standby" in body["error"], (status, body)
        healed = time.monotonic()

        a.wait_for(lambda: _committed(a) > before, timeout=FAILOVER)  # A ingests again
        for hub in (a, b):
            hub.wait_for(lambda h=hub: h.get("/api/v1/summary")["nodes"] == 20)
        roles.watch(6.0)  # a full lease period: A competes again and loses to B
        watched = time.monotonic()
        b.stop()  # resigns: A, back in the competition, takes over
        roles.wait(("leader", None), FAILOVER, "A to lead again")

    assert repo.head("beta") == c0  # the refused promotion moved nothing
    assert not [s for s in roles.samples if s[1:] == ("leader", "leader")], "two leaders"
    assert stepped_down < took_over, (stepped_down - cut, took_over - cut)
    after = [s for s in roles.samples if took_over <= s[0] <= watched]
    assert all(s[1:] == ("standby", "leader") for s in after), [
        s for s in after if s[1:] != ("standby", "leader")
    ]
    assert all(s[1] is not None for s in roles.samples if cut <= s[0] <= healed), (
        "A's health did not answer while cut off from the database"
    )
    print(f"A standby {stepped_down - cut:.2f} s after the cut, B leader {took_over - cut:.2f} s")
