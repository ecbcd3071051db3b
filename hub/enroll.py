"""``edgefleet-hub enroll``: install, configure and start the agent on a host over SSH.

Steps, each printed: connect (the host key is checked against known_hosts; with
``--accept-new`` an unknown host is trusted once and recorded, a changed key is always
refused), check the OS (Debian/Ubuntu booted with systemd), install the .deb unless that
version is installed, create the node's MQTT user in the broker's password file (and have
the broker reload it), write /etc/edgefleet (only files whose bytes change), enable and
(re)start the agent, and wait for its first status on MQTT. A second run with the same
arguments changes nothing and restarts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from common import wire
from common.status import ContractError, status_doc
from common.strict import parse_status
from hub.config import DEFAULT_CONFIG_PATH, HubConfig, MqttSettings, load_config, read_secret
from hub.errors import HubError

ETC = "/etc/edgefleet"
AGENT_TOML = f"{ETC}/agent.toml"
SIGNERS = f"{ETC}/allowed_signers"
MQTT_PASSWORD = f"{ETC}/mqtt-password"
MQTT_CA = f"{ETC}/mqtt-ca.pem"
DROP_IN = "/etc/systemd/system/edgefleet-agent.service.d/50-enroll.conf"
UNIT = "edgefleet-agent.service"
SUPPORTED_OS = ("debian", "ubuntu")
CONNECT_TIMEOUT = 15.0


class EnrollError(HubError):
    """Enrollment stopped; the message says where and why (auth, host key, OS, ...)."""


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
    wait: float


def _say(step: str, detail: str) -> None:
    print(f"  {step:<12} {detail}", flush=True)


# -- arguments -----------------------------------------------------------------------


def _target(raw: str, port: int) -> Target:
    user, sep, host = raw.rpartition("@")
    if not sep or not user or not host:
        raise EnrollError(f"{raw!r}: give the host as USER@HOST")
    return Target(user, host.strip("[]"), port)


def add_parser(subparsers: Any) -> None:
    """Add ``enroll`` to edgefleet-hub's subcommands."""
    p = subparsers.add_parser(
        "enroll",
        help="install, configure and start the agent on a host over SSH",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
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
    p.add_argument(
        "--config",
        type=Path,
        help=f"fleet.toml for defaults (default {DEFAULT_CONFIG_PATH} if present)",
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
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the first status (default 60; 0 = do not wait)",
    )
    p.set_defaults(func=lambda args: asyncio.run(run(args)))


def _settings(args: argparse.Namespace) -> Settings:
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
        branch=stage.branch if stage else args.stage,
        paths=tuple(args.paths),
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
        wait=args.wait,
    )


async def run(args: argparse.Namespace) -> int:
    """Enroll one host; raises EnrollError (a HubError) with a clear message on failure."""
    settings = _settings(args)
    status = await Enrollment(settings).run()
    if status is not None:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0 if status.get("state") == "synced" else 1
    return 0


# -- SSH -----------------------------------------------------------------------------


class Remote:
    """Commands on the enrolled host, as root (directly or through ``sudo -n``)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, target: Target) -> None:
        self.conn = conn
        self.target = target
        self.sudo = False

    async def sh(self, script: str, *, stdin: str | None = None, check: bool = True) -> str:
        command = f"sudo -n sh -c {shlex.quote(script)}" if self.sudo else script
        try:
            result = await self.conn.run(command, input=stdin, check=False)
        except asyncssh.Error as err:
            raise EnrollError(f"{self.target}: {script!r}: {err.reason}") from err
        if check and result.exit_status != 0:
            stderr = str(result.stderr or "").strip().splitlines()[-5:]
            raise EnrollError(
                f"{self.target}: {script!r} exited {result.exit_status}: {' / '.join(stderr)}"
            )
        return str(result.stdout or "")

    async def become_root(self) -> None:
        if (await self.sh("id -u")).strip() == "0":
            return
        if (await self.conn.run("sudo -n true", check=False)).exit_status != 0:
            raise EnrollError(
                f"{self.target}: {self.target.user} is not root and cannot sudo without a password"
            )
        self.sudo = True

    async def read(self, path: str) -> tuple[str, str] | None:
        """(mode, content) of a file, or None when it does not exist."""
        q = shlex.quote(path)
        out = await self.sh(f"if [ -f {q} ]; then stat -c %a {q} && cat {q}; fi")
        if not out:
            return None
        mode, _, content = out.partition("\n")
        return mode, content

    async def write(self, path: str, content: str, mode: int) -> bool:
        """Atomically replace ``path`` unless it already has these bytes and mode."""
        if await self.read(path) == (f"{mode:o}", content):
            return False
        q, tmp = shlex.quote(path), shlex.quote(f"{path}.enroll-tmp")
        await self.sh(
            f"umask 077 && mkdir -p $(dirname {q}) && cat > {tmp} && chmod {mode:o} {tmp}"
            f" && mv -f {tmp} {q}",
            stdin=content,
        )
        return True


def _known_hosts_lists(path: Path, target: Target) -> bool:
    """Whether known_hosts has any key for this host (then a mismatch is never accepted)."""
    if not path.is_file():
        return False
    try:
        keys = asyncssh.read_known_hosts(str(path)).match(target.host, target.host, target.port)
    except (OSError, ValueError) as err:
        raise EnrollError(f"cannot read known_hosts {path}: {err}") from err
    return bool(keys[0] or keys[1])


async def _server_key(target: Target) -> Any:
    try:
        return await asyncio.wait_for(
            asyncssh.get_server_host_key(target.host, target.port), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError, asyncssh.Error) as err:
        raise EnrollError(f"cannot reach {target.host}:{target.port}: {err}") from err


async def _trust_on_first_use(settings: Settings) -> None:
    target = settings.target
    key = await _server_key(target)
    fingerprint = key.get_fingerprint()
    if not settings.accept_new:
        raise EnrollError(
            f"host key of {target.host}:{target.port} is unknown (not in "
            f"{settings.known_hosts}); its fingerprint is {fingerprint}. Check it on the "
            "host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and rerun with "
            "--accept-new"
        )
    kind, blob = key.export_public_key("openssh").decode().split()[:2]
    path = settings.known_hosts
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = path.read_text() if path.is_file() else ""
    prefix = "" if not existing or existing.endswith("\n") else "\n"
    with path.open("a") as f:
        f.write(f"{prefix}{target.known_hosts_name} {kind} {blob}\n")
    _say("host key", f"{fingerprint} trusted on first use, added to {path}")


async def _connect(settings: Settings) -> asyncssh.SSHClientConnection:
    target = settings.target
    keys: dict[str, Any] = {}
    if settings.identity is not None:
        # Exactly this key: no agent, no default keys that might log in by accident.
        keys = {"client_keys": [str(settings.identity)], "agent_path": None}
    for attempt in range(2):
        known: Any = str(settings.known_hosts)
        if not settings.known_hosts.is_file():
            known = asyncssh.import_known_hosts("")
        try:
            return await asyncssh.connect(
                target.host,
                target.port,
                username=target.user,
                known_hosts=known,
                config=None,
                connect_timeout=CONNECT_TIMEOUT,
                **keys,
            )
        except asyncssh.HostKeyNotVerifiable as err:
            if attempt or _known_hosts_lists(settings.known_hosts, target):
                raise EnrollError(
                    f"host key of {target.host}:{target.port} does NOT match "
                    f"{settings.known_hosts} (reinstalled host or someone in between). If "
                    f"the host was reinstalled: ssh-keygen -f {settings.known_hosts} "
                    f"-R '{target.known_hosts_name}'"
                ) from err
            await _trust_on_first_use(settings)
        except asyncssh.PermissionDenied as err:
            how = f" with key {settings.identity}" if settings.identity else ""
            raise EnrollError(f"authentication failed for {target}{how}: {err.reason}") from err
        except asyncssh.Error as err:
            raise EnrollError(f"SSH to {target} failed: {err.reason}") from err
        except (OSError, TimeoutError) as err:
            errno = getattr(err, "errno", None)
            reason = os.strerror(errno) if errno else str(err) or type(err).__name__
            raise EnrollError(f"cannot reach {target.host}:{target.port}: {reason}") from err
    raise AssertionError("unreachable")


# -- steps ---------------------------------------------------------------------------


def _os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            parts = shlex.split(value, comments=False) or [""]
            out[key.strip()] = parts[0]
    return out


async def _local(*cmd: str, what: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError as err:
        raise EnrollError(f"{what}: {cmd[0]} is not installed on this machine") from err
    out, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise EnrollError(f"{what}: {cmd[0]} exited {proc.returncode}: {stderr.decode().strip()}")
    return out.decode()


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def render_agent_toml(settings: Settings, node: str, password: str | None, ca: bool) -> str:
    """The node's agent.toml (JSON strings are valid TOML basic strings)."""
    lines = [
        "# Written by `edgefleet-hub enroll`; the next enrollment overwrites local edits.",
        f"node = {json.dumps(node)}",
        "",
        "[git]",
        f"url = {json.dumps(settings.git_url)}",
        f"branch = {json.dumps(settings.branch)}",
        f"paths = {_toml_list(settings.paths)}",
        "",
        "[trust]",
        f"allowed_signers = {json.dumps(SIGNERS)}",
    ]
    if settings.mqtt_url:
        lines += ["", "[mqtt]", f"url = {json.dumps(settings.mqtt_url)}"]
        if password is not None:
            lines += [
                f"username = {json.dumps(node)}",
                f"password_file = {json.dumps(MQTT_PASSWORD)}",
            ]
        if ca:
            lines.append(f"ca_file = {json.dumps(MQTT_CA)}")
    if settings.allowed_roots:
        lines += ["", "[targets.files]", f"allowed_roots = {_toml_list(settings.allowed_roots)}"]
    return "\n".join(lines) + "\n"


def _passwd_has(path: Path, user: str) -> bool:
    if not path.is_file():
        return False
    return any(line.split(":", 1)[0] == user for line in path.read_text().splitlines())


class Enrollment:
    def __init__(self, settings: Settings) -> None:
        self.s = settings

    async def run(self) -> wire.StatusDoc | None:
        s = self.s
        print(f"enrolling {s.target} (stage branch {s.branch}, paths {', '.join(s.paths)})")
        conn = await _connect(s)
        _say("connected", f"{s.target}, host key verified against {s.known_hosts}")
        try:
            remote = Remote(conn, s.target)
            await remote.become_root()
            await self._check_os(remote)
            node = await self._node_name(remote)
            changed = await self._install(remote)
            password, creds_changed = await self._credentials(remote, node)
            changed |= await self._write_files(remote, node, password)
            watcher = await StatusWatcher.start(s.hub_mqtt, node) if s.wait > 0 else None
            try:
                restarted = await self._start(remote, changed or creds_changed)
                if watcher is None:
                    return None
                return await watcher.first(accept_retained=not restarted, within=s.wait)
            finally:
                if watcher is not None:
                    watcher.close()
        finally:
            conn.close()
            await conn.wait_closed()

    async def _check_os(self, remote: Remote) -> None:
        info = _os_release(
            await remote.sh(
                "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release", check=False
            )
        )
        ids = {info.get("ID", ""), *info.get("ID_LIKE", "").split()}
        name = info.get("PRETTY_NAME") or info.get("ID") or "unknown"
        if not ids & set(SUPPORTED_OS):
            raise EnrollError(
                f"{self.s.target.host}: unsupported OS {name!r}: enroll installs a .deb "
                "(Debian or Ubuntu); elsewhere use packaging/install.sh"
            )
        systemd = await remote.sh("test -d /run/systemd/system && echo yes", check=False)
        if systemd.strip() != "yes":
            raise EnrollError(
                f"{self.s.target.host}: unsupported OS {name!r}: not booted with systemd"
            )
        _say("os", f"{name} with systemd")

    async def _node_name(self, remote: Remote) -> str:
        node = self.s.node or (await remote.sh("hostname")).strip()
        if not wire.valid_node_name(node):
            raise EnrollError(f"node name {node!r} is not usable in MQTT topics; pass --node NAME")
        _say("node", node)
        return node

    async def _install(self, remote: Remote) -> bool:
        installed = (
            await remote.sh(
                "dpkg-query -W -f='${Version} ${db:Status-Abbrev}' edgefleet 2>/dev/null",
                check=False,
            )
        ).split()
        have = installed[0] if installed[1:2] == ["ii"] else None
        pkg = self.s.package
        if pkg is None:
            if have is None:
                raise EnrollError(
                    f"edgefleet is not installed on {self.s.target.host}: pass --package DEB"
                )
            _say("package", f"edgefleet {have} installed (no --package given)")
            return False
        fields = (
            await _local(
                "dpkg-deb",
                "--field",
                str(pkg),
                "Package",
                "Version",
                "Architecture",
                what=f"reading {pkg}",
            )
        ).splitlines()
        meta = dict(line.split(": ", 1) for line in fields if ": " in line)
        if meta.get("Package") != "edgefleet":
            raise EnrollError(f"{pkg} is not an edgefleet package")
        version, arch = meta["Version"], meta["Architecture"]
        if have == version:
            _say("package", f"edgefleet {version} already installed")
            return False
        node_arch = (await remote.sh("dpkg --print-architecture")).strip()
        if arch not in ("all", node_arch):
            raise EnrollError(f"{pkg} is for {arch}, {self.s.target.host} is {node_arch}")
        tmp = f"/var/tmp/edgefleet-enroll-{secrets.token_hex(4)}.deb"
        try:
            async with remote.conn.start_sftp_client() as sftp:
                await sftp.put(str(pkg), tmp)
        except (asyncssh.Error, OSError) as err:
            raise EnrollError(f"copying {pkg} to {self.s.target.host}: {err}") from err
        try:
            await remote.sh(
                f"DEBIAN_FRONTEND=noninteractive dpkg --force-confdef --force-confold -i {tmp}"
            )
        finally:
            await remote.sh(f"rm -f {tmp}", check=False)
        _say("package", f"edgefleet {version} installed" + (f" (was {have})" if have else ""))
        return True

    async def _credentials(self, remote: Remote, node: str) -> tuple[str | None, bool]:
        passwd = self.s.passwd_file
        if passwd is None:
            _say("mqtt user", "skipped (no --mqtt-passwd-file): the node connects without one")
            return None, False
        current = await remote.read(MQTT_PASSWORD)
        password = current[1].strip() if current else ""
        if password and _passwd_has(passwd, node):
            _say("mqtt user", f"{node} unchanged in {passwd}")
            return password, False
        password = password or secrets.token_urlsafe(24)
        if not passwd.exists():
            passwd.touch(mode=0o600)
        # -b replaces an existing entry of this user: never a duplicate.
        await _local(
            "mosquitto_passwd", "-b", str(passwd), node, password, what=f"adding {node} to {passwd}"
        )
        await self._reload_broker()
        _say("mqtt user", f"{node} set in {passwd}")
        return password, True

    async def _reload_broker(self) -> None:
        if self.s.broker_pid is not None:
            try:
                os.kill(self.s.broker_pid, signal.SIGHUP)
            except OSError as err:
                raise EnrollError(f"signalling broker pid {self.s.broker_pid}: {err}") from err
            _say("broker", f"SIGHUP sent to pid {self.s.broker_pid} (rereads the password file)")
        elif self.s.broker_reload:
            await _local("sh", "-c", self.s.broker_reload, what="--broker-reload")
            _say("broker", f"reloaded ({self.s.broker_reload})")
        else:
            _say("broker", "not reloaded (no --broker-pid/--broker-reload): reload it yourself")

    async def _write_files(self, remote: Remote, node: str, password: str | None) -> bool:
        s = self.s
        files: list[tuple[str, str, int]] = [(SIGNERS, s.allowed_signers.read_text(), 0o644)]
        if password is not None:
            files.append((MQTT_PASSWORD, password + "\n", 0o600))
        if s.mqtt_ca is not None:
            files.append((MQTT_CA, s.mqtt_ca.read_text(), 0o644))
        files.append(
            (AGENT_TOML, render_agent_toml(s, node, password, s.mqtt_ca is not None), 0o600)
        )
        if s.allowed_roots:
            # The unit mounts / read-only except what it needs; open the allowed roots.
            paths = " ".join(s.allowed_roots)
            files.append((DROP_IN, f"[Service]\nReadWritePaths={paths}\n", 0o644))
            await remote.sh("mkdir -p " + " ".join(shlex.quote(r) for r in s.allowed_roots))
        changed = False
        for path, content, mode in files:
            wrote = await remote.write(path, content, mode)
            _say("file", f"{path} {'written' if wrote else 'unchanged'}")
            changed |= wrote
        return changed

    async def _start(self, remote: Remote, changed: bool) -> bool:
        """Enable and start (restart if anything changed); True if the agent (re)started."""
        active = (await remote.sh(f"systemctl is-active {UNIT}", check=False)).strip() == "active"
        if changed:
            await remote.sh(
                f"systemctl daemon-reload && systemctl enable --quiet {UNIT}"
                f" && systemctl restart {UNIT}"
            )
            _say("agent", "restarted with the new configuration" if active else "enabled, started")
            return True
        await remote.sh(f"systemctl enable --quiet --now {UNIT}")
        _say("agent", "already running, nothing changed" if active else "enabled, started")
        return not active


# -- first status ----------------------------------------------------------------------


class StatusWatcher:
    """Subscribes (as the hub) to one node's status topic; paho runs in its own thread."""

    def __init__(self, cfg: MqttSettings, node: str) -> None:
        self.cfg = cfg
        self.node = node
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[bool, bytes]] = asyncio.Queue()
        self.subscribed = asyncio.Event()
        v5 = cfg.protocol != "3.1.1"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgefleet-enroll-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    @classmethod
    async def start(cls, cfg: MqttSettings | None, node: str) -> StatusWatcher:
        if cfg is None:
            raise EnrollError("no MQTT broker to wait on: pass --mqtt-url or --wait 0")
        self = cls(cfg, node)
        try:
            if cfg.username is not None:
                pw = read_secret(cfg.password_file) if cfg.password_file else None
                self.client.username_pw_set(cfg.username, pw)
            if cfg.tls:
                ctx = ssl.create_default_context(cafile=cfg.ca_file)
                if cfg.client_cert is not None:
                    ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
                self.client.tls_set_context(ctx)
            # connect() blocks (DNS, TCP, TLS): keep it off the event loop.
            await asyncio.to_thread(self.client.connect, cfg.host, cfg.port, cfg.keepalive)
        except (OSError, ValueError) as err:
            raise EnrollError(f"cannot reach the broker at {cfg.url}: {err}") from err
        self.client.loop_start()
        try:
            await asyncio.wait_for(self.subscribed.wait(), CONNECT_TIMEOUT)
        except TimeoutError as err:
            self.close()
            raise EnrollError(
                f"broker {cfg.url} did not accept the subscription to "
                f"{wire.status_topic(node)} (credentials, ACL?)"
            ) from err
        return self

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(wire.status_topic(self.node), qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        if not any(c.is_failure for c in codes):
            self.loop.call_soon_threadsafe(self.subscribed.set)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = (bool(msg.retain), bytes(msg.payload))
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def first(self, *, accept_retained: bool, within: float) -> wire.StatusDoc:
        """The first status past 'progressing' (a retained one only if the agent kept
        running: after a restart it may predate the new configuration)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    retained, payload = await self.queue.get()
                    if retained and not accept_retained:
                        continue
                    try:  # the contract's one strict parser, as for ingest
                        doc = status_doc(parse_status(self.node, payload))
                    except ContractError:
                        continue
                    _say("status", f"{doc.get('state')} {doc.get('message') or ''}".rstrip())
                    if doc.get("state") != "progressing":
                        return doc
        except TimeoutError as err:
            raise EnrollError(
                f"no status from {self.node} within {within:g} s; on the node see "
                f"journalctl -u {UNIT} and edgefleet-agent verify"
            ) from err

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # Break the client <-> callback cycle so paho's __del__ closes its socket pair now
        # rather than whenever the garbage collector gets to it.
        self.client.on_connect = self.client.on_subscribe = self.client.on_message = None
