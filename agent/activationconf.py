"""The agent's ``[activation]`` table: update locks, maintenance window, free-space floor.

Kept apart from agent.config (which only calls :func:`parse_activation`) so the activation
gate can import it without importing the whole config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.tomlconf import Section
from common.windowconf import read_window

MIB = 1024 * 1024
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclass(frozen=True)
class ActivationConfig:
    inhibit_dir: Path = Path("/run/edgefleet/inhibit")
    """Update locks local apps drop (gone at reboot: /run is a tmpfs)."""
    persistent_inhibit_dir: Path = Path("/var/lib/edgefleet-inhibit")
    """Update locks that survive a reboot; outside state_dir so local apps may write it."""
    max_ttl: float = 86400.0
    """Seconds any lock holds at most, counted from its file's mtime (a forgotten lock,
    or one without an expiry, must not stop updates forever)."""
    window: tuple[str, ...] = ()
    """Maintenance windows (common.windows syntax); empty = any time."""
    timezone: str | None = None
    """IANA zone the window is read in; None = the host's /etc/localtime."""
    pin: bool = False
    """True: the fleet repository's [activation] window/timezone do not override these."""
    min_free: int = 64 * MIB
    """Bytes that must stay free on state_dir and the files roots before an apply."""
    respect_override: bool = True
    """False: refuse the hub's ``sync --override`` (the refusal is reported in an event)."""
    poll: float = 5.0
    """Seconds between looks at the lock dirs and the window while an update is deferred."""


def parse_size(text: str) -> int | None:
    """``"500MB"``, ``"64 MiB"``, ``"1G"`` -> bytes (K, M, G, T are powers of 1024)."""
    m = _SIZE_RE.match(text.strip())
    if m is None:
        return None
    return int(float(m[1]) * _UNITS[m[2].lower()[:1]])


def _min_free(sec: Section) -> int:
    raw = sec.data.get("min_free")
    if isinstance(raw, str):
        size = parse_size(sec.text("min_free") or "")
        if size is None:
            raise sec.err("min_free", f"{raw!r} must be bytes or a size like '500MB' or '1GiB'")
        return size
    return sec.integer("min_free", ActivationConfig.min_free, minimum=0)


def parse_activation(root: Section) -> ActivationConfig:
    sec = root.table("activation")
    window, timezone = read_window(sec, None)
    cfg = ActivationConfig(
        inhibit_dir=sec.dir("inhibit_dir", ActivationConfig.inhibit_dir),
        persistent_inhibit_dir=sec.dir(
            "persistent_inhibit_dir", ActivationConfig.persistent_inhibit_dir
        ),
        max_ttl=sec.duration("max_ttl", ActivationConfig.max_ttl, minimum=1.0),
        window=window,
        timezone=timezone,
        pin=sec.flag("pin", False),
        min_free=_min_free(sec),
        respect_override=sec.flag("respect_override", True),
        poll=sec.duration("poll", ActivationConfig.poll, minimum=0.5, maximum=3600.0),
    )
    if cfg.inhibit_dir == cfg.persistent_inhibit_dir:
        raise sec.err("persistent_inhibit_dir", "must differ from inhibit_dir")
    sec.done()
    return cfg
