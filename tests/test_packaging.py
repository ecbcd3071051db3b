"""The .deb from packaging/build-deb, installed into a real systemd container.

Lifecycle: install without config (agent neither enabled nor started) -> configure ->
the packaged unit reconciles a signed commit and reports to mosquitto on the host (over
a test bridge) -> upgrade to a rebuilt package keeps config, conffiles and state ->
remove keeps config and state -> purge deletes them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent import __version__
from common import wire
from tests.testbed.debpkg import build_deb, deb_field
from tests.testbed.edgenet import EdgeNet, bridge_broker
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher
from tests.testbed.nspawn import NspawnContainer

NODE = "pkg-node"


def test_deb_metadata_and_contents(edgefleet_deb: Path) -> None:
    assert edgefleet_deb.name.startswith(f"edgefleet_{__version__}_")
    assert deb_field(edgefleet_deb, "Package") == "edgefleet"
    depends = deb_field(edgefleet_deb, "Depends")
    assert "python3.11" in depends and "systemd" in depends

    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(edgefleet_deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for expected in (
        "/opt/edgefleet/venv/bin/edgefleet-agent",
        "/opt/edgefleet/bin/edgefleet-agent",
        "/opt/edgefleet/bin/edgefleet-hub",
        "/lib/systemd/system/edgefleet-agent.service",
        "/lib/systemd/system/edgefleet-hub.service",
        "/etc/edgefleet/agent.toml.example",
        "/usr/lib/sysusers.d/edgefleet.conf",
        "/usr/lib/tmpfiles.d/edgefleet.conf",
        "/usr/share/doc/edgefleet/examples/mosquitto/edgefleet.acl",
    ):
        assert expected in paths, expected
    # Config and state are never shipped: upgrades must not touch them.
    assert "/etc/edgefleet/agent.toml" not in paths
    assert not any(p.startswith("/var/lib/edgefleet") for p in paths)
    # Owned by root whatever user built it.
    assert all(" root/root " in line for line in listing.splitlines())

    control = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(edgefleet_deb)], capture_output=True, check=True
    ).stdout
    tmp = edgefleet_deb.parent / "control.tar"
    tmp.write_bytes(control)
    with tarfile.open(tmp) as tar:
        names = {n.lstrip("./") for n in tar.getnames()}
        conffiles = tar.extractfile("./conffiles")
        assert conffiles is not None
        assert conffiles.read().decode().split() == ["/etc/edgefleet/agent.toml.example"]
    assert {"control", "postinst", "prerm", "postrm", "conffiles"} <= names
    # The venv points at its installed location, not at the build's staging dir.
    venv_script = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(edgefleet_deb)], capture_output=True, check=True
    ).stdout
    tmp.write_bytes(venv_script)
    with tarfile.open(tmp) as tar:
        script = tar.extractfile("./opt/edgefleet/venv/bin/edgefleet-agent")
        assert script is not None
        assert script.readline() == b"#!/opt/edgefleet/venv/bin/python3.11\n"
        cfg = tar.extractfile("./opt/edgefleet/venv/pyvenv.cfg")
        assert cfg is not None
        assert b"/tmp" not in cfg.read()
    tmp.unlink()


def _dpkg(ct: NspawnContainer, *args: str) -> str:
    return ct.run("dpkg", *args, timeout=180)


def _copy_in(ct: NspawnContainer, deb: Path) -> str:
    dest = ct.root / "root" / deb.name
    shutil.copyfile(deb, dest)
    return f"/root/{deb.name}"


def _unit_state(ct: NspawnContainer) -> tuple[str, str]:
    enabled = ct.run("systemctl", "is-enabled", "edgefleet-agent", check=False).strip()
    active = ct.run("systemctl", "is-active", "edgefleet-agent", check=False).strip()
    return enabled, active


def _agent_toml(repo_path: str, mqtt_url: str) -> str:
    return f"""node = "{NODE}"
[git]
url = "file://{repo_path}"
branch = "stable"
paths = ["common"]
interval = 2
[trust]
allowed_signers = "/etc/edgefleet/allowed_signers"
[mqtt]
url = "{mqtt_url}"
heartbeat = 5
[targets.files]
allowed_roots = ["/srv/ef-demo"]
[health]
timeout = 10
settle = 0
"""


async def _status(
    ct: NspawnContainer, watcher: Watcher, want: str, timeout: float = 60.0
) -> wire.StatusDoc:
    """The first status naming ``want`` as applied and synced (earlier ones are skipped)."""
    seen: list[wire.StatusDoc] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await watcher.next(timeout=timeout, topic=wire.status_topic(NODE))
                doc: wire.StatusDoc = json.loads(msg.payload)
                if doc.get("applied") == want and doc.get("state") == "synced":
                    return doc
                seen.append(doc)
    except TimeoutError as err:
        journal = ct.run("journalctl", "-u", "edgefleet-agent", "--no-pager", check=False)
        raise AssertionError(
            f"no synced status for {want}; saw {seen[-3:]}\n{journal[-3000:]}"
        ) from err


def _check_inhibit_dir(ct: NspawnContainer) -> None:
    """/run/edgefleet/inhibit exists; members of edgefleet-inhibit may drop a lock there,
    other local users may not (a lock holds back every update)."""
    assert ct.run("stat", "-c", "%U %G %a", "/run/edgefleet/inhibit").split() == [
        "root", "edgefleet-inhibit", "1770"
    ]  # fmt: skip
    for user, groups in (("inhibit-app", "edgefleet-inhibit"), ("other-app", "users")):
        if ct.run("id", "-u", user, check=False) == "":
            ct.run("useradd", "--system", "--groups", groups, user)
    lock = 'echo \'{"reason": "busy", "expires": null}\' > /run/edgefleet/inhibit/$(id -un).json'
    ct.run("runuser", "-u", "inhibit-app", "--", "sh", "-c", lock)
    refused = ct.run("runuser", "-u", "other-app", "--", "sh", "-c", f"{lock} || echo refused")
    assert refused.strip().endswith("refused")
    # /run is the container's own tmpfs: look from inside.
    assert ct.run("ls", "/run/edgefleet/inhibit").split() == ["inhibit-app.json"]
    ct.run("rm", "/run/edgefleet/inhibit/inhibit-app.json")


@pytest.mark.timeout(400)
async def test_install_configure_upgrade_remove_purge(
    edgefleet_deb: Path,
    fresh_systemd_container: NspawnContainer,
    edgenet: EdgeNet,
    tmp_path: Path,
) -> None:
    ct = fresh_systemd_container
    edgenet.attach(ct)
    with bridge_broker(tmp_path / "mosquitto", edgenet) as (broker, url):
        await _lifecycle(ct, broker, url, edgefleet_deb)


async def _lifecycle(ct: NspawnContainer, broker: Mosquitto, mqtt_url: str, deb: Path) -> None:
    # -- install without config: nothing enabled, nothing running -----------------------
    out = _dpkg(ct, "-i", _copy_in(ct, deb))
    assert "stays off until /etc/edgefleet/agent.toml exists" in out
    assert _unit_state(ct) == ("disabled", "inactive")
    assert (ct.root / "var/lib/edgefleet").is_dir()
    assert (ct.root / "var/lib/edgefleet").stat().st_mode & 0o777 == 0o700
    version = ct.run("/usr/bin/edgefleet-agent", "--version").strip()
    assert version == f"edgefleet-agent {__version__}"
    assert ct.run("id", "-u", "edgefleet-hub").strip().isdigit()
    _check_inhibit_dir(ct)
    # At boot systemd-tmpfiles-setup.service runs this over every tmpfiles.d entry.
    ct.run("rm", "-r", "/run/edgefleet")
    ct.run("systemd-tmpfiles", "--create")
    _check_inhibit_dir(ct)

    # -- configure: a signed commit in a repo the container sees at /srv/ef-test --------
    repo = FleetRepo(ct.root / "srv/ef-test")
    key = SigningKey.create(ct.root / "srv/ef-test/signing")
    sha = repo.commit({"common/files/srv/ef-demo/hello.txt": "hello from the fleet\n"}, sign=key)
    (ct.root / "srv/ef-demo").mkdir(parents=True)  # an allowed root must exist
    etc = ct.root / "etc/edgefleet"
    shutil.copyfile(key.allowed_signers, etc / "allowed_signers")
    config = _agent_toml("/srv/ef-test/fleet.git", mqtt_url)
    (etc / "agent.toml").write_text(config)
    (etc / "agent.toml").chmod(0o600)

    watcher = Watcher(broker.port, [wire.status_topic(NODE)])
    try:
        await watcher.ready()
        ct.run("systemctl", "enable", "--now", "edgefleet-agent")
        doc = await _status(ct, watcher, sha)
        assert doc["branch"] == "stable"
        hello = ct.root / "srv/ef-demo/hello.txt"
        assert hello.read_text() == "hello from the fleet\n"
        assert _unit_state(ct) == ("enabled", "active")
        state_before = json.loads((ct.root / "var/lib/edgefleet/state.json").read_text())
        assert state_before["applied"] == sha

        # -- upgrade to a rebuilt package: config, conffile edits and state survive ---------
        example = etc / "agent.toml.example"
        example.write_text(example.read_text() + "# local note\n")
        pid_before = ct.show("edgefleet-agent", "MainPID")["MainPID"]
        new = build_deb(ct.base.parent / "dist2", version=f"{__version__}+upgrade1")
        _dpkg(ct, "-i", _copy_in(ct, new))
        status = ct.run("dpkg-query", "-W", "-f=${Version} ${db:Status-Abbrev}", "edgefleet")
        assert status.split() == [f"{__version__}+upgrade1", "ii"]
        assert (etc / "agent.toml").read_text() == config
        assert (etc / "agent.toml").stat().st_mode & 0o777 == 0o600
        assert example.read_text().endswith("# local note\n")
        assert _unit_state(ct) == ("enabled", "active")
        assert ct.show("edgefleet-agent", "MainPID")["MainPID"] != pid_before
        # The restarted agent finds its commit applied: nothing is re-applied.
        state_after = json.loads((ct.root / "var/lib/edgefleet/state.json").read_text())
        assert state_after["applied"] == sha
        assert state_after["last_good"] == state_before["last_good"]
        doc = await _status(ct, watcher, sha)
        assert doc["applied"] == sha
    finally:
        watcher.close()

    # -- remove keeps config and state; purge deletes them -------------------------------
    _dpkg(ct, "-r", "edgefleet")
    assert ct.run("systemctl", "is-active", "edgefleet-agent", check=False).strip() == "inactive"
    assert (etc / "agent.toml").is_file()
    assert (ct.root / "var/lib/edgefleet/state.json").is_file()
    assert not (ct.root / "opt/edgefleet").exists()
    assert not (ct.root / "lib/systemd/system/edgefleet-agent.service").exists()
    _dpkg(ct, "--purge", "edgefleet")
    assert not etc.exists()
    assert not (ct.root / "var/lib/edgefleet").exists()
    assert ct.run("dpkg-query", "-W", "edgefleet", check=False) == ""


def test_hub_unit_runs_hardened(
    edgefleet_deb: Path, fresh_systemd_container: NspawnContainer
) -> None:
    """The packaged hub starts as its system user under the unit's sandbox and serves."""
    ct = fresh_systemd_container
    _dpkg(ct, "-i", _copy_in(ct, edgefleet_deb))
    (ct.root / "etc/edgefleet/fleet.toml").write_text(
        '[hub]\nlisten = "127.0.0.1:8080"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
    )
    ct.run("systemctl", "enable", "--now", "edgefleet-hub")
    probe = (
        "import json, time, urllib.request\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        r = urllib.request.urlopen('http://127.0.0.1:8080/api/v1/summary', timeout=1)\n"
        "        print(json.load(r)['nodes']); break\n"
        "    except OSError: time.sleep(0.1)\n"
    )
    try:
        assert ct.run("python3", "-c", probe).strip() == "0"
    except AssertionError:
        print(ct.run("journalctl", "-u", "edgefleet-hub", "--no-pager", check=False))
        raise
    props = ct.show("edgefleet-hub", "ActiveState", "User", "MainPID")
    assert props["ActiveState"] == "active" and props["User"] == "edgefleet-hub"
    db = ct.root / "var/lib/edgefleet-hub/hub.db"
    assert db.is_file()
    owner = ct.run("stat", "-c", "%U %a", "/var/lib/edgefleet-hub").split()
    assert owner == ["edgefleet-hub", "750"]
    # Exposure figures quoted in docs/security.md; fail if a change weakens the units.
    for unit, ceiling in (("edgefleet-hub.service", 1.5), ("edgefleet-agent.service", 6.0)):
        out = ct.run("systemd-analyze", "security", "--no-pager", unit, check=False)
        score = float(out.rsplit("exposure level for", 1)[1].split(":")[1].split()[0])
        assert score <= ceiling, f"{unit} exposure {score} > {ceiling}"
