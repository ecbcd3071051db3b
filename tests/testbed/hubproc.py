"""A real hub process (``python -m hub.cli serve``) against the test broker, plus a
paho publisher that plays edge nodes.

``hub_factory(**options)`` writes a fleet.toml into a temp dir and returns a started
:class:`HubProc`; ``stop()``/``start()`` restart it with the same database and MQTT
client id (so the broker's persistent session carries over), ``kill()`` simulates a
crash.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from common import wire
from common.status import NodeReport, Status
from common.status import status_doc as wire_status
from tests.testbed.mosquitto import Mosquitto, free_port
from tests.testbed.mqtt import stop_client
from tests.testbed.wait import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_STAGES = """
[[stages]]
name = "canary"
branch = "canary"

[[stages]]
name = "beta"
branch = "beta"
promote_from = "canary"

[[stages]]
name = "stable"
branch = "stable"
promote_from = "beta"
"""


def status_doc(node: str, seq: int, state: str = "synced", **extra: Any) -> dict[str, Any]:
    """A status as an agent builds it (common.status); ``extra`` overrides wire fields
    as they are, so tests can also send what no agent would (``drift`` goes through the
    builder, which sets drift_total)."""
    drift = extra.pop("drift", [])
    report = NodeReport(
        node=node,
        state="synced",
        branch="stable",
        paths=("common",),
        desired="a" * 40,
        applied="a" * 40,
        last_good="a" * 40,
        version="0.1.0",
        drift=tuple(drift),
        drift_total=len(drift),
    )
    doc: dict[str, Any] = dict(wire_status(Status(report, 0, observed_at=time.time())))
    doc.update(seq=seq, state=state, **extra)
    return doc


def event_doc(node: str, seq: int, type_: str = "applied", **extra: Any) -> dict[str, Any]:
    return {"schema": 1, "node": node, "seq": seq, "at": time.time(), "type": type_,
            "commit": "b" * 40, "details": {}, **extra}  # fmt: skip


class Publisher:
    """A paho client (own network thread) publishing QoS1 like agents do."""

    def __init__(
        self, broker: Mosquitto, client_id: str | None = None, user: tuple[str, str] | None = None
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if user is not None:
            self.client.username_pw_set(*user)
        if broker.tls is not None:
            self.client.tls_set(ca_certs=str(broker.tls.ca))

    def connect(self, broker: Mosquitto, will: tuple[str, bytes] | None = None) -> Publisher:
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        return self

    def publish(self, topic: str, payload: bytes | dict[str, Any], retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else wire.encode(payload)
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(10)

    def status(self, doc: dict[str, Any], retain: bool = True) -> None:
        self.publish(wire.status_topic(doc["node"]), doc, retain)

    def event(self, doc: dict[str, Any]) -> None:
        self.publish(wire.events_topic(doc["node"]), doc)

    def online(self, node: str, value: bytes) -> None:
        self.publish(wire.online_topic(node), value, retain=True)

    def close(self) -> None:
        stop_client(self.client)


@dataclass
class HubProc:
    directory: Path
    broker: Mosquitto
    heartbeat: float = 30.0
    stale_after: float | None = None
    stages: str = DEFAULT_STAGES
    git_url: str | None = None
    git_interval: float = 0.2
    git_extra: str = ""
    """Extra [git] lines (webhook_secret_file...)."""
    token: str | None = "s3cret-token"
    hub_extra: str = ""
    """Extra [hub] lines (public_read, public_url...)."""
    extra: str = ""
    """Extra tables at the end ([[users]], [[notify]]...)."""
    mqtt_extra: str = ""
    """Extra [mqtt] lines (username, password_file, ca_file, protocol...)."""
    database: str | None = None
    """``[hub] database``; default: hub.db in ``directory``."""
    database_dir: Path | None = None
    """Where hub.db lives (default: ``directory``), e.g. a small tmpfs for a full disk."""
    port: int = field(default_factory=free_port)
    listen_host: str = "127.0.0.1"
    broker_url: str | None = None
    """The broker as this hub reaches it (default: ``broker``'s loopback URL)."""
    prefix: tuple[str, ...] = ()
    """A command the hub runs under, e.g. ``ip netns exec NAME`` (a network namespace)."""
    client_id: str = field(default_factory=lambda: f"hub-test-{uuid.uuid4().hex[:8]}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "fleet.toml"

    @property
    def token_file(self) -> Path:
        return self.directory / "token"

    @property
    def log(self) -> Path:
        return self.directory / "hub.log"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        hub = [
            f'listen = "{self.listen_host}:{self.port}"',
            f'database = "{self.database or (self.database_dir or self.directory) / "hub.db"}"',
            f"heartbeat = {self.heartbeat}",
        ]
        if self.stale_after is not None:
            hub.append(f"stale_after = {self.stale_after}")
        if self.token is not None:
            self.token_file.write_text(self.token + "\n")
            hub.append(f'token_file = "{self.token_file}"')
        if self.hub_extra:
            hub.append(self.hub_extra)
        git = (
            f'[git]\nurl = "{self.git_url}"\ninterval = {self.git_interval}\n{self.git_extra}\n'
            if (self.git_url)
            else ""
        )
        mqtt_url = self.broker_url or self.broker.url
        self.config.write_text(
            "[hub]\n" + "\n".join(hub) + "\n\n"
            f'[mqtt]\nurl = "{mqtt_url}"\nclient_id = "{self.client_id}"\n'
            f"{self.mqtt_extra}\n"
            + git + self.stages + "\n" + self.extra
        )  # fmt: skip

    def start(self, wait: bool = True) -> None:
        self.write_config()
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        serve = [sys.executable, "-m", "hub.cli", "serve", "--config", str(self.config)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, *serve],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.directory,
            )  # fmt: skip
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_for(lambda: self.try_get("/api/v1/health").get("mqtt") == "connected", timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll ``predicate`` (an API condition) until true; fail with the hub log."""

        def alive_and(predicate: Callable[[], bool]) -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"hub exited {self.proc.returncode}:\n{self.log_text()}")
            return predicate()

        wait_until(lambda: alive_and(predicate), timeout, "the hub", details=self.log_text)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path, method=method, data=body, headers=headers or {}
        )
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raw, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
        return status, (json.loads(raw) if "json" in ctype else raw.decode())

    def get(self, path: str) -> Any:
        status, data = self.request("GET", path)
        assert status == 200, (status, data)
        return data

    def try_get(self, path: str) -> Any:
        try:
            return self.get(path)
        except (OSError, AssertionError):
            return {}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def hub_on(tmp_path: Path, hub_database: Callable[[Path], str]) -> Iterator[Callable[..., HubProc]]:
    """Like hub_factory, for a broker the test chooses (auth, TLS): hub_on(broker, ...)."""
    hubs: list[HubProc] = []

    def make(broker: Mosquitto, start: bool = True, **options: Any) -> HubProc:
        directory = tmp_path / f"hub{len(hubs)}"
        options.setdefault("database", hub_database(directory))
        hub = HubProc(directory, broker, **options)
        hubs.append(hub)
        if start:
            hub.start()
        return hub

    yield make
    for hub in hubs:
        hub.stop()


@pytest.fixture
def hub_factory(hub_on: Callable[..., HubProc], mosquitto: Mosquitto) -> Callable[..., HubProc]:
    """Start hub processes against the test broker; all are stopped at teardown."""
    return functools.partial(hub_on, mosquitto)


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto).connect(mosquitto)
    yield pub
    pub.close()
