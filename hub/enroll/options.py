"""The ``enroll`` command line: flags, with fleet.toml as defaults, resolved to Settings.

Only argparse and the hub's config reader here: every ``edgefleet-hub`` command builds
this parser, and asyncssh/paho are imported only when ``enroll`` actually runs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.config import DEFAULT_CONFIG_PATH, HubConfig, MqttSettings, load_config
from hub.enroll import EnrollError
from hub.recipients import HubDatabase, recipients_database

DESCRIPTION = """\
Steps, each printed: connect (the host key is checked against known_hosts; with
--accept-new an unknown host is trusted once and recorded, a changed key is always
refused), check the OS (Debian/Ubuntu booted with systemd), check the node's agent.toml
against the agent's own config schema, install the .deb unless that version is
installed, create the node's MQTT user in the broker's password file (and have the
broker reload it), write /etc/edgefleet (only files whose bytes change), enable and
(re)start the agent, and wait for its first status on MQTT. A second run with the same
arguments changes nothing and restarts nothing."""


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Everything one enrollment needs, resolved from flags with fleet.toml as defaults."""

    target: Target
    identity: Path | None
    known_hosts: Path
    accept_new: bool
    node: str | None
    labels: Mapping[str, str]
    branch: str
    paths: tuple[str, ...]
    package: Path | None
    git_url: str
    allowed_signers: Path
    mqtt_url: str | None
    """The broker as the node reaches it."""
    mqtt_ca: Path | None
    hub_mqtt: MqttSettings | None
    """The broker as the hub reaches it, to wait for the first status."""
    passwd_file: Path | None
    broker_reload: str | None
    broker_pid: int | None
    allowed_roots: tuple[str, ...]
    k3s: bool
    wait: float
    database: HubDatabase | None = None
    """The hub's database (fleet.toml [hub] database): where the node's age recipient is kept."""


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``enroll`` to edgefleet-hub's subcommands (``common``: the global options)."""
    p = subparsers.add_parser(
        "enroll",
        parents=[common],
        help="install, configure and start the agent on a host over SSH",
        description=DESCRIPTION,
    )
    p.add_argument("destination", metavar="USER@HOST", help="SSH login (root or passwordless sudo)")
    p.add_argument("--stage", required=True, help="stage of fleet.toml (or a branch name)")
    p.add_argument(
        "--path",
        dest="paths",
        action="append",
        required=True,
        metavar="PATH",
        help="path in the branch, in overlay order (repeatable)",
    )
    p.add_argument("--node", help="node name (default: the host's hostname)")
    p.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node label in agent.toml [labels] (repeatable)",
    )
    p.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    p.add_argument("--identity", type=Path, metavar="KEY", help="SSH private key to log in with")
    p.add_argument(
        "--known-hosts",
        type=Path,
        default=Path.home() / ".ssh" / "known_hosts",
        metavar="FILE",
        help="checked host keys (default ~/.ssh/known_hosts)",
    )
    p.add_argument(
        "--accept-new",
        action="store_true",
        help="trust an unknown host key on first use and add it to known_hosts",
    )
    p.add_argument(
        "--package",
        type=Path,
        metavar="DEB",
        help="edgefleet .deb to install (skipped when that version is installed)",
    )
    p.add_argument("--git-url", help="fleet repository as the node reaches it ([git] url)")
    p.add_argument(
        "--allowed-signers",
        type=Path,
        required=True,
        metavar="FILE",
        help="allowed_signers file copied to the node (who may sign commits)",
    )
    p.add_argument("--mqtt-url", help="broker as the node reaches it ([mqtt] url)")
    p.add_argument(
        "--mqtt-ca-file",
        type=Path,
        metavar="FILE",
        help="CA that signed the broker's certificate ([mqtt] ca_file)",
    )
    p.add_argument(
        "--mqtt-passwd-file",
        type=Path,
        metavar="FILE",
        help="the broker's password_file; the node's user is added to it",
    )
    p.add_argument(
        "--broker-reload",
        metavar="CMD",
        help="shell command making the broker reread its password file",
    )
    p.add_argument(
        "--broker-pid",
        type=int,
        metavar="PID",
        help="send SIGHUP to this mosquitto after changing the password file",
    )
    p.add_argument(
        "--allowed-root",
        dest="allowed_roots",
        action="append",
        default=[],
        metavar="DIR",
        help="directory the files target may write (repeatable)",
    )
    p.add_argument(
        "--k3s",
        action="store_true",
        help="enable the k3s target ([targets.k3s] enabled = true)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the first status (default 60; 0 = do not wait)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """``edgefleet-hub enroll``: raises EnrollError (a HubError) with a clear message."""
    from hub.enroll.steps import enroll  # noqa: PLC0415 - asyncssh/paho only when enrolling

    return asyncio.run(enroll(settings(args)))


def _target(raw: str, port: int) -> Target:
    user, sep, host = raw.rpartition("@")
    if not sep or not user or not host:
        raise EnrollError(f"{raw!r}: give the host as USER@HOST")
    return Target(user, host.strip("[]"), port)


def _labels(raw: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EnrollError(f"--label {item!r}: give it as KEY=VALUE")
        if key in labels:
            raise EnrollError(f"--label {key!r} given twice")
        labels[key] = value
    return labels


def settings(args: argparse.Namespace) -> Settings:
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    cfg: HubConfig | None = load_config(path) if path is not None else None
    stage = cfg.stage(args.stage) if cfg else None
    git_url = args.git_url or (cfg.git.url if cfg else None)
    if not git_url:
        raise EnrollError("no Git URL: pass --git-url or set [git] url in fleet.toml")
    mqtt_url = args.mqtt_url or (cfg.mqtt.url if cfg else None)
    hub_mqtt = cfg.mqtt if cfg else (MqttSettings(url=mqtt_url) if mqtt_url else None)
    for key, file in (
        ("--allowed-signers", args.allowed_signers),
        ("--identity", args.identity),
        ("--package", args.package),
    ):
        if file is not None and not file.is_file():
            raise EnrollError(f"{key} {file}: no such file")
    if args.broker_reload and args.broker_pid:
        raise EnrollError("give --broker-reload or --broker-pid, not both")
    for root in args.allowed_roots:
        if not root.startswith("/") or root == "/" or ".." in root.split("/"):
            raise EnrollError(f"--allowed-root {root!r} must be an absolute directory, not /")
    return Settings(
        target=_target(args.destination, args.port),
        identity=args.identity,
        known_hosts=args.known_hosts,
        accept_new=args.accept_new,
        node=args.node,
        labels=_labels(args.labels),
        branch=stage.branch if stage else args.stage,
        # "common/" is "common" to the agent; written as given it would not read back.
        paths=tuple(p.rstrip("/") or p for p in args.paths),
        package=args.package,
        git_url=git_url,
        allowed_signers=args.allowed_signers,
        mqtt_url=mqtt_url,
        mqtt_ca=args.mqtt_ca_file or (cfg.mqtt.ca_file if cfg else None),
        hub_mqtt=hub_mqtt,
        passwd_file=args.mqtt_passwd_file,
        broker_reload=args.broker_reload,
        broker_pid=args.broker_pid,
        allowed_roots=tuple(args.allowed_roots),
        k3s=args.k3s,
        wait=args.wait,
        database=recipients_database(cfg) if cfg else None,
    )
