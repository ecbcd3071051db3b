"""`pip install edgefleet` without the [k3s] extra, k3s target enabled: exit 2 naming the key
and the fix, never a ModuleNotFoundError traceback at the first apply.

The agent runs in a real, empty venv (no system site-packages) that sees only this
repository, so kubernetes_asyncio is truly absent; loading the config needs no other
third-party package."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.testbed.hubproc import REPO_ROOT

CONFIG = """
node = "pi-01"
state_dir = "{state}"
[git]
url = "file:///srv/fleet.git"
paths = ["common"]
[trust]
require_signed = false
[targets.k3s]
enabled = {enabled}
"""


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("no-k3s-extra") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert purelib != sysconfig.get_paths()["purelib"]
    (Path(purelib) / "edgefleet.pth").write_text(f"{REPO_ROOT}\n")
    missing = subprocess.run([str(python), "-c", "import kubernetes_asyncio"], check=False)
    assert missing.returncode != 0, "the test venv must not have kubernetes_asyncio"
    return python


def _agent(
    python: Path, tmp_path: Path, enabled: str, command: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state", enabled=enabled))
    return subprocess.run(
        [str(python), "-m", "agent.cli", "--config", str(config), command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["run", "status"])
def test_k3s_enabled_without_the_extra_is_a_config_error(
    bare_python: Path, tmp_path: Path, command: str
) -> None:
    done = _agent(bare_python, tmp_path, "true", command)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{tmp_path / 'agent.toml'}: targets.k3s.enabled:" in done.stderr
    assert "pip install 'edgefleet[k3s]'" in done.stderr


def test_k3s_disabled_needs_no_extra(bare_python: Path, tmp_path: Path) -> None:
    done = _agent(bare_python, tmp_path, "false", "status")
    assert done.returncode == 0, done.stderr
    assert "node       pi-01" in done.stdout
