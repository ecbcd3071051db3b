"""``[secrets]`` in agent.toml: where this node's age identity lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.tomlconf import Section

DEFAULT_IDENTITY = Path("/etc/edgefleet/age.key")


@dataclass(frozen=True)
class SecretsConfig:
    identity: Path = DEFAULT_IDENTITY
    """age identity file (``AGE-SECRET-KEY-1...`` lines, as age-keygen writes); created by
    ``edgefleet-agent keygen``. A missing file only matters once a commit holds secrets."""


def parse_secrets(root: Section) -> SecretsConfig:
    sec = root.table("secrets")
    raw = sec.text("identity")
    identity = Path(raw) if raw else DEFAULT_IDENTITY
    if not identity.is_absolute():
        raise sec.err("identity", f"{raw!r} must be an absolute path")
    sec.done()
    return SecretsConfig(identity=identity)
