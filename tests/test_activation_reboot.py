"""A persistent update lock survives a reboot, a runtime one does not: the agent runs as
an enabled service inside a systemd container that is powered off and booted again on
the same disk (/run starts empty, /var/lib is kept)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.nspawn import NspawnContainer, container_at, reboot, require_nspawn
from tests.testbed.wait import wait_until

REPO = Path(__file__).resolve().parents[1]
APP_ROOT = "/etc/till-app"
CONFIG = "/etc/edgefleet/agent.toml"
UNIT = "ef-activation-agent.service"


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRepo:
    repo = FleetRepo(tmp_path / "git")
    repo.commit({f"common/files{APP_ROOT}/app.conf": "v1\n"})
    return repo


@pytest.fixture
def container(tmp_path: Path, fleet: FleetRepo) -> Iterator[NspawnContainer]:
    require_nspawn()
    with container_at(tmp_path / "ct", binds_ro=[fleet.bare]) as ct:
        yield ct


def agent_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "--config", CONFIG, *args]


def install_agent(ct: NspawnContainer, fleet: FleetRepo) -> None:
    (ct.root / "etc/edgefleet").mkdir(parents=True, exist_ok=True)
    (ct.root / APP_ROOT.lstrip("/")).mkdir(parents=True)
    (ct.root / CONFIG.lstrip("/")).write_text(
        f'node = "till-07"\nstate_dir = "/var/lib/edgefleet"\n'
        f'[git]\nurl = "{fleet.url}"\nbranch = "stable"\npaths = ["common"]\ninterval = 1\n'
        f'[trust]\nrequire_signed = false\n[targets.files]\nallowed_roots = ["{APP_ROOT}"]\n'
        "[activation]\npoll = 0.5\n"  # default lock dirs: /run/edgefleet/inhibit, /var/lib/...
    )
    (ct.unit_dir / UNIT).write_text(
        f"[Service]\nWorkingDirectory={REPO}\nExecStart={' '.join(agent_cli('run'))}\n"
        "[Install]\nWantedBy=edgefleet-test.target\n"  # the container's default target
    )


def journal(ct: NspawnContainer) -> str:
    return ct.run("journalctl", "-b", "-u", UNIT, "--no-pager", "-o", "cat", check=False)


def deferred_by(ct: NspawnContainer, message: str) -> bool:
    return f"reconcile: deferred {message}" in journal(ct)


def test_persistent_lock_survives_reboot(container: NspawnContainer, fleet: FleetRepo) -> None:
    ct = container
    install_agent(ct, fleet)
    ct.run(*agent_cli("inhibit", "--reason", "sale in progress", "--name", "till"))
    ct.run(*agent_cli("inhibit", "--reason", "vehicle moving", "--name", "drive", "--persistent"))
    ct.run("systemctl", "enable", "--now", UNIT)
    both = "locked: sale in progress (till); vehicle moving (drive)"
    wait_until(lambda: deferred_by(ct, both), 30, "deferred by both locks", 0.2,
               lambda: journal(ct))  # fmt: skip

    reboot(ct)  # the enabled agent starts again by itself
    assert "till.json" not in ct.run("ls", "-a", "/run/edgefleet/inhibit", check=False)
    wait_until(lambda: deferred_by(ct, "locked: vehicle moving (drive)"), 30,
               "deferred by the persistent lock after the reboot", 0.2,
               lambda: journal(ct))  # fmt: skip
    app_conf = ct.root / APP_ROOT.lstrip("/") / "app.conf"
    assert not app_conf.exists()

    ct.run(*agent_cli("inhibit", "--release", "--name", "drive"))
    wait_until(app_conf.exists, 30, "the apply after the release", 0.2,
               lambda: journal(ct))  # fmt: skip
    assert app_conf.read_text() == "v1\n"
