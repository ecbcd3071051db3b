"""``edgefleet-hub enroll`` against a real sshd inside a systemd container.

The container sits on its own network namespace, wired to a host bridge (10.231.x.0/24);
sshd listens only there. The broker runs on the host with the shipped ACL on a bridge
listener; enroll adds the node's user to its password file and SIGHUPs it. The fleet
repository lives inside the container's overlay at /srv/ef-enroll (file:// for the agent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.cli import build_parser
from hub.enroll import EnrollError, options, steps
from hub.recipients import PgDatabase, Selector, select
from tests.testbed.debpkg import deb_field
from tests.testbed.edgenet import EdgeNet
from tests.testbed.fleetrepo import FleetRepo, SigningKey
from tests.testbed.mosquitto import Mosquitto, free_port, wait_port
from tests.testbed.nspawn import NspawnContainer, container_at

ACL = Path(__file__).resolve().parents[1] / "packaging" / "mosquitto" / "edgefleet.acl"
NODE = "edge-enroll-1"
DEMO_ROOT = "/srv/ef-enroll-demo"

SSHD_CONFIG = """\
ListenAddress {ip}
Port 22
HostKey /etc/ef-test-sshd/host_ed25519
PidFile /run/ef-test-sshd.pid
AuthorizedKeysFile /etc/ef-test-sshd/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""

SSHD_UNIT = """\
[Service]
ExecStartPre=/bin/mkdir -p /run/sshd
ExecStart=/usr/sbin/sshd -D -e -f /etc/ef-test-sshd/sshd_config
"""


def _keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path


@dataclass
class Site:
    ct: NspawnContainer
    ip: str
    host_pub: str
    """The sshd's host public key line ("ssh-ed25519 AAAA...")."""
    client_key: Path
    broker: Mosquitto
    fleet_toml: Path
    signers: Path
    repo: FleetRepo
    key: SigningKey
    work: Path

    @property
    def passwd(self) -> Path:
        return self.broker.directory / "passwd"

    def args(self, *extra: str, known_hosts: Path, identity: Path | None = None) -> list[str]:
        return [
            "enroll",
            f"root@{self.ip}",
            "--stage",
            "canary",
            "--path",
            "common",
            "--node",
            NODE,
            "--config",
            str(self.fleet_toml),
            "--identity",
            str(identity or self.client_key),
            "--known-hosts",
            str(known_hosts),
            "--allowed-signers",
            str(self.signers),
            "--mqtt-passwd-file",
            str(self.passwd),
            "--allowed-root",
            DEMO_ROOT,
            "--wait",
            "60",
            *extra,
        ]


def _boot_sshd(ct: NspawnContainer, ip: str, client_pub: str) -> str:
    d = ct.root / "etc/ef-test-sshd"
    d.mkdir(parents=True)
    host_pub = _keygen(d / "host_ed25519").with_suffix(".pub").read_text().split()
    (d / "authorized_keys").write_text(client_pub)
    (d / "sshd_config").write_text(SSHD_CONFIG.format(ip=ip))
    (ct.root / "etc/systemd/system/ef-test-sshd.service").write_text(SSHD_UNIT)
    # sshd without PAM refuses accounts whose password field is locked ('!').
    shadow = ct.root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    lines = ["root:*:" + ln.split(":", 2)[2] if ln.startswith("root:!") else ln for ln in lines]
    shadow.write_text("\n".join(lines) + "\n")
    ct.run("systemctl", "daemon-reload")
    ct.run("systemctl", "start", "ef-test-sshd")
    wait_port(22, host=ip)
    return " ".join(host_pub[:2])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, edgenet: EdgeNet) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("enroll")
    with container_at(work / "ct") as ct:
        ip = edgenet.attach(ct)
        client_key = _keygen(work / "client_ed25519")
        host_pub = _boot_sshd(ct, ip, client_key.with_suffix(".pub").read_text())
        port = free_port()
        broker = Mosquitto(
            work / "mosquitto",
            users={"hub": "hub-secret"},
            extra=(
                f"listener {port} {edgenet.host_ip}\nallow_anonymous false\n"
                f"password_file {work}/mosquitto/passwd\nacl_file {ACL}\n"
            ),
        )
        broker.start()
        try:
            (work / "hub-mqtt-password").write_text("hub-secret\n")
            repo = FleetRepo(ct.root / "srv/ef-enroll")
            key = SigningKey.create(work / "signing")
            fleet = work / "fleet.toml"
            fleet.write_text(
                f'[hub]\ndatabase = "{work}/hub.db"\n'
                f'[mqtt]\nurl = "mqtt://{edgenet.host_ip}:{port}"\nusername = "hub"\n'
                f'password_file = "{work}/hub-mqtt-password"\n'
                '[git]\nurl = "file:///srv/ef-enroll/fleet.git"\n'
                '[[stages]]\nname = "canary"\nbranch = "canary"\n'
            )
            yield Site(
                ct=ct,
                ip=ip,
                host_pub=host_pub,
                client_key=client_key,
                broker=broker,
                fleet_toml=fleet,
                signers=key.allowed_signers,
                repo=repo,
                key=key,
                work=work,
            )
        finally:
            broker.stop()


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


async def _enroll(argv: list[str]) -> int:
    return await steps.enroll(options.settings(_parse(argv)))


def _install_args(site: Site, deb: Path, *extra: str, known_hosts: Path) -> list[str]:
    """A full enrollment: the package, the broker to have reload its users, a label."""
    pid = site.broker.proc.pid if site.broker.proc else 0
    return site.args("--package", str(deb), "--broker-pid", str(pid),
                     "--label", 'site=Zürich "HQ"', *extra, known_hosts=known_hosts)  # fmt: skip


def _known_hosts(site: Site, tmp_path: Path, key: str | None = None) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(f"{site.ip} {key or site.host_pub}\n")
    return path


async def test_unknown_host_key_is_refused_without_accept_new(site: Site, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    with pytest.raises(EnrollError, match=r"host key of .* is unknown.*--accept-new"):
        await _enroll(site.args(known_hosts=known))
    assert not known.exists()


async def test_changed_host_key_is_refused_even_with_accept_new(site: Site, tmp_path: Path) -> None:
    other = _keygen(tmp_path / "other").with_suffix(".pub").read_text().split()
    known = _known_hosts(site, tmp_path, " ".join(other[:2]))
    before = known.read_text()
    with pytest.raises(EnrollError, match="does NOT match"):
        await _enroll(site.args("--accept-new", known_hosts=known))
    assert known.read_text() == before


async def test_wrong_key_is_an_authentication_error(site: Site, tmp_path: Path) -> None:
    wrong = _keygen(tmp_path / "wrong_ed25519")
    with pytest.raises(EnrollError, match=r"authentication failed for root@.* with key"):
        await _enroll(site.args(known_hosts=_known_hosts(site, tmp_path), identity=wrong))


async def test_unreachable_host(site: Site, tmp_path: Path, edgenet: EdgeNet) -> None:
    argv = site.args(known_hosts=_known_hosts(site, tmp_path))
    argv[1] = f"root@{edgenet.host_ip}"
    argv += ["--port", str(free_port())]  # nothing listens there
    with pytest.raises(EnrollError, match=r"cannot reach .*: Connection refused"):
        await _enroll(argv)


async def test_unsupported_os(site: Site, tmp_path: Path) -> None:
    os_release = site.ct.root / "etc/os-release"
    saved = os.readlink(os_release) if os_release.is_symlink() else None
    original = os_release.read_text()
    os_release.unlink()
    os_release.write_text('ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n')
    try:
        with pytest.raises(EnrollError, match=r"unsupported OS 'Alpine Linux v3\.20'"):
            await _enroll(site.args(known_hosts=_known_hosts(site, tmp_path)))
    finally:
        os_release.unlink()
        if saved is not None:
            os_release.symlink_to(saved)
        else:
            os_release.write_text(original)
    # Nothing was installed on the way.
    assert site.ct.run("dpkg-query", "-W", "edgefleet", check=False) == ""


async def test_config_the_agent_would_refuse_stops_before_anything_is_written(
    site: Site, tmp_path: Path
) -> None:
    argv = site.args("--label", "site=", known_hosts=_known_hosts(site, tmp_path))
    passwd_before = site.passwd.read_bytes() if site.passwd.exists() else None
    with pytest.raises(
        EnrollError, match=r"agent would refuse .*agent\.toml: labels\.site: must not be empty"
    ):
        await _enroll(argv)
    assert not (site.ct.root / "etc/edgefleet").exists()
    assert site.ct.run("dpkg-query", "-W", "edgefleet", check=False) == ""
    assert (site.passwd.read_bytes() if site.passwd.exists() else None) == passwd_before


@pytest.mark.timeout(300)
async def test_first_and_second_enrollment(
    site: Site, tmp_path: Path, edgefleet_deb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = site.ct
    sha = site.repo.commit(
        {f"common/files{DEMO_ROOT}/motd": "enrolled by the hub\n"}, branch="canary", sign=site.key
    )
    known = tmp_path / "known_hosts"
    argv = _install_args(site, edgefleet_deb, "--accept-new", known_hosts=known)

    # -- first enrollment: TOFU, install, credentials, config, start, first status ------
    assert await _enroll(argv) == 0
    out = capsys.readouterr().out
    version = deb_field(edgefleet_deb, "Version")
    assert "trusted on first use" in out
    assert "config       /etc/edgefleet/agent.toml accepted by the agent's config schema" in out
    assert f"edgefleet {version} installed" in out
    assert f"mqtt user    {NODE} set in" in out
    assert "agent        enabled, started" in out
    status = json.loads(out[out.index("{") :])
    assert status["node"] == NODE and status["state"] == "synced"
    assert status["applied"] == sha
    assert status["labels"] == {"site": 'Zürich "HQ"'}
    # The identity was made on the node; the hub recorded its recipient from the SSH session.
    assert (ct.root / "etc/edgefleet/age.key").stat().st_mode & 0o777 == 0o600
    assert f"age key      {status['recipient']} recorded in {site.work}/hub.db" in out
    enrolled = select(site.work / "hub.db", Selector(None, {"site": 'Zürich "HQ"'}, False))
    assert enrolled.recipients == [status["recipient"]]
    assert known.read_text() == f"{site.ip} {site.host_pub}\n"
    assert (ct.root / f"{DEMO_ROOT.lstrip('/')}/motd").read_text() == "enrolled by the hub\n"
    toml = ct.root / "etc/edgefleet/agent.toml"
    assert toml.stat().st_mode & 0o777 == 0o600
    text = toml.read_text()
    assert 'branch = "canary"' in text and f'username = "{NODE}"' in text
    assert [ln.split(":")[0] for ln in site.passwd.read_text().splitlines()].count(NODE) == 1
    passwd_before = site.passwd.read_bytes()
    toml_mtime = toml.stat().st_mtime_ns
    pid = ct.show("edgefleet-agent", "MainPID")["MainPID"]

    # -- second enrollment: same arguments, nothing changes, nothing restarts -----------
    argv.remove("--accept-new")
    assert await _enroll(argv) == 0
    out = capsys.readouterr().out
    assert f"edgefleet {version} already installed" in out
    assert f"mqtt user    {NODE} unchanged" in out
    assert f"age key      {status['recipient']} recorded" in out, "keygen kept the identity"
    assert "written" not in out
    assert "agent        already running, nothing changed" in out
    assert json.loads(out[out.index("{") :])["applied"] == sha
    assert site.passwd.read_bytes() == passwd_before
    assert toml.stat().st_mtime_ns == toml_mtime
    assert ct.show("edgefleet-agent", "MainPID")["MainPID"] == pid
    assert known.read_text() == f"{site.ip} {site.host_pub}\n"


@pytest.mark.timeout(300)
async def test_a_postgresql_hub_records_the_recipient_once_its_database_answers(
    site: Site,
    tmp_path: Path,
    edgefleet_deb: Path,
    pg_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``[hub] database`` a postgresql:// URL. Down, enroll stops after the agent runs its
    new configuration (a new label here) with one line saying so; once it answers, the
    same enrollment records the recipient there, selected on the new label."""
    argv = _install_args(site, edgefleet_deb, "--label", "db=pg",
                         known_hosts=_known_hosts(site, tmp_path))  # fmt: skip
    config = argv.index(str(site.fleet_toml))

    def on(url: str) -> None:
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(site.fleet_toml.read_text().replace(f"{site.work}/hub.db", url))
        argv[config] = str(fleet)

    down = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/hub"
    on(down)
    with pytest.raises(EnrollError) as err:
        await _enroll(argv)
    assert "age recipient age1" in str(err.value)
    assert "not recorded: cannot open database postgresql://postgres:***@127.0.0.1" in str(
        err.value
    )
    assert "enroll again once the database answers" in str(err.value)
    assert "hunter2" not in str(err.value)
    assert "agent        restarted with the new configuration" in capsys.readouterr().out

    on(pg_database)
    assert await _enroll(argv) == 0
    out = capsys.readouterr().out
    status = json.loads(out[out.index("{") :])
    assert status["labels"] == {"site": 'Zürich "HQ"', "db": "pg"}, "restarted by the first run"
    assert f"age key      {status['recipient']} recorded in {pg_database}" in out
    want = Selector("canary", {"db": "pg"}, False)
    enrolled = await asyncio.to_thread(select, PgDatabase(pg_database), want)
    assert enrolled.recipients == [status["recipient"]]
