"""The ``[agent]`` table of a path's edgefleet.toml: which agent version the node runs.

Parsed with the rest of the options (agent.desired); kept apart so the upgrade code
itself (agent.upgrade, several MB of imports and subprocess work) is loaded only when a
pin names another version than the running one. Older agents refuse a commit with this
table (unknown key), which is what keeps them from half-understanding it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_UPGRADE_TIMEOUT = 300.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Debian policy 5.6.12: [epoch:]upstream[-revision], digits first.
_VERSION = re.compile(r"(\d+:)?\d[A-Za-z0-9.+~-]*")


class PinError(ValueError):
    """One problem of the [agent] table: ``key`` and ``problem``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


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


def parse_pin(raw: Any) -> AgentPin:
    """The ``[agent]`` table; :class:`PinError` names the key and the problem."""
    if not isinstance(raw, dict):
        raise PinError("agent", "must be a table")
    raw = dict(raw)
    version = raw.pop("version", None)
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise PinError("agent.version", "must be a Debian version string such as '0.4.0'")
    package = raw.pop("package", None)
    if not isinstance(package, str) or not package.startswith(("http://", "https://")):
        raise PinError("agent.package", "must be the http:// or https:// URL of the .deb")
    sha256 = raw.pop("sha256", None)
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
        raise PinError("agent.sha256", "must be 64 hex digits (sha256sum of the .deb)")
    allow = raw.pop("allow_downgrade", False)
    if not isinstance(allow, bool):
        raise PinError("agent.allow_downgrade", "must be true or false")
    timeout = raw.pop("upgrade_timeout", DEFAULT_UPGRADE_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise PinError("agent.upgrade_timeout", "must be a positive number of seconds")
    if raw:
        raise PinError(f"agent.{sorted(raw)[0]}", "unknown key")
    return AgentPin(version, package, sha256.lower(), allow, float(timeout))


def upgrade_pending(state_dir: Path) -> bool:
    """An upgrade was started and has no result yet (cheap: one stat at start-up)."""
    up = state_dir / "upgrade"
    return (up / "record.json").exists() and not (up / "result").exists()
