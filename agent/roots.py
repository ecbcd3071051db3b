"""Create the allowed roots that do not exist yet, before the hardened unit's sandbox.

The unit opens each allowed root with ``ReadWritePaths=``; systemd fails the whole unit
(226/NAMESPACE) when such a directory is missing. ``edgefleet-agent prepare-roots`` runs
as ``ExecStartPre=+`` (outside the sandbox) and creates them: 0755, owned by the caller
(root), and only below real directories, never through a symlink.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from agent.errors import ConfigError

ROOT_MODE = 0o755
ROOTS_KEY = "targets.files.allowed_roots"


def prepare_roots(config_path: Path, roots: Iterable[Path]) -> list[Path]:
    """Create every missing directory on the way to each root; returns those created.

    Each existing part of a root's path must be a directory, not a symlink: a link placed
    there could aim the agent's writes anywhere.
    """
    created: list[Path] = []
    for root in roots:
        for part in (*reversed(root.parents), root):
            created.extend(_ensure_dir(config_path, root, part))
    return created


def _ensure_dir(config_path: Path, root: Path, part: Path) -> list[Path]:
    def refuse(problem: str) -> ConfigError:
        return ConfigError(str(config_path), ROOTS_KEY, f"cannot prepare {root}: {problem}")

    try:
        mode = os.lstat(part).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise refuse(f"{part}: {err.strerror}") from err
    if mode is not None:
        if stat.S_ISLNK(mode):
            raise refuse(f"{part} is a symlink")
        if not stat.S_ISDIR(mode):
            raise refuse(f"{part} exists and is not a directory")
        return []
    try:
        # mkdir never follows a symlink raced into place: it fails with EEXIST.
        os.mkdir(part, ROOT_MODE)
        os.chmod(part, ROOT_MODE, follow_symlinks=False)  # mkdir's mode is masked by umask
    except OSError as err:
        raise refuse(f"cannot create {part}: {err.strerror}") from err
    return [part]
