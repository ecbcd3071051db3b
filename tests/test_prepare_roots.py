"""`edgefleet-agent prepare-roots`: missing allowed roots created 0755 before the unit's
sandbox needs them, never through a symlink or over a file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.roots import prepare_roots

CONFIG = """
node = "pi-01"
[git]
url = "file:///srv/fleet.git"
paths = ["common"]
[trust]
require_signed = false
[targets.files]
allowed_roots = {roots}
"""


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.mark.usefixtures("strict_umask")
def test_missing_roots_and_parents_are_created_0755(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    roots = [tmp_path / "etc/app", tmp_path / "srv/app/data", tmp_path / "etc"]
    created = prepare_roots(tmp_path / "agent.toml", roots)
    assert created == [tmp_path / "etc/app", tmp_path / "srv", tmp_path / "srv/app",
                       tmp_path / "srv/app/data"]  # fmt: skip
    for path in created:
        st = path.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
        assert st.st_uid == os.geteuid()
    assert prepare_roots(tmp_path / "agent.toml", roots) == []  # idempotent


def test_symlink_or_file_on_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "file").write_text("")
    for root, problem in [
        (tmp_path / "link/app", f"{tmp_path / 'link'} is a symlink"),
        (tmp_path / "link", f"{tmp_path / 'link'} is a symlink"),
        (tmp_path / "file/app", f"{tmp_path / 'file'} exists and is not a directory"),
    ]:
        with pytest.raises(ConfigError) as info:
            prepare_roots(tmp_path / "agent.toml", [root])
        assert info.value.key == "targets.files.allowed_roots"
        assert f"cannot prepare {root}: {problem}" in str(info.value)
    assert list((tmp_path / "outside").iterdir()) == []


def _cli(tmp_path: Path, roots: list[Path]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG.format(roots=[str(r) for r in roots]).replace("'", '"'))
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "prepare-roots", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_creates_and_reports(tmp_path: Path) -> None:
    done = _cli(tmp_path, [tmp_path / "etc/app"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"created {tmp_path / 'etc'}",
                                        f"created {tmp_path / 'etc/app'}"]  # fmt: skip
    assert (tmp_path / "etc/app").is_dir()


def test_cli_exits_2_on_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("")
    done = _cli(tmp_path, [tmp_path / "etc/app"])
    assert done.returncode == 2
    assert "targets.files.allowed_roots: cannot prepare" in done.stderr
    assert "Traceback" not in done.stderr
