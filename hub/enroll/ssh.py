"""The SSH side of enrollment: connect with a checked host key, run commands as root.

Host keys are checked against known_hosts. An unknown host is trusted on first use only
with ``--accept-new`` (and recorded); a key that differs from a recorded one is always
refused. asyncssh errors become :class:`EnrollError` here, naming the host.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path
from typing import Any

import asyncssh

from hub.enroll import EnrollError, say
from hub.enroll.options import Settings, Target

CONNECT_TIMEOUT = 15.0


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

    async def upload(self, local: Path, remote: str) -> None:
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.put(str(local), remote)
        except (asyncssh.Error, OSError) as err:
            raise EnrollError(f"copying {local} to {self.target.host}: {err}") from err


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
    say("host key", f"{fingerprint} trusted on first use, added to {path}")


async def connect(settings: Settings) -> asyncssh.SSHClientConnection:
    """An SSH connection whose host key matched known_hosts (or was trusted on first use)."""
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
