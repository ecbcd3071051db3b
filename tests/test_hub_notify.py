"""Notifications from a real hub process to a real HTTP receiver and to MQTT: at least
once across receiver outages and hub restarts, signed, deduplicable, debounced."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hub.notify.events import HUB_EVENTS_TOPIC
from tests.test_hub_users import STAGES, beta_behind_canary
from tests.test_rollout import daemon  # noqa: F401 (a fixture)
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import HubProc, Publisher, status_doc
from tests.testbed.mosquitto import Mosquitto, free_port
from tests.testbed.mqtt import stop_client
from tests.testbed.wait import wait_until

pytestmark = pytest.mark.both_backends  # every hub here runs on SQLite, then PostgreSQL

SECRET = "webhook-secret"


class Receiver:
    """A webhook receiver that can be down (nothing listening) and come back on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.deliveries.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> dict[str, dict[str, Any]]:
        """Deliveries deduplicated by event id (checking every signature)."""
        out = {}
        with self.lock:
            deliveries = list(self.deliveries)
        for headers, body in deliveries:
            mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Edgefleet-Signature"] == f"sha256={mac}"
            doc = json.loads(body)
            assert headers["X-Edgefleet-Event-Id"] == doc["id"]
            out[doc["id"]] = doc
        return out

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events().values() if e["type"] == type_]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


def notify_hub(hub_factory: Callable[..., HubProc], receiver: Receiver, **options: Any) -> HubProc:
    hub = hub_factory(start=False, **options)
    hub.directory.mkdir(parents=True, exist_ok=True)
    (hub.directory / "hook.secret").write_text(SECRET + "\n")
    hub.hub_extra = 'notify_interval = "1s"\npublic_url = "https://fleet.example.org"'
    hub.extra = (
        f'[[notify]]\nname = "ops"\nurl = "{receiver.url}"\nsecret_file = "hook.secret"\n'
        'max_backoff = "1s"\nmin_interval = 0\n'
    )
    hub.start()
    return hub


def undelivered(hub: HubProc) -> int:
    sql = "SELECT count(*) FROM notify_outbox WHERE sink = 'ops' AND delivered IS NULL"
    if hub.database is not None and "://" in hub.database:  # PostgreSQL
        done = subprocess.run(["psql", "-X", "-A", "-t", "-d", hub.database, "-c", sql],
                              check=True, capture_output=True, text=True, timeout=30)  # fmt: skip
        return int(done.stdout)
    with sqlite3.connect(hub.directory / "hub.db") as db:
        row = db.execute(sql).fetchone()
    return int(row[0])


class Subscriber:
    def __init__(self, broker: Mosquitto) -> None:
        self.got: list[dict[str, Any]] = []
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.got.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(HUB_EVENTS_TOPIC, qos=1)
        self.client.loop_start()
        assert subscribed.wait(5)


def test_receiver_down_then_up_gets_every_event_once_signed(
    hub_factory: Callable[..., HubProc],
    receiver: Receiver,
    publisher: Publisher,
    mosquitto: Mosquitto,
) -> None:
    hub = notify_hub(hub_factory, receiver)
    sub = Subscriber(mosquitto)
    try:
        nodes = [f"pi-{i}" for i in range(3)]
        for node in nodes:
            publisher.status(status_doc(node, 1, "failed", branch="beta"))
        hub.wait_for(lambda: undelivered(hub) == 1, timeout=20)
        for node in nodes:
            publisher.status(status_doc(node, 2, "synced", branch="beta"))
        hub.wait_for(lambda: undelivered(hub) == 2, timeout=20)

        receiver.start()
        wait_until(lambda: len(receiver.events()) == 2, 20, "both notifications")
        (failed,) = receiver.of_type("node_failed")
        assert (failed["stage"], failed["nodes"]["count"], failed["nodes"]["total"]) == (
            "beta",
            3,
            3,
        )
        assert sorted(failed["nodes"]["examples"]) == nodes
        assert failed["url"] == "https://fleet.example.org/"
        (recovered,) = receiver.of_type("node_recovered")
        assert recovered["nodes"]["count"] == 3
        hub.wait_for(lambda: undelivered(hub) == 0)
        # MQTT got the same events, with the same ids
        wait_until(lambda: len(sub.got) == 2, 10, "the MQTT events")
        assert {e["id"] for e in sub.got} == set(receiver.events())
    finally:
        stop_client(sub.client)


def test_hub_restart_loses_no_notification(
    hub_factory: Callable[..., HubProc], receiver: Receiver, publisher: Publisher
) -> None:
    hub = notify_hub(hub_factory, receiver)
    publisher.status(status_doc("pi-1", 1, "refused", branch="canary"))
    hub.wait_for(lambda: undelivered(hub) == 1, timeout=20)
    hub.stop()
    receiver.start()
    assert receiver.events() == {}
    hub.start()
    wait_until(lambda: receiver.of_type("node_refused"), 20, "the refused notification")
    assert len(receiver.events()) == 1


def test_fifty_nodes_going_stale_make_one_notification(
    hub_factory: Callable[..., HubProc], receiver: Receiver, publisher: Publisher
) -> None:
    receiver.start()
    hub = notify_hub(hub_factory, receiver, heartbeat=0.5, stale_after=2.0)
    for i in range(50):
        publisher.status(status_doc(f"edge-{i:02}", 1, "synced", branch="stable", heartbeat=0.5))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["states"]["stale"] == 50, timeout=20)
    wait_until(lambda: receiver.of_type("node_stale"), 20, "the stale notification")
    hub.wait_for(lambda: undelivered(hub) == 0)
    stale = receiver.of_type("node_stale")
    assert len(stale) == 1, stale
    assert (stale[0]["nodes"]["count"], stale[0]["nodes"]["total"]) == (50, 50)
    assert len(stale[0]["nodes"]["examples"]) == 5
    assert stale[0]["reason"].startswith("50 nodes went stale")


def test_rollout_decisions_are_notified_with_user_and_commits(
    hub_factory: Callable[..., HubProc],
    receiver: Receiver,
    daemon: tuple[FleetRepo, GitDaemon],  # noqa: F811
) -> None:
    repo, server = daemon
    c0, c1 = beta_behind_canary(repo)
    receiver.start()
    hub = notify_hub(hub_factory, receiver, git_url=server.url(), stages=STAGES)
    hub.wait_for(lambda: hub.get("/api/v1/summary")["stages"]["canary"]["head"] == c1)
    body = json.dumps({"force": True, "who": "alice", "reason": "hotfix"}).encode()
    assert hub.request("POST", "/api/v1/stages/beta/promote", "s3cret-token", body)[0] == 200
    body = json.dumps({"reason": "bad release"}).encode()
    assert hub.request("POST", "/api/v1/stages/beta/rollback", "s3cret-token", body)[0] == 200
    wait_until(lambda: len(receiver.events()) == 2, 20, "the two rollout notifications")
    (promo,) = receiver.of_type("promotion")
    assert (promo["stage"], promo["commits"], promo["who"], promo["on_behalf"]) == (
        "beta", {"from": c0, "to": c1}, "admin", "alice"
    )  # fmt: skip
    assert promo["reason"] == "hotfix" and promo["outcome"] == "done"
    (back,) = receiver.of_type("rollback")
    assert back["commits"] == {"from": c1, "to": c0} and back["reason"] == "bad release"
