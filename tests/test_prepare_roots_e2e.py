"""The packaged agent in a real systemd container: an allowed root under /etc that does not
exist yet, opened with a ``ReadWritePaths=-`` drop-in, must not fail the hardened unit
(226/NAMESPACE); its ExecStartPre= creates the root first, on every (re)start."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_systemd_e2e import install_package_files, journal
from tests.testbed.nspawn import NspawnContainer, container_at, require_nspawn

REPO = Path(__file__).resolve().parents[1]
MISSING_ROOT = "/etc/app"
LATER_ROOT = "/etc/app2/conf.d"

AGENT_TOML = f"""node = "roots-e2e"
[git]
url = "file:///srv/fleet.git"
paths = ["common"]
interval = 3600
[trust]
require_signed = false
[targets.files]
allowed_roots = ["{MISSING_ROOT}"]
"""


def start_and_expect_running(ct: NspawnContainer, verb: str) -> None:
    # Type=notify: (re)start returns once the agent said READY=1 (no Git needed for that).
    ct.run("systemctl", verb, "edgefleet-agent.service", check=False)
    props = ct.show("edgefleet-agent.service", "ActiveState", "SubState")
    assert props == {"ActiveState": "active", "SubState": "running"}, journal(ct)


def test_unit_starts_and_creates_the_missing_allowed_root(
    tmp_path: Path, edgefleet_deb: Path
) -> None:
    require_nspawn()
    with container_at(tmp_path / "ct") as ct:
        assert not (ct.root / MISSING_ROOT.lstrip("/")).exists()
        etc = ct.root / "etc/edgefleet"
        etc.mkdir(parents=True)
        (etc / "agent.toml").write_text(AGENT_TOML)
        install_package_files(ct.root, edgefleet_deb)
        shutil.copy(REPO / "systemd/edgefleet-agent.service", ct.unit_dir)
        dropins = ct.unit_dir / "edgefleet-agent.service.d"
        dropins.mkdir()
        (dropins / "roots.conf").write_text(f"[Service]\nReadWritePaths=-{MISSING_ROOT}\n")
        ct.run("systemctl", "daemon-reload")

        start_and_expect_running(ct, "start")
        assert ct.run("stat", "-c", "%F %a %U:%G", MISSING_ROOT) == "directory 755 root:root\n"
        # Inside the sandbox the new root is writable although /etc is read-only there.
        pid = ct.show("edgefleet-agent.service", "MainPID")["MainPID"]
        ct.run("nsenter", "-t", pid, "-m", "touch", f"{MISSING_ROOT}/probe")
        assert "Read-only" in ct.run(
            "nsenter", "-t", pid, "-m", "sh", "-c", "touch /etc/probe 2>&1 || true"
        )

        # A root added later: a restart creates it too.
        both = f'["{MISSING_ROOT}", "{LATER_ROOT}"]'
        (etc / "agent.toml").write_text(AGENT_TOML.replace(f'["{MISSING_ROOT}"]', both))
        (dropins / "later.conf").write_text(f"[Service]\nReadWritePaths=-{LATER_ROOT}\n")
        ct.run("systemctl", "daemon-reload")
        start_and_expect_running(ct, "restart")
        assert ct.run("stat", "-c", "%F %a", LATER_ROOT) == "directory 755\n"
