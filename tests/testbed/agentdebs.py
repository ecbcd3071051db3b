"""Agent packages for upgrade tests, built once per session: 0.1.0 and 0.2.0 by
packaging/build-deb (without the k3s extra, to keep builds and installs short), and two
bad ones made by repacking 0.2.0 with another agent entry point: a BROKEN 0.3.0 that
exits 1 (its postinst's restart fails, so does ``dpkg -i``) and a HUNG 0.4.0 that tells
systemd it is ready and then does nothing (installs fine, never becomes healthy).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.debpkg import build_deb

BROKEN_AGENT = "#!/bin/sh\necho 'edgefleet-agent: this build is broken on purpose' >&2\nexit 1\n"
HUNG_AGENT = """#!/bin/sh
# The unit's ExecStartPre= (prepare-roots) must pass; only the service itself hangs.
case " $* " in *" prepare-roots "*) exit 0 ;; esac
exec /usr/bin/python3 -c '
import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"READY=1", "\\0" + addr[1:] if addr.startswith("@") else addr)
time.sleep(3600)
'
"""


@dataclass(frozen=True)
class AgentDebs:
    dir: Path
    """Holds ``edgefleet_<version>_<arch>.deb`` for each version (what a server serves)."""
    v1: Path
    v2: Path
    broken: Path
    hung: Path

    @staticmethod
    def sha256(deb: Path) -> str:
        return hashlib.sha256(deb.read_bytes()).hexdigest()


def repack(deb: Path, version: str, out: Path, agent_script: str) -> Path:
    """``deb`` as ``version`` with ``agent_script`` as the agent's entry point."""
    work = out / f"repack-{version}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True)
    agent = work / "opt/edgefleet/venv/bin/edgefleet-agent"
    agent.write_text(agent_script)
    control = work / "DEBIAN/control"
    lines = control.read_text().splitlines()
    control.write_text(
        "\n".join(f"Version: {version}" if x.startswith("Version:") else x for x in lines) + "\n"
    )
    arch = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dest = out / f"edgefleet_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(work), str(dest)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(work)
    return dest


@pytest.fixture(scope="session")
def agent_debs(tmp_path_factory: pytest.TempPathFactory) -> AgentDebs:
    out = tmp_path_factory.mktemp("agent-debs")
    v1 = build_deb(out, "0.1.0", extras="")
    v2 = build_deb(out, "0.2.0", extras="")
    broken = repack(v2, "0.3.0", out, BROKEN_AGENT)
    return AgentDebs(out, v1, v2, broken, hung=repack(v2, "0.4.0", out, HUNG_AGENT))
