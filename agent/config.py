"""Agent configuration: ``/etc/edgefleet/agent.toml`` loaded once into frozen dataclasses.

Every problem becomes one :class:`ConfigError` naming the file, the key and what is
wrong; the CLI turns it into exit code 2 before anything is applied. Unknown keys are
errors too: a typo must not silently fall back to a default on a remote device.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from agent.activationconf import ActivationConfig, parse_activation
from agent.errors import ConfigError
from agent.render.settings import SecretsConfig, parse_secrets
from common import wire
from common.durations import DAY, HOUR
from common.tomlconf import MqttEndpoint, MqttProtocol, Section, load_toml, mqtt_connection

DEFAULT_CONFIG_PATH = Path("/etc/edgefleet/agent.toml")

NonFastForward = Literal["never", "known-good", "always"]
DriftMode = Literal["correct", "report"]

_GIT_SCHEMES = ("file", "git", "http", "https", "ssh")
HEALTH_TIMEOUT_MAX = DAY
"""Seconds; also the ceiling of a path's edgefleet.toml [health] timeout."""


@dataclass(frozen=True)
class GitConfig:
    url: str
    """Where the fleet repository lives: file://, git://, http(s)://, ssh:// or user@host:path."""
    branch: str = "stable"
    """The stage branch this node applies."""
    paths: tuple[str, ...] = ()
    """Ordered paths inside the branch; a later path overrides an earlier one file by file."""
    interval: float = 60.0
    """Seconds between cheap ls-remote polls (jittered by +-10%); ref notifications wake sooner."""
    timeout: float = 30.0
    """Seconds one Git network operation may take before it counts as failed."""
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    """known_hosts file for ssh:// URLs; host keys are always checked."""
    token_file: Path | None = None
    """File holding an HTTP(S) bearer/basic token (read at each fetch, so it can rotate)."""
    ca_file: Path | None = None
    """PEM bundle to verify an https:// Git server with a private CA."""


@dataclass(frozen=True)
class TrustConfig:
    allowed_signers: Path | None = None
    """ssh-keygen style allowed_signers file (principal, key) checked in the ``git`` namespace."""
    require_signed: bool = True
    """Refuse any head commit without a valid signature from allowed_signers."""
    non_fast_forward: NonFastForward = "known-good"
    """never: refuse any move that is not a fast-forward; known-good: allow a move back to a
    commit this node applied successfully before (hub rollbacks); always: accept any move."""


@dataclass(frozen=True)
class MqttConfig(MqttEndpoint):
    url: str | None = None
    """mqtt://host:port or mqtts://host:port; unset = no reporting (local-only agent)."""
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    protocol: MqttProtocol = "auto"
    """auto tries MQTT 5 and falls back to 3.1.1 when the broker refuses it."""
    heartbeat: float = 30.0
    """Seconds between status re-publications; the hub calls a node stale after 3 of them."""
    keepalive: int = 60
    outbox_max: int = 10_000
    """Events kept on disk while the broker is unreachable; the oldest are dropped beyond."""


@dataclass(frozen=True)
class SystemdConfig:
    enabled: bool = False
    unit_dir: Path = Path("/etc/systemd/system")
    systemctl: tuple[str, ...] = ("systemctl",)
    """Command used to talk to systemd; a prefix such as
    ["nsenter", "-t", "PID", "-a", "systemctl"] drives another systemd instance."""


@dataclass(frozen=True)
class FilesConfig:
    enabled: bool = True
    allowed_roots: tuple[Path, ...] = ()
    """Absolute directories files may be written under; empty = no file may be placed."""
    max_file_size: int = 32 * 1024 * 1024
    """Bytes one file of the node's paths may have (units, manifests included); a commit
    with a larger one is refused before it is read. 32 MiB fits small devices' RAM."""
    max_total_size: int = 256 * 1024 * 1024
    """Bytes all files of the node's paths may add up to, checked the same way."""


@dataclass(frozen=True)
class K3sConfig:
    enabled: bool = False
    kubeconfig: Path | None = Path("/etc/rancher/k3s/k3s.yaml")
    namespaces: tuple[str, ...] = ()
    """Namespaces the agent may write to; empty = any."""
    allow_cluster_scoped: bool = False


@dataclass(frozen=True)
class TargetsConfig:
    files: FilesConfig = field(default_factory=FilesConfig)
    systemd: SystemdConfig = field(default_factory=SystemdConfig)
    k3s: K3sConfig = field(default_factory=K3sConfig)


@dataclass(frozen=True)
class DriftConfig:
    mode: DriftMode = "correct"
    interval: float = 300.0
    """Seconds between drift checks of the live state against the last applied state."""


@dataclass(frozen=True)
class HealthConfig:
    timeout: float = 60.0
    """Seconds an applied change has to become healthy before it is rolled back."""
    settle: float = 5.0
    """Seconds a unit must stay active with no new restarts to count as healthy."""


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    node: str
    git: GitConfig
    labels: Mapping[str, str] = field(default_factory=dict)
    state_dir: Path = Path("/var/lib/edgefleet")
    trust: TrustConfig = field(default_factory=TrustConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)


def resolves_to_itself(path: Path) -> bool:
    """True when no existing part of an absolute path is a symlink (a missing tail is fine):
    a root that is a link could point the agent's writes anywhere, even at '/'."""
    try:
        return path.resolve() == path
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return False


def _check_repo_path(sec: Section, key: str, value: str) -> str:
    parts = value.strip("/").split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise sec.err(key, f"path {value!r} must be relative inside the repository, without '..'")
    return "/".join(parts)


def _git(root: Section) -> GitConfig:
    sec = root.table("git")
    url = sec.text("url")
    if url is None:
        raise sec.err("url", "is required (where the fleet repository lives)")
    scheme = sec.url("url", url).scheme
    is_scp = scheme == "" and ":" in url and "@" in url.split(":", 1)[0]
    if scheme not in _GIT_SCHEMES and not is_scp:
        raise sec.err("url", f"unsupported scheme {scheme or url!r}; use {', '.join(_GIT_SCHEMES)}")
    branch = sec.text("branch", "stable") or "stable"
    if branch.startswith("refs/") or ".." in branch or " " in branch:
        raise sec.err("branch", f"{branch!r} is not a plain branch name")
    paths = sec.str_list("paths") or ()
    cfg = GitConfig(
        url=url,
        branch=branch,
        paths=tuple(_check_repo_path(sec, "paths", p) for p in paths),
        interval=sec.duration("interval", 60.0, minimum=1.0, maximum=DAY),
        timeout=sec.duration("timeout", 30.0, minimum=1.0, maximum=HOUR),
        ssh_key=sec.file("ssh_key"),
        known_hosts=sec.file("known_hosts"),
        token_file=sec.file("token_file"),
        ca_file=sec.file("ca_file"),
    )
    if not cfg.paths:
        raise sec.err("paths", "is required: at least one path inside the branch, e.g. ['common']")
    sec.done()
    return cfg


def _trust(root: Section) -> TrustConfig:
    sec = root.table("trust")
    cfg = TrustConfig(
        allowed_signers=sec.file("allowed_signers"),
        require_signed=sec.flag("require_signed", True),
        non_fast_forward=cast(
            NonFastForward,
            sec.choice("non_fast_forward", "known-good", ("never", "known-good", "always")),
        ),
    )
    if cfg.require_signed and cfg.allowed_signers is None:
        raise sec.err(
            "allowed_signers",
            "is required while require_signed = true (or set require_signed = false)",
        )
    sec.done()
    return cfg


def _mqtt(root: Section) -> MqttConfig:
    sec = root.table("mqtt")
    cfg = MqttConfig(
        **mqtt_connection(sec),
        heartbeat=sec.duration("heartbeat", 30.0, minimum=1.0, maximum=DAY),
        outbox_max=sec.integer("outbox_max", 10_000, minimum=10, maximum=10_000_000),
    )
    sec.done()
    return cfg


def _targets(root: Section) -> TargetsConfig:
    sec = root.table("targets")
    fsec = sec.table("files")
    roots = []
    for raw in fsec.str_list("allowed_roots") or ():
        p = Path(raw)
        if not p.is_absolute() or ".." in p.parts:
            raise fsec.err("allowed_roots", f"{raw!r} must be an absolute path without '..'")
        if p == Path("/"):
            raise fsec.err("allowed_roots", "'/' is not allowed; name the directories to manage")
        if not resolves_to_itself(p):
            raise fsec.err(
                "allowed_roots",
                f"{raw!r} leads through a symlink; name the real directory",
            )
        roots.append(p)
    files = FilesConfig(
        enabled=fsec.flag("enabled", True),
        allowed_roots=tuple(roots),
        max_file_size=fsec.integer("max_file_size", FilesConfig.max_file_size, minimum=1),
        max_total_size=fsec.integer("max_total_size", FilesConfig.max_total_size, minimum=1),
    )
    fsec.done()

    ssec = sec.table("systemd")
    systemctl = ssec.str_list("systemctl")
    if systemctl == ():
        raise ssec.err("systemctl", "must name a command, e.g. ['systemctl'] (or leave it out)")
    systemd = SystemdConfig(
        enabled=ssec.flag("enabled", False),
        unit_dir=ssec.dir("unit_dir", Path("/etc/systemd/system")),
        systemctl=systemctl or ("systemctl",),
    )
    ssec.done()

    ksec = sec.table("k3s")
    kubeconfig = ksec.text("kubeconfig")
    k3s = K3sConfig(
        enabled=ksec.flag("enabled", False),
        kubeconfig=Path(kubeconfig) if kubeconfig else Path("/etc/rancher/k3s/k3s.yaml"),
        namespaces=ksec.str_list("namespaces") or (),
        allow_cluster_scoped=ksec.flag("allow_cluster_scoped", False),
    )
    # Checked here, not at the first apply: the daemon would crash on every start.
    if k3s.enabled and importlib.util.find_spec("kubernetes_asyncio") is None:
        raise ksec.err(
            "enabled",
            "the k3s target needs kubernetes_asyncio, which is not installed: "
            "pip install 'edgefleet[k3s]' (or set [targets.k3s] enabled = false)",
        )
    ksec.done()
    sec.done()
    return TargetsConfig(files=files, systemd=systemd, k3s=k3s)


def parse_config(data: Mapping[str, Any], path: Path) -> AgentConfig:
    """Validate an already-parsed TOML document (exposed for tests of pure logic)."""
    root = Section(path, "", data, ConfigError)
    configured = root.text("node")
    node = configured or socket.gethostname()
    if not wire.valid_node_name(node):
        # The hub drops every message of an invalid name (it is an MQTT topic level).
        where = "" if configured else " (the hostname; set node to a valid name)"
        raise root.err("node", f"{node[:64]!r}{where} is not {wire.NODE_NAME_RULE}")
    labels_sec = root.table("labels")
    labels: dict[str, str] = {}
    for key in list(labels_sec.data):
        labels[key] = labels_sec.text(key) or ""
    state_dir = root.dir("state_dir", Path("/var/lib/edgefleet"))
    git = _git(root)
    trust = _trust(root)
    mqtt = _mqtt(root)
    targets = _targets(root)
    dsec = root.table("drift")
    drift = DriftConfig(
        mode=cast(DriftMode, dsec.choice("mode", "correct", ("correct", "report"))),
        interval=dsec.duration("interval", 300.0, minimum=1.0, maximum=7 * DAY),
    )
    dsec.done()
    hsec = root.table("health")
    health = HealthConfig(
        timeout=hsec.duration("timeout", 60.0, maximum=HEALTH_TIMEOUT_MAX),
        settle=hsec.duration("settle", 5.0, maximum=HOUR),
    )
    hsec.done()
    secrets = parse_secrets(root)
    activation = parse_activation(root)
    root.done()
    return AgentConfig(
        path=path,
        node=node,
        labels=labels,
        state_dir=state_dir,
        git=git,
        trust=trust,
        mqtt=mqtt,
        targets=targets,
        drift=drift,
        health=health,
        secrets=secrets,
        activation=activation,
    )


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and validate the agent's config file; raises ConfigError on any problem."""
    return parse_config(load_toml(path, ConfigError), path)
