"""The edgefleet .deb built by packaging/build-deb, once per test session.

``build_deb(out, version)`` runs the real build script (a private venv with this
machine's python3, pip from the configured index). ``edgefleet_deb`` caches the default
build for the session; tests that need a second version (upgrade) build it themselves.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "packaging" / "build-deb"
BUILD_TIMEOUT = 600


def build_deb(out: Path, version: str | None = None, extras: str | None = None) -> Path:
    env = dict(os.environ)
    if version is not None:
        env["EDGEFLEET_VERSION"] = version
    if extras is not None:
        env["EDGEFLEET_EXTRAS"] = extras
    done = subprocess.run(
        [str(BUILD_DEB), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"build-deb exited {done.returncode}:\n{done.stderr[-4000:]}")
    deb = Path(done.stdout.strip().splitlines()[-1])
    assert deb.is_file(), done.stdout
    return deb


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def edgefleet_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(tmp_path_factory.mktemp("dist"))
