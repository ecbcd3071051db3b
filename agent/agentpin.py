"""The ``[agent]`` table of a path's edgefleet.toml: which agent version the node runs.

Parsed with the rest of the options (agent.desired); kept apart so the upgrade code
itself (agent.upgrade: downloads, dpkg, systemd-run) is loaded only when a pin names
another version than the running one. Older agents refuse a commit with this table
(unknown key), which is what keeps them from half-understanding it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.durations import DAY
from common.tomlconf import Section

DEFAULT_UPGRADE_TIMEOUT = 300.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Debian policy 5.6.12: [epoch:]upstream[-revision], digits first.
_VERSION = re.compile(r"(\d+:)?\d[A-Za-z0-9.+~-]*")


@dataclass(frozen=True)
class AgentPin:
    version: str
    package: str
    """URL of the .deb (http:// or https://). Not trusted: its bytes are checked."""
    sha256: str
    """Hex SHA-256 of the .deb; trusted, because the commit carrying it is signed."""
    allow_downgrade: bool = False
    upgrade_timeout: float = DEFAULT_UPGRADE_TIMEOUT
    """Seconds the new agent has to come up healthy before the previous one is reinstalled."""


def parse_pin(sec: Section) -> AgentPin:
    """The ``[agent]`` table; errors name the file, the key and the problem."""
    version = sec.text("version")
    if version is None or not _VERSION.fullmatch(version):
        raise sec.err("version", "must be a Debian version string such as '0.4.0'")
    package = sec.text("package")
    if package is None or not package.startswith(("http://", "https://")):
        raise sec.err("package", "must be the http:// or https:// URL of the .deb")
    sha256 = (sec.text("sha256") or "").lower()
    if not _SHA256.fullmatch(sha256):
        raise sec.err("sha256", "must be 64 hex digits (sha256sum of the .deb)")
    pin = AgentPin(
        version,
        package,
        sha256,
        allow_downgrade=sec.flag("allow_downgrade", False),
        upgrade_timeout=sec.duration(
            "upgrade_timeout", DEFAULT_UPGRADE_TIMEOUT, minimum=1.0, maximum=DAY
        ),
    )
    sec.done()
    return pin


def upgrade_pending(state_dir: Path) -> bool:
    """An upgrade was started and has no result yet (cheap: one stat at start-up)."""
    up = state_dir / "upgrade"
    return (up / "record.json").exists() and not (up / "result").exists()
