"""Desired state of a node: the ordered overlay of its repository paths at one commit.

Built by agent.source straight from Git trees (no checkout). A later path overrides an
earlier one file by file. Each path may carry an ``edgefleet.toml`` with options; they
are merged in path order (later wins per unit, health checks accumulate).
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.agentpin import AgentPin, parse_pin
from agent.config import HEALTH_TIMEOUT_MAX
from agent.errors import SourceError
from agent.render.requires import check_requires
from common.durations import HOUR
from common.tomlconf import Section, shown
from common.windows import WindowError, parse_window, zone

OPTIONS_FILE = "edgefleet.toml"
GIT_MODE_SYMLINK = 0o120000
GIT_MODE_EXEC = 0o100755
GIT_MODE_SUBMODULE = 0o160000


@dataclass(frozen=True)
class DesiredFile:
    path: str
    """Path relative to the repository path, e.g. ``files/etc/app/app.conf``."""
    data: bytes
    git_mode: int
    origin: str
    """The repository path this file came from (for messages)."""
    secret: bool = False
    """Decrypted or rendered from secrets (agent.render): placed 0600, digest keyed."""

    def __post_init__(self) -> None:
        # Names come from Git as bytes (decoded with surrogateescape): a name that is not
        # UTF-8 or holds a newline or escape would be placed, logged and reported garbled.
        raw = self.path.encode("utf-8", "surrogateescape")
        problem = None
        if any(unicodedata.category(c) == "Cc" for c in self.path):
            problem = "contains a control character"
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            problem = "is not valid UTF-8"
        if problem is not None:
            raise SourceError(f"{self.origin}/{str(raw)[2:-1]}: file name {problem}")

    @property
    def mode(self) -> int:
        """Permission bits to give the placed file."""
        if self.secret:
            return 0o700 if self.git_mode == GIT_MODE_EXEC else 0o600
        return 0o755 if self.git_mode == GIT_MODE_EXEC else 0o644


@dataclass(frozen=True)
class UnitOptions:
    state: str = "started"
    """started | stopped."""
    enable: bool | None = None
    """None = enable when the unit has an [Install] section."""
    restart_on: tuple[str, ...] = ()
    """Host path globs; a change to a matching managed file restarts the unit."""
    reload_on: tuple[str, ...] = ()
    """Host path globs; a change to a matching managed file reloads the unit."""


@dataclass(frozen=True)
class HttpCheck:
    url: str
    status: int = 200
    timeout: float = 5.0


@dataclass(frozen=True)
class ActivationOptions:
    """``[activation]`` of edgefleet.toml: the fleet repo's say on when nodes apply; it
    wins over agent.toml unless that sets ``pin = true``."""

    window: tuple[str, ...] | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class Options:
    units: Mapping[str, UnitOptions] = field(default_factory=dict)
    http_checks: tuple[HttpCheck, ...] = ()
    health_timeout: float | None = None
    """Overrides [health] timeout of the agent config for this commit."""
    activation: ActivationOptions = field(default_factory=ActivationOptions)
    agent: AgentPin | None = None
    """``[agent]``: the agent version this commit wants on the node (later path wins)."""


@dataclass(frozen=True)
class DesiredState:
    commit: str
    paths: tuple[str, ...]
    files: Mapping[str, DesiredFile]
    options: Options = field(default_factory=Options)

    def under(self, prefix: str) -> dict[str, DesiredFile]:
        """Files below a top-level directory (``files/``, ``systemd/``, ``manifests/``)."""
        prefix = prefix.rstrip("/") + "/"
        return {p[len(prefix) :]: f for p, f in self.files.items() if p.startswith(prefix)}


def _error(file: str, key: str, problem: str) -> SourceError:
    return SourceError(f"{file}: {key}: {problem}")


def _err(origin: str, key: str, problem: str) -> SourceError:
    return _error(f"{origin}/{OPTIONS_FILE}", key, problem)


def _str_list(origin: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _err(origin, key, "must be a list of non-empty strings")
    return tuple(value)


def _unit(origin: str, name: str, raw: Any) -> UnitOptions:
    key = f"units.{name!r}"
    if not isinstance(raw, dict):
        raise _err(origin, key, "must be a table")
    raw = dict(raw)
    state = raw.pop("state", "started")
    if state not in ("started", "stopped"):
        raise _err(origin, f"{key}.state", f"must be 'started' or 'stopped', got {shown(state)}")
    enable = raw.pop("enable", None)
    if enable is not None and not isinstance(enable, bool):
        raise _err(origin, f"{key}.enable", "must be true or false")
    opts = UnitOptions(
        state=state,
        enable=enable,
        restart_on=_str_list(origin, f"{key}.restart_on", raw.pop("restart_on", [])),
        reload_on=_str_list(origin, f"{key}.reload_on", raw.pop("reload_on", [])),
    )
    if raw:
        raise _err(origin, f"{key}.{sorted(raw)[0]}", "unknown key")
    return opts


def _http(sec: Section) -> HttpCheck:
    url = sec.text("url")
    if url is None or not url.startswith(("http://", "https://")):
        raise sec.err("url", "must be an http:// or https:// URL")
    check = HttpCheck(
        url=url,
        status=sec.integer("status", 200, minimum=100, maximum=599),
        # Bounded: a huge timeout overflows the HTTP client's timer.
        timeout=sec.duration("timeout", 5.0, minimum=0.001, maximum=HOUR),
    )
    sec.done()
    return check


def _activation(origin: str, raw: Any) -> ActivationOptions:
    if not isinstance(raw, dict):
        raise _err(origin, "activation", "must be a table")
    raw = dict(raw)
    window = raw.pop("window", None)
    if isinstance(window, str):
        window = [window]
    windows = None if window is None else _str_list(origin, "activation.window", window)
    timezone = raw.pop("timezone", None)
    try:
        for spec in windows or ():
            parse_window(spec)
    except WindowError as err:
        raise _err(origin, "activation.window", str(err)) from err
    if timezone is not None:
        if not isinstance(timezone, str):
            raise _err(origin, "activation.timezone", "must be a string")
        try:
            zone(timezone)
        except WindowError as err:
            raise _err(origin, "activation.timezone", str(err)) from err
    if raw:
        raise _err(origin, f"activation.{sorted(raw)[0]}", "unknown key")
    return ActivationOptions(window=windows, timezone=timezone)


def parse_options(origin: str, raw: bytes) -> Options:
    """Parse one path's edgefleet.toml; SourceError names path, key and problem."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    # ValueError: UnicodeDecodeError, TOMLDecodeError, an integer of over 4300 digits
    except ValueError as err:
        raise _err(origin, "(syntax)", f"invalid TOML: {err}") from err
    except RecursionError as err:  # tomllib recurses per nesting level
        raise _err(origin, "(syntax)", "nested too deeply") from err
    units_raw = data.pop("units", {})
    if not isinstance(units_raw, dict):
        raise _err(origin, "units", "must be a table of unit names")
    units = {name: _unit(origin, name, value) for name, value in units_raw.items()}
    root = Section(Path(origin) / OPTIONS_FILE, "", data, _error)
    health = root.table("health")
    checks = tuple(_http(sec) for sec in health.tables("http"))
    timeout = (
        health.duration("timeout", 0.0, maximum=HEALTH_TIMEOUT_MAX)
        if "timeout" in health.data
        else None
    )
    health.done()
    activation = _activation(origin, root.data.pop("activation", {}))
    check_requires(origin, root.data.pop("requires", None))
    agent = parse_pin(root.table("agent")) if "agent" in root.data else None
    root.done()
    return Options(
        units=units,
        http_checks=checks,
        health_timeout=timeout,
        activation=activation,
        agent=agent,
    )


def merge_options(layers: list[Options]) -> Options:
    """Overlay options in path order: later wins per unit, for timeouts and activation
    keys; checks add up."""
    units: dict[str, UnitOptions] = {}
    checks: list[HttpCheck] = []
    timeout: float | None = None
    window: tuple[str, ...] | None = None
    tz: str | None = None
    agent: AgentPin | None = None
    for layer in layers:
        units.update(layer.units)
        checks.extend(layer.http_checks)
        if layer.health_timeout is not None:
            timeout = layer.health_timeout
        window = layer.activation.window if layer.activation.window is not None else window
        tz = layer.activation.timezone or tz
        agent = layer.agent or agent
    return Options(
        units=units,
        http_checks=tuple(checks),
        health_timeout=timeout,
        activation=ActivationOptions(window=window, timezone=tz),
        agent=agent,
    )
