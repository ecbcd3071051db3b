"""The enrollment itself: each step on the host, in order, printed as it goes."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import signal
from pathlib import Path

from common import wire
from hub.enroll import EnrollError, say
from hub.enroll.agekey import node_recipient, record_recipient
from hub.enroll.agentconf import AgentToml, checked_text
from hub.enroll.options import Settings
from hub.enroll.ssh import Remote, connect
from hub.enroll.watch import StatusWatch

DROP_IN = "/etc/systemd/system/edgefleet-agent.service.d/50-enroll.conf"
UNIT = "edgefleet-agent.service"
SUPPORTED_OS = ("debian", "ubuntu")


async def enroll(settings: Settings) -> int:
    """Enroll one host and print its first status: exit code 0 when it is synced."""
    status = await Enrollment(settings).run()
    if status is not None:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0 if status.get("state") == "synced" else 1
    return 0


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
        conn = await connect(s)
        say("connected", f"{s.target}, host key verified against {s.known_hosts}")
        try:
            remote = Remote(conn, s.target)
            await remote.become_root()
            await self._check_os(remote)
            conf = self._agent_toml(await self._node_name(remote))
            # Checked before anything is installed or written: a refusal leaves the host as is.
            agent_toml = checked_text(conf)
            say("config", f"{conf.path} accepted by the agent's config schema")
            changed = await self._install(remote)
            password, creds_changed = await self._credentials(remote, conf)
            changed |= await self._write_files(remote, conf, agent_toml, password)
            recipient = await node_recipient(remote, conf, s)
            watch = await StatusWatch.open(s.hub_mqtt, conf.node) if s.wait > 0 else None
            try:
                restarted = await self._start(remote, changed or creds_changed)
                await record_recipient(recipient, conf, s)
                if watch is None:
                    return None
                return await watch.first(accept_retained=not restarted, within=s.wait)
            finally:
                if watch is not None:
                    watch.close()
        finally:
            conn.close()
            await conn.wait_closed()

    def _agent_toml(self, node: str) -> AgentToml:
        s = self.s
        return AgentToml(
            node=node,
            git_url=s.git_url,
            branch=s.branch,
            paths=s.paths,
            labels=s.labels,
            mqtt_url=s.mqtt_url,
            mqtt_password=s.passwd_file is not None,
            mqtt_ca=s.mqtt_ca is not None,
            allowed_roots=s.allowed_roots,
            k3s=s.k3s,
        )

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
        say("os", f"{name} with systemd")

    async def _node_name(self, remote: Remote) -> str:
        node = self.s.node or (await remote.sh("hostname")).strip()
        if not wire.valid_node_name(node):
            raise EnrollError(f"node name {node!r} is not usable in MQTT topics; pass --node NAME")
        say("node", node)
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
            say("package", f"edgefleet {have} installed (no --package given)")
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
            say("package", f"edgefleet {version} already installed")
            return False
        node_arch = (await remote.sh("dpkg --print-architecture")).strip()
        if arch not in ("all", node_arch):
            raise EnrollError(f"{pkg} is for {arch}, {self.s.target.host} is {node_arch}")
        tmp = f"/var/tmp/edgefleet-enroll-{secrets.token_hex(4)}.deb"
        await remote.upload(pkg, tmp)
        try:
            await remote.sh(
                f"DEBIAN_FRONTEND=noninteractive dpkg --force-confdef --force-confold -i {tmp}"
            )
        finally:
            await remote.sh(f"rm -f {tmp}", check=False)
        say("package", f"edgefleet {version} installed" + (f" (was {have})" if have else ""))
        return True

    async def _credentials(self, remote: Remote, conf: AgentToml) -> tuple[str | None, bool]:
        passwd, node = self.s.passwd_file, conf.node
        if passwd is None:
            say("mqtt user", "skipped (no --mqtt-passwd-file): the node connects without one")
            return None, False
        current = await remote.read(str(conf.password_file))
        password = current[1].strip() if current else ""
        if password and _passwd_has(passwd, node):
            say("mqtt user", f"{node} unchanged in {passwd}")
            return password, False
        password = password or secrets.token_urlsafe(24)
        if not passwd.exists():
            passwd.touch(mode=0o600)
        # -b replaces an existing entry of this user: never a duplicate.
        await _local(
            "mosquitto_passwd", "-b", str(passwd), node, password, what=f"adding {node} to {passwd}"
        )
        await self._reload_broker()
        say("mqtt user", f"{node} set in {passwd}")
        return password, True

    async def _reload_broker(self) -> None:
        if self.s.broker_pid is not None:
            try:
                os.kill(self.s.broker_pid, signal.SIGHUP)
            except OSError as err:
                raise EnrollError(f"signalling broker pid {self.s.broker_pid}: {err}") from err
            say("broker", f"SIGHUP sent to pid {self.s.broker_pid} (rereads the password file)")
        elif self.s.broker_reload:
            await _local("sh", "-c", self.s.broker_reload, what="--broker-reload")
            say("broker", f"reloaded ({self.s.broker_reload})")
        else:
            say("broker", "not reloaded (no --broker-pid/--broker-reload): reload it yourself")

    async def _write_files(
        self, remote: Remote, conf: AgentToml, agent_toml: str, password: str | None
    ) -> bool:
        s = self.s
        files: list[tuple[Path, str, int]] = [
            (conf.allowed_signers, s.allowed_signers.read_text(), 0o644)
        ]
        if password is not None:
            files.append((conf.password_file, password + "\n", 0o600))
        if s.mqtt_ca is not None:
            files.append((conf.ca_file, s.mqtt_ca.read_text(), 0o644))
        files.append((conf.path, agent_toml, 0o600))
        if s.allowed_roots:
            # The unit mounts / read-only except what it needs; open the allowed roots.
            paths = " ".join(s.allowed_roots)
            files.append((Path(DROP_IN), f"[Service]\nReadWritePaths={paths}\n", 0o644))
            await remote.sh("mkdir -p " + " ".join(shlex.quote(r) for r in s.allowed_roots))
        changed = False
        for path, content, mode in files:
            wrote = await remote.write(str(path), content, mode)
            say("file", f"{path} {'written' if wrote else 'unchanged'}")
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
            say("agent", "restarted with the new configuration" if active else "enabled, started")
            return True
        await remote.sh(f"systemctl enable --quiet --now {UNIT}")
        say("agent", "already running, nothing changed" if active else "enabled, started")
        return not active
