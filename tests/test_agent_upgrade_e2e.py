"""Agent upgrades end to end: the packaged agent, installed with dpkg in a real systemd
container, upgrades ITSELF when the fleet repository pins another version.

One container walks through the scenarios in order (each container boot and package
install is slow): hash mismatch refused -> 0.1.0 upgraded to 0.2.0 (after waiting for a
dpkg lock held as apt holds it) -> downgrade without the flag refused -> a broken 0.3.0
(dpkg -i fails) and a hung 0.4.0 (never healthy) rolled back to 0.2.0 -> a stage rollback
back to 0.1.0 (allowed: the version run before) -> a power cut in the middle of the
install to 0.2.0, recovered on the next boot. Packages come from an HTTP server on the
test bridge, MQTT from mosquitto on it; the repository is in the container's own file
system.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common import wire
from tests.test_packaging import NODE, _agent_toml
from tests.testbed.agentdebs import AgentDebs
from tests.testbed.edgenet import EdgeNet, bridge_broker
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mqtt import Watcher
from tests.testbed.nspawn import NspawnContainer, power_cut_and_boot
from tests.testbed.pkgserver import PackageServer, package_server
from tests.testbed.wait import until

APP_FILE = "common/files/srv/ef-demo/app.txt"
# What apt does: an fcntl lock on dpkg's frontend lock file, held until stopped.
HOLD_DPKG_LOCK = (
    "import fcntl, time\n"
    "f = open('/var/lib/dpkg/lock-frontend', 'w')\n"
    "fcntl.lockf(f, fcntl.LOCK_EX)\n"
    "time.sleep(3600)\n"
)


class Node:
    """The container's agent as the hub sees it: its statuses and events over MQTT."""

    def __init__(self, ct: NspawnContainer, watcher: Watcher) -> None:
        self.ct = ct
        self.watcher = watcher
        self.events: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    def journal(self) -> str:
        units = ("-u", "edgefleet-agent", "-u", "edgefleet-upgrade-*")
        return self.ct.run("journalctl", *units, "--no-pager", "-n", "80", check=False)

    async def status(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 90
    ) -> dict[str, Any]:
        """The first status from now on that matches (events are collected meanwhile)."""
        return await self._until(lambda: match(self.last), timeout, "a matching status")

    async def event(self, type_: str, timeout: float = 30) -> None:
        """Until an event of ``type_`` arrived (now or earlier)."""
        if type_ not in self.event_types():
            await self._until(lambda: type_ in self.event_types(), timeout, f"event {type_}")

    async def _until(self, done: Callable[[], bool], timeout: float, what: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self.watcher.next(timeout=timeout)
                    doc = json.loads(msg.payload)
                    if msg.topic == wire.events_topic(NODE):
                        self.events.append(doc)
                    else:
                        self.last = doc
                    if done():
                        return self.last
        except TimeoutError as err:
            raise AssertionError(f"no {what}; last status {self.last}\n{self.journal()}") from err

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def dpkg(self) -> list[str]:
        """dpkg's state abbreviation (``ii`` = installed) and version of the package."""
        out = self.ct.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", "edgefleet")
        status, _, version = out.partition("|")
        return [status.strip(), version]


def pin(
    srv: PackageServer, deb: Path, version: str, sha256: str | None = None, timeout: int = 120
) -> str:
    return (
        f'[agent]\nversion = "{version}"\npackage = "{srv.url(deb.name)}"\n'
        f'sha256 = "{sha256 or AgentDebs.sha256(deb)}"\nupgrade_timeout = {timeout}\n'
    )


def change(app: str, agent: str | None) -> dict[str, str | bytes | None]:
    files: dict[str, str | bytes | None] = {APP_FILE: f"{app}\n"}
    if agent is not None:
        files["common/edgefleet.toml"] = agent
    return files


@pytest.mark.timeout(900)
async def test_agent_upgrades_itself_through_pins(
    agent_debs: AgentDebs,
    fresh_systemd_container: NspawnContainer,
    edgenet: EdgeNet,
    tmp_path: Path,
) -> None:
    ct = fresh_systemd_container
    edgenet.attach(ct)
    with (
        bridge_broker(tmp_path / "mosquitto", edgenet) as (broker, mqtt),
        package_server(agent_debs.dir, host=edgenet.host_ip) as srv,
    ):
        watcher = Watcher(broker.port, [wire.status_topic(NODE), wire.events_topic(NODE)])
        try:
            await watcher.ready()
            await _scenarios(ct, Node(ct, watcher), srv, agent_debs, edgenet, mqtt)
        finally:
            watcher.close()


async def _scenarios(
    ct: NspawnContainer, node: Node, srv: PackageServer, debs: AgentDebs, net: EdgeNet, mqtt: str
) -> None:
    app = ct.root / "srv/ef-demo/app.txt"
    kept = ct.root / "var/lib/edgefleet/packages"
    # -- a node on 0.1.0, installed with dpkg, configured as tests/test_packaging.py does --
    shutil.copyfile(debs.v1, ct.root / "root" / debs.v1.name)
    ct.run("dpkg", "-i", f"/root/{debs.v1.name}", timeout=180)
    repo = FleetRepo(ct.root / "srv/ef-test")
    key = SigningKey.create(ct.root / "srv/ef-test/signing")
    (ct.root / "srv/ef-demo").mkdir(parents=True)
    shutil.copyfile(key.allowed_signers, ct.root / "etc/edgefleet/allowed_signers")
    (ct.root / "etc/edgefleet/agent.toml").write_text(_agent_toml("/srv/ef-test/fleet.git", mqtt))
    c0 = repo.commit(change("v0", None), sign=key)
    ct.run("systemctl", "enable", "--now", "edgefleet-agent")
    doc = await node.status(lambda d: d["applied"] == c0 and d["state"] == "synced")
    assert doc["version"] == "0.1.0"

    # -- hash mismatch: the whole commit refused, nothing changed -------------------------
    bad_hash = pin(srv, debs.v2, "0.2.0", sha256="0" * 64)
    c1 = repo.commit(change("v1", bad_hash), sign=key)
    doc = await node.status(lambda d: d["desired"] == c1 and d["state"] == "refused")
    assert doc["reason"] == "AgentPackageRefused", doc
    assert f"the commit pins {'0' * 64}" in doc["message"]
    assert (doc["applied"], doc["version"]) == (c0, "0.1.0")
    assert app.read_text() == "v0\n"
    assert node.dpkg() == ["ii", "0.1.0"]
    assert not (kept / "edgefleet_0.2.0.deb").exists()

    # -- 0.1.0 -> 0.2.0: applied by the new agent, reported ---------------------------------
    # apt-daily holds dpkg's lock as the upgrade starts: the watchdog unit waits for it.
    ct.run("systemd-run", "--unit", "fake-apt", "python3", "-c", HOLD_DPKG_LOCK)
    asked = len(srv.requests)
    c2 = repo.commit(change("v2", pin(srv, debs.v2, "0.2.0")), sign=key)
    await node.status(lambda d: d["desired"] == c2 and d["reason"] == "UpgradingAgent")
    upgrade_log = ("journalctl", "-u", "edgefleet-upgrade-0.2.0", "--no-pager")
    await until(
        lambda: "dpkg is locked (apt?); waiting" in ct.run(*upgrade_log, check=False),
        timeout=60,
        what="the upgrade waiting for dpkg's lock",
        details=node.journal,
    )
    assert node.dpkg() == ["ii", "0.1.0"]
    ct.run("systemctl", "stop", "fake-apt")
    doc = await node.status(lambda d: d["applied"] == c2 and d["state"] == "synced")
    assert doc["version"] == "0.2.0"
    assert app.read_text() == "v2\n"
    assert node.dpkg() == ["ii", "0.2.0"]
    await node.event("agent_upgraded")
    assert "agent_upgrade" in node.event_types()
    # One download, kept; the running package kept (rebuilt from dpkg's database) for rollback.
    assert [p for p, _ in srv.requests[asked:]] == [f"/{debs.v2.name}"]
    assert sorted(p.name for p in kept.glob("*.deb")) == [
        "edgefleet_0.1.0.deb",
        "edgefleet_0.2.0.deb",
    ]
    # The watchdog unit polls for the marker each second, then says ok and ends.
    result = ct.root / "var/lib/edgefleet/upgrade/result"
    await until(result.exists, timeout=30, what="the upgrade unit's result", details=node.journal)
    assert result.read_text() == "ok\n"

    # -- downgrade to a version never run here, without allow_downgrade: refused ---------
    c3 = repo.commit(change("v3", pin(srv, debs.v1, "0.1.0~old")), sign=key)
    doc = await node.status(lambda d: d["desired"] == c3 and d["state"] == "refused")
    assert doc["reason"] == "AgentDowngradeRefused" and "allow_downgrade" in doc["message"]
    assert node.dpkg() == ["ii", "0.2.0"] and app.read_text() == "v2\n"

    # -- a broken 0.3.0: rolled back to 0.2.0 by the watchdog unit, reported failed --------
    c4 = repo.commit(change("v4", pin(srv, debs.broken, "0.3.0")), sign=key)
    doc = await node.status(
        lambda d: d["desired"] == c4 and d["state"] == "failed" and d["version"] == "0.2.0",
        timeout=180,
    )
    assert doc["reason"] == "AgentUpgradeFailed", doc
    assert "rolled back to 0.2.0" in doc["message"] and "dpkg -i failed" in doc["message"]
    assert doc["applied"] == c2 and app.read_text() == "v2\n"
    assert node.dpkg() == ["ii", "0.2.0"]
    assert ct.show("edgefleet-agent", "ActiveState")["ActiveState"] == "active"
    await node.event("agent_upgrade_failed")

    # -- a hung 0.4.0 (ready, never healthy): rolled back once upgrade_timeout runs out ------
    c4h = repo.commit(change("v4h", pin(srv, debs.hung, "0.4.0", timeout=15)), sign=key)
    doc = await node.status(
        lambda d: d["desired"] == c4h and d["state"] == "failed" and d["version"] == "0.2.0",
        timeout=180,
    )
    assert "the new agent was not healthy within 15s" in doc["message"], doc
    assert node.dpkg() == ["ii", "0.2.0"] and app.read_text() == "v2\n"

    # -- a stage rollback pins 0.1.0 again: the version run before, no flag needed --------
    c5 = repo.commit(change("v5", pin(srv, debs.v1, "0.1.0")), sign=key)
    doc = await node.status(lambda d: d["applied"] == c5 and d["state"] == "synced", timeout=180)
    assert doc["version"] == "0.1.0" and node.dpkg() == ["ii", "0.1.0"]

    # -- power cut while dpkg installs 0.2.0: the next boot finishes the job ----------------
    c6 = repo.commit(change("v6", pin(srv, debs.v2, "0.2.0")), sign=key)
    # Cut when dpkg has started to change the package (half-installed, unpacked, ...).
    await until(lambda: node.dpkg() != ["ii", "0.1.0"], timeout=60, what="dpkg installing 0.2.0")
    power_cut_and_boot(ct)
    net.attach(ct)
    # The test container boots a minimal target, not multi-user.target (which the package
    # enables the agent in): start it as a real boot would.
    ct.run("systemctl", "start", "edgefleet-agent", check=False)
    doc = await node.status(lambda d: d["applied"] == c6 and d["state"] == "synced", timeout=240)
    assert doc["version"] == "0.2.0"
    assert node.dpkg() == ["ii", "0.2.0"]
    assert ct.run("dpkg", "--audit") == ""
    assert app.read_text() == "v6\n"
