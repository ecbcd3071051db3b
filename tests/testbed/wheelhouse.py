"""A wheelhouse for offline installs (``packaging/install.sh --wheelhouse DIR``).

``build_wheelhouse(out)`` runs what the operator guide tells operators to run on a
machine with network: ``pip wheel --wheel-dir DIR '.[k3s]'``, with this interpreter (the
same Python version and architecture as the test containers, which are overlays of this
machine's root). It builds from a copy of the checkout so nothing is written into it.
``edgefleet_wheelhouse`` caches one for the test session.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "agent", "common", "hub")
BUILD_TIMEOUT = 600
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check")


def build_wheelhouse(out: Path, extras: str = "k3s") -> Path:
    src = out.parent / f"{out.name}-src"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, src / name)
    done = subprocess.run(
        [*PIP, "wheel", "--quiet", "--wheel-dir", str(out), f"{src}[{extras}]"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    shutil.rmtree(src)
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel exited {done.returncode}:\n{done.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def edgefleet_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
