"""packaging/install.sh, offline from a wheelhouse, inside a real systemd container.

Lifecycle: offline install without config (agent neither enabled nor started) ->
configure and re-run the default way (pip builds edgefleet from source, against a local
index standing in for PyPI): config kept, the agent enabled, started and reconciling a
file:// repo -> a failed pip (empty or incomplete wheelhouse) leaves that install running
untouched -> ``--uninstall --purge`` removes it all. The checkout and the wheelhouses
are bound read-only into the container, so the script cannot write into them either.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.nspawn import NspawnContainer, container_at, require_nspawn
from tests.testbed.wait import wait_until
from tests.testbed.wheelhouse import PIP, REPO

INSTALL = REPO / "packaging" / "install.sh"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV = "/opt/edgefleet/venv"
INSTALL_TIMEOUT = 300
AGENT_CONFIG = """\
node = "install-sh-node"
[git]
url = "file:///srv/ef-install/fleet.git"
branch = "stable"
paths = ["common"]
interval = 2
[trust]
require_signed = false
[targets.files]
allowed_roots = ["/srv/ef-demo"]
[health]
timeout = 10
settle = 0
"""


@dataclass
class InstallBed:
    ct: NspawnContainer
    wheelhouse: Path
    empty: Path
    """A wheelhouse with nothing in it: pip finds no edgefleet at all."""
    partial: Path
    """Only the edgefleet wheel: pip fails while resolving its dependencies."""

    index: Path
    """The wheelhouse plus setuptools: a local stand-in for PyPI (the container has no
    network), given to pip through its own environment (PIP_NO_INDEX, PIP_FIND_LINKS)."""

    def install(
        self, *args: str, wheelhouse: Path | None = None, env: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """install.sh as root in the container, with a clean environment as from a login."""
        env = ("env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", *env)
        if wheelhouse is not None:
            env = (*env, f"WHEELHOUSE={wheelhouse}")
        return subprocess.run(
            [*self.ct.nsenter, *env, str(INSTALL), *args],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )

    def unit(self, unit: str = "edgefleet-agent") -> tuple[str, str]:
        enabled = self.ct.run("systemctl", "is-enabled", unit, check=False).strip()
        active = self.ct.run("systemctl", "is-active", unit, check=False).strip()
        return enabled, active


@pytest.fixture(scope="module")
def bed(
    edgefleet_wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InstallBed]:
    require_nspawn()
    extra = tmp_path_factory.mktemp("wheelhouses")
    (extra / "empty").mkdir()
    (extra / "partial").mkdir()
    for wheel in edgefleet_wheelhouse.glob("edgefleet-*.whl"):
        shutil.copyfile(wheel, extra / "partial" / wheel.name)
    # The index gets everything but edgefleet: the default path builds it from source.
    index = extra / "index"
    shutil.copytree(edgefleet_wheelhouse, index, ignore=shutil.ignore_patterns("edgefleet-*"))
    download = [*PIP, "download", "--quiet", "--only-binary=:all:", "--dest", str(index)]
    subprocess.run([*download, "setuptools>=68"], check=True, timeout=300)
    binds = (REPO, edgefleet_wheelhouse, extra)
    with container_at(tmp_path_factory.mktemp("nspawn") / "ct", binds_ro=binds) as ct:
        yield InstallBed(ct, edgefleet_wheelhouse, extra / "empty", extra / "partial", index)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"install.sh exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def _pyc_source(ct: NspawnContainer, module: str) -> str:
    """The file name compiled into a module's cached .pyc (what tracebacks show)."""
    code = (
        f"import marshal, {module} as m\n"
        "with open(m.__cached__, 'rb') as f:\n"
        "    f.seek(16)\n"
        "    print(marshal.load(f).co_filename)\n"
    )
    return ct.run(f"{VENV}/bin/python", "-c", code).strip()


def test_bad_arguments_change_nothing(bed: InstallBed) -> None:
    for args, problem in (
        (("--bogus",), "unknown argument --bogus"),
        (("--purge",), "--purge only goes with --uninstall"),
        (("--wheelhouse", "/nonexistent"), "wheelhouse /nonexistent is not a directory"),
        (("--wheelhouse",), "usage: packaging/install.sh"),
    ):
        done = bed.install(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert problem in done.stderr, (args, done.stderr)
    assert not (bed.ct.root / "opt/edgefleet").exists()
    assert "--wheelhouse DIR" in _ok(bed.install("--help"))


@pytest.mark.timeout(600)
def test_offline_install_upgrade_failed_upgrade_uninstall(bed: InstallBed) -> None:
    ct, root = bed.ct, bed.ct.root

    # -- install without config: venv and units in place, nothing enabled or running ----
    out = _ok(bed.install("--wheelhouse", str(bed.wheelhouse)))
    assert "stays off until /etc/edgefleet/agent.toml exists" in out
    for prog in ("/usr/local/bin/edgefleet-agent", "/opt/edgefleet/bin/edgefleet-agent"):
        assert ct.run(prog, "--version").strip() == f"edgefleet-agent {__version__}"
    assert ct.run("edgefleet-hub", "--help").startswith("usage: edgefleet-hub")
    for unit in ("edgefleet-agent.service", "edgefleet-hub.service"):
        installed = root / "etc/systemd/system" / unit
        assert installed.read_bytes() == (REPO / "systemd" / unit).read_bytes()
    assert bed.unit("edgefleet-agent") == ("disabled", "inactive")
    assert bed.unit("edgefleet-hub") == ("disabled", "inactive")
    assert (root / "var/lib/edgefleet").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/edgefleet/agent.toml.example").is_file()
    assert ct.run("id", "-u", "edgefleet-hub").strip().isdigit()
    owner = ct.run("stat", "-c", "%U %G %a", "/run/edgefleet/inhibit").split()
    assert owner == ["root", "edgefleet-inhibit", "1770"]
    # The venv was built as venv.new and moved: nothing may still name the build path.
    assert not (root / "opt/edgefleet/venv.new").exists()
    venv = root / VENV.lstrip("/")
    for text_file in [venv / "pyvenv.cfg", *(venv / "bin").iterdir()]:
        if text_file.is_file() and not text_file.is_symlink():
            assert b"venv.new" not in text_file.read_bytes(), text_file
    assert (venv / "bin/edgefleet-agent").read_text().startswith(f"#!{VENV}/bin/python")
    assert _pyc_source(ct, "agent.cli").startswith(f"{VENV}/lib/")

    # -- configure and re-run (upgrade) the default way, pip building edgefleet from a
    # copy of the checkout: config kept, agent enabled, started and working ------------
    repo = FleetRepo(root / "srv/ef-install")
    sha = repo.commit({"common/files/srv/ef-demo/hello.txt": "installed by install.sh\n"})
    (root / "srv/ef-demo").mkdir(parents=True)
    config = root / "etc/edgefleet/agent.toml"
    config.write_text(AGENT_CONFIG)
    config.chmod(0o600)
    venv_inode = venv.stat().st_ino
    _ok(bed.install(env=("PIP_NO_INDEX=1", f"PIP_FIND_LINKS={bed.index}")))
    assert venv.stat().st_ino != venv_inode  # a fresh venv was swapped in
    assert _pyc_source(ct, "agent.cli").startswith(f"{VENV}/lib/")
    assert ct.run("find", "/tmp", "-maxdepth", "1", "-name", "tmp.*") == ""  # build copy gone
    assert config.read_text() == AGENT_CONFIG
    assert config.stat().st_mode & 0o777 == 0o600
    # Type=notify: the restart in install.sh returned only once the agent said READY=1.
    assert bed.unit("edgefleet-agent") == ("enabled", "active")
    assert bed.unit("edgefleet-hub") == ("disabled", "inactive")
    hello = root / "srv/ef-demo/hello.txt"
    try:
        wait_until(hello.exists, 60, f"{hello} placed by the agent")
        assert hello.read_text() == "installed by install.sh\n"
    except AssertionError:
        print(ct.run("journalctl", "-u", "edgefleet-agent", "--no-pager", check=False))
        raise
    state_file = root / "var/lib/edgefleet/state.json"
    deadline = time.monotonic() + 30
    while json.loads(state_file.read_text()).get("applied") != sha:
        assert time.monotonic() < deadline, state_file.read_text()
        time.sleep(0.1)

    # -- a failed pip leaves the running install exactly as it was ----------------------
    pid = ct.show("edgefleet-agent", "MainPID")["MainPID"]
    venv_inode = venv.stat().st_ino
    for broken in (bed.empty, bed.partial):
        done = bed.install(wheelhouse=broken)
        assert done.returncode != 0, done.stdout
        assert "No matching distribution found for" in done.stderr, done.stderr
        missing_edgefleet = f"found for edgefleet[k3s]=={__version__}" in done.stderr
        assert missing_edgefleet == (broken == bed.empty), done.stderr
        assert not (root / "opt/edgefleet/venv.new").exists()
        assert venv.stat().st_ino == venv_inode
        assert ct.run("edgefleet-agent", "--version").strip() == f"edgefleet-agent {__version__}"
        assert bed.unit("edgefleet-agent") == ("enabled", "active")
        assert ct.show("edgefleet-agent", "MainPID")["MainPID"] == pid
    assert config.read_text() == AGENT_CONFIG

    # -- uninstall --purge removes the venv, units, links, config and state -------------
    _ok(bed.install("--uninstall", "--purge"))
    assert ct.show("edgefleet-agent", "LoadState", "ActiveState") == {
        "LoadState": "not-found",
        "ActiveState": "inactive",
    }
    for gone in (
        "opt/edgefleet",
        "etc/systemd/system/edgefleet-agent.service",
        "etc/systemd/system/edgefleet-hub.service",
        "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service",
        "usr/local/bin/edgefleet-agent",
        "usr/local/bin/edgefleet-hub",
        "usr/lib/tmpfiles.d/edgefleet.conf",
        "etc/edgefleet",
        "var/lib/edgefleet",
    ):
        assert not os.path.lexists(root / gone), gone
