"""End to end: the agent runs INSIDE a container as the hardened edgefleet-agent.service.

The container is an edge host on its own network namespace, wired to a host bridge in
a private test range (TESTBED.md "Several hosts"). It pulls signed commits from a git
daemon and reports to mosquitto, both listening on the bridge address only for it;
the test watches MQTT on loopback like a hub would and notifies the new ref.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import wire
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto, free_port, wait_port
from tests.testbed.mqtt import Watcher
from tests.testbed.nspawn import NspawnContainer, container_at, edge_network

REPO = Path(__file__).resolve().parents[1]
ALLOWED_ROOT = "/etc/edgefleet-e2e"
"""Under /etc, which ProtectSystem=full makes read-only: the drop-in must open it up."""

# Only what is specific to this host goes into a drop-in; the unit stays as shipped.
DROP_IN = f"""\
[Service]
ReadWritePaths={ALLOWED_ROOT}
"""

APP_UNIT = """\
[Unit]
Description=e2e app {version}

[Service]
ExecStartPre=/bin/cp {root}/app.conf /run/e2e-app.seen
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


@contextmanager
def git_daemon(base: Path, host: str, log: Path) -> Iterator[str]:
    """``git daemon`` exporting ``base`` on ``host`` only; yields the fleet repo URL."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--verbose",
                f"--base-path={base}",
                f"--listen={host}",
                f"--port={port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        wait_port(port, host=host)
        yield f"git://{host}:{port}/fleet.git"
    finally:
        proc.terminate()
        proc.wait(5)


def install_package_files(root: Path, deb: Path) -> None:
    """The package's private venv (/opt/edgefleet, built on Debian's python3.11) unpacked
    into the container without its maintainer scripts: the unit under test is the one in
    systemd/, installed below. Nothing is borrowed from the test venv, which may live
    under /tmp or /root, both hidden from the hardened unit (PrivateTmp, ProtectHome)."""
    unpacked = root / "var/tmp/edgefleet-deb"
    # Not straight into root: the .deb's /lib would shadow merged-/usr's /lib symlink.
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    (unpacked / "opt/edgefleet").rename(root / "opt/edgefleet")
    shutil.rmtree(unpacked)


def install_agent(
    ct: NspawnContainer, node: str, git_url: str, mqtt_url: str, key: SigningKey, deb: Path
) -> None:
    """Config, trust and unit files into the container's /etc, as a package would."""
    etc = ct.root / "etc/edgefleet"
    etc.mkdir(parents=True)
    shutil.copy(key.allowed_signers, etc / "allowed_signers")
    (etc / "agent.toml").write_text(
        f"""node = "{node}"
[git]
url = "{git_url}"
branch = "stable"
paths = ["common"]
interval = 3600
[trust]
allowed_signers = "/etc/edgefleet/allowed_signers"
[mqtt]
url = "{mqtt_url}"
[targets.systemd]
enabled = true
[targets.files]
allowed_roots = ["{ALLOWED_ROOT}"]
[health]
timeout = 20
settle = 0.5
"""
    )
    (ct.root / ALLOWED_ROOT.lstrip("/")).mkdir()
    install_package_files(ct.root, deb)
    shutil.copy(REPO / "systemd/edgefleet-agent.service", ct.unit_dir)
    dropins = ct.unit_dir / "edgefleet-agent.service.d"
    dropins.mkdir()
    (dropins / "test.conf").write_text(DROP_IN)
    ct.run("systemctl", "daemon-reload")


def journal(ct: NspawnContainer) -> str:
    """The agent's journal, for failure messages."""
    return ct.run("journalctl", "-u", "edgefleet-agent", "--no-pager", "-n", "40", check=False)


class Hub:
    """Watches one node's status and online topics on loopback, as the hub would."""

    def __init__(self, watcher: Watcher, node: str) -> None:
        self.watcher = watcher
        self.node = node
        self.online: list[bytes] = []

    async def next(self, topic: str, match: Callable[[bytes], bool], timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.watcher.next(timeout=max(0.1, deadline - time.monotonic()))
            if msg.topic == wire.online_topic(self.node):
                self.online.append(msg.payload)
            if msg.topic == topic and match(msg.payload):
                return msg.payload

    async def status(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        payload = await self.next(
            wire.status_topic(self.node), lambda p: match(json.loads(p)), timeout
        )
        doc: dict[str, Any] = json.loads(payload)
        return doc


def app_files(version: str) -> dict[str, str | bytes | None]:
    return {
        "common/systemd/e2e-app.service": APP_UNIT.format(version=version, root=ALLOWED_ROOT),
        f"common/files{ALLOWED_ROOT}/app.conf": f"{version}\n",
    }


async def test_agent_service_in_container_over_netns(tmp_path: Path, edgefleet_deb: Path) -> None:
    key = SigningKey.create(tmp_path / "signing")
    repo = FleetRepo(tmp_path / "repos")
    node = f"e2e-{secrets.token_hex(3)}"
    c1 = repo.commit(app_files("v1"), sign=key)
    daemon_log = tmp_path / "git-daemon.log"

    with edge_network() as net:
        netns, edge_ip = net.add_edge()
        edge_port = free_port()
        broker = Mosquitto(
            tmp_path / "mosquitto",
            # The edge's listener: on the bridge address only, next to loopback for us.
            extra=f"listener {edge_port} {net.host_ip}\nallow_anonymous true\n",
        )
        broker.start()
        watcher = Watcher(broker.port, [wire.status_topic(node), wire.online_topic(node)])
        hub = Hub(watcher, node)
        try:
            await watcher.ready()
            with (
                git_daemon(repo.root, net.host_ip, daemon_log) as git_url,
                container_at(tmp_path / "ct", netns=netns) as ct,
            ):
                install_agent(
                    ct, node, git_url, f"mqtt://{net.host_ip}:{edge_port}", key, edgefleet_deb
                )
                # Type=notify: start returns once the agent said READY=1.
                ct.run("systemctl", "start", "edgefleet-agent.service", check=False)
                props = ct.show("edgefleet-agent.service", "ActiveState", "SubState", "Type")
                want = {"ActiveState": "active", "SubState": "running", "Type": "notify"}
                assert props == want, journal(ct)

                doc = await hub.status(lambda d: d["applied"] == c1)
                assert doc["state"] == "synced", doc
                assert ct.show("e2e-app.service", "ActiveState")["ActiveState"] == "active"
                assert ct.run("cat", "/run/e2e-app.seen") == "v1\n"
                assert (ct.root / ALLOWED_ROOT.lstrip("/") / "app.conf").read_text() == "v1\n"
                assert f"Connection from {edge_ip}:" in daemon_log.read_text()

                # The next commit arrives by ref notification: the poll interval is an hour.
                c2 = repo.commit(app_files("v2"), sign=key)
                started = time.monotonic()
                await watcher.publish(
                    wire.ref_topic("stable"), wire.ref_payload(c2, time.time()), retain=True
                )
                doc = await hub.status(lambda d: d["applied"] == c2, timeout=10)
                took = time.monotonic() - started
                assert doc["state"] == "synced" and took < 5, (doc, took)
                assert ct.run("cat", "/run/e2e-app.seen") == "v2\n"
                desc = ct.show("e2e-app.service", "Description")["Description"]
                assert desc == "e2e app v2"

                assert hub.online == [b"1"]
                ct.run("systemctl", "stop", "edgefleet-agent.service")
                await hub.next(wire.online_topic(node), lambda p: p == b"0", timeout=10)
                props = ct.show("edgefleet-agent.service", "ActiveState", "Result")
                assert props == {"ActiveState": "inactive", "Result": "success"}
        finally:
            watcher.close()
            broker.stop()
    # edge_network and container_at assert this on exit too; spelled out here as the contract.
    assert not net.leftovers()
    assert str(tmp_path / "ct") not in Path("/proc/self/mountinfo").read_text()
    assert not Path(f"/proc/{ct.leader}").exists()
