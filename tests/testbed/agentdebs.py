"""Three agent packages for upgrade tests, built once per session: 0.1.0 and 0.2.0 by
packaging/build-deb (without the k3s extra, to keep builds and installs short), and a
BROKEN 0.3.0 (0.2.0 repacked with an agent entry point that exits 1), plus their
SHA-256s as a fleet repository pins them.
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


@dataclass(frozen=True)
class AgentDebs:
    dir: Path
    """Holds ``edgefleet_<version>_<arch>.deb`` for each version (what a server serves)."""
    v1: Path
    v2: Path
    broken: Path

    @staticmethod
    def sha256(deb: Path) -> str:
        return hashlib.sha256(deb.read_bytes()).hexdigest()


def repack_broken(deb: Path, version: str, out: Path) -> Path:
    """``deb`` as ``version`` with an agent that exits 1 at once."""
    work = out / f"repack-{version}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True)
    agent = work / "opt/edgefleet/venv/bin/edgefleet-agent"
    agent.write_text(BROKEN_AGENT)
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
    return AgentDebs(dir=out, v1=v1, v2=v2, broken=repack_broken(v2, "0.3.0", out))
