"""What an agent upgrade in flight leaves in ``state_dir/upgrade/`` for the next agent.

``record.json`` (written by the agent that starts it), ``healthy`` (by the new agent,
after its first synced reconcile), ``result`` (by the watchdog unit: ``ok`` or
``failed: <reason>``), ``previous`` (the version run before the last good upgrade).
New files only: an older agent, after a rollback, never reads them, and nothing in
state.json changes shape (docs/design.md, "Agent upgrades").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.atomic import write_atomic

MAX_ATTEMPTS = 3
"""Installs cut off (power loss) before the same package counts as failed."""


@dataclass
class UpgradeRecord:
    source: str
    """Version running when the upgrade started (kept for rollback)."""
    target: str
    sha256: str
    commit: str
    unit: str
    broker: bool
    """The broker was reachable before: the new agent must reach it to count healthy."""
    timeout: float
    """The pin's upgrade_timeout (a resumed watchdog needs it again)."""
    attempts: int = 1
    reported: bool = False
    """The result was reported (event) by an agent since."""


def _dir(state_dir: Path) -> Path:
    return state_dir / "upgrade"


def load(state_dir: Path) -> UpgradeRecord | None:
    try:
        doc = json.loads((_dir(state_dir) / "record.json").read_bytes())
        return UpgradeRecord(**doc)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        # Unreadable (written by another version?): forget it rather than block upgrades.
        return None


def save(state_dir: Path, record: UpgradeRecord) -> None:
    _dir(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps(asdict(record), indent=1, sort_keys=True).encode()
    write_atomic(_dir(state_dir) / "record.json", data, 0o600)


def _read_line(state_dir: Path, name: str) -> str | None:
    try:
        return (_dir(state_dir) / name).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_line(state_dir: Path, name: str, text: str) -> None:
    write_atomic(_dir(state_dir) / name, f"{text}\n".encode(), 0o600)


def result(state_dir: Path) -> str | None:
    """``ok``, ``failed: <reason>`` or None while the upgrade runs (or never ran)."""
    return _read_line(state_dir, "result")


def write_result(state_dir: Path, text: str) -> None:
    _write_line(state_dir, "result", text)


def clear_result(state_dir: Path) -> None:
    for name in ("result", "healthy"):
        (_dir(state_dir) / name).unlink(missing_ok=True)


def mark_healthy(state_dir: Path, version: str, pid: int) -> None:
    """The watchdog checks ``pid`` against the unit's MainPID: only the agent running now
    (not one restarted since) can vouch for itself."""
    _write_line(state_dir, "healthy", f"{pid} {version}")


def previous(state_dir: Path) -> str | None:
    """The version this node ran before the last successful upgrade (a stage rollback
    may go back to it without ``allow_downgrade``)."""
    return _read_line(state_dir, "previous")


def set_previous(state_dir: Path, version: str) -> None:
    _write_line(state_dir, "previous", version)
