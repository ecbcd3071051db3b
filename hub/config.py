"""Hub configuration: fleet.toml loaded once into frozen dataclasses.

Every problem becomes one :class:`ConfigError` naming the file, the key and what is
wrong (the CLI exits 2). Unknown keys are errors: a typo in a gate must not silently
fall back to a default and promote a broken commit. Relative paths are resolved
against the directory of fleet.toml, so an example fleet can live in one directory.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.durations import DAY, HOUR
from common.tomlconf import MqttEndpoint, MqttProtocol, Section, load_toml, mqtt_connection
from common.windowconf import read_window
from common.windows import Schedule, parse_schedule
from hub.errors import ConfigError
from hub.notify.config import Sink, parse_sinks
from hub.users import User, parse_users
from hub.waveconf import Wave, parse_waves

DEFAULT_CONFIG_PATH = Path("/etc/edgefleet/fleet.toml")


_GIT_SCHEMES = ("file", "git", "http", "https", "ssh")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
YEAR = 365 * DAY
MQTT_SESSION_EXPIRY_MAX = 2**32 - 1
"""Seconds; MQTT 5 carries the session expiry interval in 32 bits."""
MAX_NODES = 1_000_000


@dataclass(frozen=True)
class HubSettings:
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    """Address of the HTTP API and dashboard ("host:port")."""
    database: Path = Path("/var/lib/edgefleet-hub/hub.db")
    token_file: Path | None = None
    """Bearer token of the user ``admin``; with no ``[[users]]`` either, mutating calls
    are refused (403)."""
    heartbeat: float = 30.0
    """Seconds between agent status re-publications (the status doc may say more)."""
    stale_after: float = 90.0
    """Seconds of silence after which a node is stale (default 3 x heartbeat); a node
    whose own heartbeat is longer gets 3 x its heartbeat."""
    events_max_age: float = 30 * 86400.0
    """Seconds events are kept."""
    events_max: int = 1_000_000
    """Most events kept; the oldest are deleted beyond."""
    public_read: bool = True
    """False: reads (API, stream, metrics) need a token of any role, too."""
    public_url: str | None = None
    """The dashboard's address as people reach it, for links in notifications."""
    notify_interval: float = 10.0
    """Seconds between checks of node state counts for notifications; node events are
    sent once the counts held still for one interval (one message per burst)."""

    @property
    def api_url(self) -> str:
        host, port = self.listen
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class MqttSettings(MqttEndpoint):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    protocol: MqttProtocol = "auto"
    """auto tries MQTT 5 and falls back to 3.1.1 when the broker refuses it."""
    keepalive: int = 60
    client_id: str = field(default_factory=lambda: f"edgefleet-hub-{socket.gethostname()}")
    """Stable id: the broker keeps this hub's persistent session (queued QoS1) under it."""
    shared: bool = True
    """Subscribe as $share/edgefleet-hub/... so several hubs split the load. Brokers do
    not send retained messages to shared subscriptions: nodes appear at their next
    heartbeat after a hub starts with an empty database."""
    session_expiry: int = 7 * 86400
    """Seconds the broker keeps the hub's session (and queues messages) while it is down."""


@dataclass(frozen=True)
class GitSettings:
    url: str | None = None
    """Where the stage branches live; unset = no branch heads, no ref notifications."""
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    """known_hosts file for ssh:// URLs; host keys are always checked, unknown hosts refused."""
    token_file: Path | None = None
    """File holding an HTTP(S) token, sent as basic auth (read at each use, so it can rotate)."""
    ca_file: Path | None = None
    """PEM bundle to verify an https:// Git server with a private CA."""
    interval: float = 30.0
    """Seconds between ls-remote polls of the stage branches."""
    webhook_secret_file: Path | None = None
    """Shared secret of Git push webhooks (``POST /api/v1/hooks/git``), read at each
    delivery; unset = the endpoint answers 403."""
    timeout: float = 30.0
    """Seconds a connect or one read from the Git server may take (as the agent's): a hung
    server fails the poll or the promotion instead of holding the rollout lock."""


@dataclass(frozen=True)
class Gate:
    min_nodes: int = 1
    """Source-stage nodes that must run the candidate healthily."""
    min_ready_ratio: float = 1.0
    """Share (0..1) of the source stage's nodes that must run the candidate healthily."""
    max_failed: int = 0
    """Source-stage nodes allowed to have failed on the candidate."""
    soak: float = 600.0
    """Seconds the gate must hold continuously before promotion."""
    require_plan: bool = False
    """Plan an automatic promotion on the stage's nodes first; halt if any would refuse."""
    agent_version: str | None = None
    """A node counts as ready only when it also runs this agent version."""


@dataclass(frozen=True)
class Stage:
    name: str
    branch: str
    promote_from: str | None = None
    auto: bool = False
    gate: Gate = field(default_factory=Gate)
    window: Schedule | None = None
    """When automatic promotion may happen, read in the stage's ``timezone`` (default UTC)."""
    window_spec: tuple[str, ...] = ()
    """The window as written, for the API and messages."""
    auto_rollback: bool = False
    """When this stage's nodes fail on its head beyond ``gate.max_failed``, move the
    branch back to its previous promoted commit (besides halting the pipeline)."""
    waves: tuple[Wave, ...] = ()
    """``[[stages.waves]]``: a promotion moves these waves' refs one after the other,
    the stage branch last (:mod:`hub.waves`)."""


@dataclass(frozen=True)
class HubConfig:
    path: Path
    hub: HubSettings = field(default_factory=HubSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    git: GitSettings = field(default_factory=GitSettings)
    stages: tuple[Stage, ...] = ()
    users: tuple[User, ...] = ()
    notify: tuple[Sink, ...] = ()

    def stage_for_branch(self, branch: str | None) -> Stage | None:
        return next((s for s in self.stages if s.branch == branch), None)

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)


def _listen(sec: Section) -> tuple[str, int]:
    raw = sec.text("listen")
    if raw is None:
        return ("127.0.0.1", 8080)
    host, sep, port = raw.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise sec.err("listen", f"{raw!r} must look like 127.0.0.1:8080")
    return (host.strip("[]") or "0.0.0.0", int(port))


def _database(sec: Section) -> Path:
    raw = sec.data.get("database")
    if isinstance(raw, str) and "://" in raw:
        # Taken as a path, "postgresql://..." would silently become a SQLite file.
        raise sec.err(
            "database",
            f"{raw!r} is a URL; only SQLite is supported for now: give the database file's path",
        )
    return sec.path_value("database") or HubSettings.database


def _hub(root: Section) -> HubSettings:
    sec = root.table("hub")
    heartbeat = sec.duration("heartbeat", 30.0, minimum=0.1, maximum=DAY)
    cfg = HubSettings(
        listen=_listen(sec),
        database=_database(sec),
        token_file=sec.file("token_file"),
        heartbeat=heartbeat,
        stale_after=sec.duration("stale_after", 3 * heartbeat, minimum=0.1, maximum=7 * DAY),
        events_max_age=sec.duration("events_max_age", 30 * DAY, minimum=60.0, maximum=10 * YEAR),
        events_max=sec.integer("events_max", 1_000_000, minimum=100, maximum=1_000_000_000),
        public_read=sec.flag("public_read", True),
        public_url=_public_url(sec),
        notify_interval=sec.duration("notify_interval", 10.0, minimum=0.1, maximum=HOUR),
    )
    if cfg.stale_after < cfg.heartbeat:
        raise sec.err("stale_after", f"must be at least heartbeat ({cfg.heartbeat:g} s)")
    sec.done()
    return cfg


def _public_url(sec: Section) -> str | None:
    url = sec.text("public_url")
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or "#" in url):
        raise sec.err("public_url", f"must be an http(s) URL without a fragment, got {url!r}")
    return url.rstrip("/") if url else None


def _mqtt(root: Section) -> MqttSettings:
    sec = root.table("mqtt")
    keys = mqtt_connection(sec, MqttSettings.url)
    client_id = sec.text("client_id")
    if client_id:
        keys["client_id"] = client_id
    cfg = MqttSettings(
        **keys,
        shared=sec.flag("shared", True),
        session_expiry=round(
            sec.duration("session_expiry", 7 * DAY, maximum=MQTT_SESSION_EXPIRY_MAX)
        ),
    )
    if any(c in cfg.client_id for c in "/+#"):
        raise sec.err("client_id", "may not contain '/', '+' or '#'")
    sec.done()
    return cfg


def _git(root: Section) -> GitSettings:
    sec = root.table("git")
    url = sec.text("url")
    if url is not None:
        scheme = sec.url("url", url).scheme
        is_scp = scheme == "" and ":" in url and "@" in url.split(":", 1)[0]
        if scheme not in _GIT_SCHEMES and not is_scp:
            raise sec.err(
                "url", f"unsupported scheme {scheme or url!r}; use {', '.join(_GIT_SCHEMES)}"
            )
    cfg = GitSettings(
        url=url,
        ssh_key=sec.file("ssh_key"),
        known_hosts=sec.file("known_hosts"),
        token_file=sec.file("token_file"),
        ca_file=sec.file("ca_file"),
        interval=sec.duration("interval", 30.0, minimum=0.1, maximum=DAY),
        webhook_secret_file=sec.file("webhook_secret_file"),
        timeout=sec.duration("timeout", 30.0, minimum=1.0, maximum=HOUR),
    )
    if cfg.webhook_secret_file is not None and url is None:
        raise sec.err("webhook_secret_file", "needs url (the repository a push is read from)")
    sec.done()
    return cfg


def _stage(sec: Section) -> Stage:
    name = sec.text("name")
    if name is None or not _NAME_RE.match(name):
        raise sec.err("name", f"is required: lowercase letters, digits, '-' or '_'; got {name!r}")
    branch = sec.text("branch") or name
    if branch.startswith(("refs/", "/")) or ".." in branch or any(c in branch for c in " +#~^:"):
        raise sec.err("branch", f"{branch!r} is not a plain branch name")
    gsec = sec.table("gate")
    gate = Gate(
        # 0 would open the gate of a stage whose source has no nodes at all.
        min_nodes=gsec.integer("min_nodes", 1, minimum=1, maximum=MAX_NODES),
        min_ready_ratio=gsec.number("min_ready_ratio", 1.0, minimum=0.0, maximum=1.0),
        max_failed=gsec.integer("max_failed", 0, minimum=0, maximum=MAX_NODES),
        soak=gsec.duration("soak", 600.0, maximum=30 * DAY),
        require_plan=gsec.flag("require_plan", False),
        agent_version=gsec.text("agent_version"),
    )
    gsec.done()
    window_spec, timezone = read_window(sec, "UTC")
    stage = Stage(
        name=name,
        branch=branch,
        promote_from=sec.text("promote_from"),
        auto=sec.flag("auto", False),
        gate=gate,
        window=parse_schedule(window_spec, timezone) if window_spec else None,
        window_spec=window_spec,
        auto_rollback=sec.flag("auto_rollback", False),
        waves=parse_waves(sec),
    )
    if stage.auto and stage.promote_from is None:
        raise sec.err("auto", "needs promote_from (the stage to promote from)")
    if stage.waves and stage.promote_from is None:
        raise sec.err("waves", "need promote_from (waves split a promotion)")
    sec.done()
    return stage


def _stages(root: Section) -> tuple[Stage, ...]:
    sections = root.tables("stages")
    stages = tuple(_stage(s) for s in sections)
    names = [s.name for s in stages]
    for sec, stage in zip(sections, stages, strict=True):
        if names.count(stage.name) > 1:
            raise sec.err("name", f"stage {stage.name!r} is defined twice")
        if [s.branch for s in stages].count(stage.branch) > 1:
            raise sec.err("branch", f"branch {stage.branch!r} belongs to two stages")
        if stage.promote_from is not None and stage.promote_from not in names:
            raise sec.err("promote_from", f"no stage named {stage.promote_from!r}")
        if stage.promote_from == stage.name:
            raise sec.err("promote_from", "a stage cannot promote from itself")
    by_name = {s.name: s for s in stages}
    for sec, stage in zip(sections, stages, strict=True):
        seen, cur = {stage.name}, stage.promote_from
        while cur is not None:
            if cur in seen:
                raise sec.err("promote_from", f"promotion chain through {cur!r} is a cycle")
            seen.add(cur)
            cur = by_name[cur].promote_from
    for index, (sec, stage) in enumerate(zip(sections, stages, strict=True)):
        # Stages are listed in rollout order; this also keeps status output readable.
        if stage.promote_from is not None and names.index(stage.promote_from) > index:
            raise sec.err(
                "promote_from",
                f"stage {stage.promote_from!r} must be defined before {stage.name!r}",
            )
    return stages


def parse_config(data: Mapping[str, Any], path: Path) -> HubConfig:
    """Validate an already-parsed TOML document (exposed for tests of pure logic)."""
    root = Section(path, "", data, ConfigError, relative_paths=True)
    hub = _hub(root)
    stages = _stages(root)
    names = tuple(s.name for s in stages)
    cfg = HubConfig(
        path=path,
        hub=hub,
        mqtt=_mqtt(root),
        git=_git(root),
        stages=stages,
        users=parse_users(root, names, hub.token_file),
        notify=parse_sinks(root, names),
    )
    root.done()
    return cfg


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> HubConfig:
    """Read and validate fleet.toml; raises ConfigError on any problem."""
    return parse_config(load_toml(path, ConfigError), path.absolute())


def read_secret(path: Path) -> str:
    """First line of a secret file (token, password), read at use so it can rotate."""
    try:
        return path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as err:
        # Callers already report an unusable secret file as an OSError (missing, denied).
        raise OSError(errno.EINVAL, "not UTF-8 text", str(path)) from err
