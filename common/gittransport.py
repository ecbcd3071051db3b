"""The one place a dulwich Git client is made for a URL, for the agent and the hub.

Transports: ``file://`` (``git upload-pack``/``receive-pack`` subprocesses; dulwich's
in-process local client ignores shallow bookkeeping), ``git://`` (TCP with connect and
read timeouts; dulwich's own socket blocks forever), ``ssh://`` and ``user@host:path``
(the OpenSSH client, host keys checked against ``known_hosts`` and never accepted on
first use), ``http(s)://`` smart HTTP (urllib3 with timeouts and an optional CA file).
An HTTP token is read from ``token_file`` at every operation (so it can rotate) and sent
as HTTP **basic** auth: the URL's user name (``https://oauth2@host/...``) or
``x-access-token``, with the token as password; GitHub, GitLab, Gitea and Bitbucket
accept that form. Fetches ask for Git protocol v2 (TESTBED.md: depth-1 fetches with v0
break on the third fetch over git:// and SSH); pushes speak v0, as git does.

Every network read is bounded by ``timeout``, so a hung server fails the call instead of
blocking the thread (and any lock its caller holds). Library errors raised inside
:meth:`GitRemote.session` become one :class:`GitError` with an
:class:`~common.backoff.ErrorKind`; its message names the operation and the URL and never
contains a password or token.
"""

from __future__ import annotations

import re
import select
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import urllib3
from dulwich.client import (
    GitClient,
    HTTPProxyUnauthorized,
    HTTPUnauthorized,
    SSHGitClient,
    SSHVendor,
    SubprocessGitClient,
    SubprocessWrapper,
    TCPGitClient,
    TraditionalGitClient,
    Urllib3HttpGitClient,
    default_user_agent_string,
)
from dulwich.errors import GitProtocolError, NotGitRepository
from dulwich.objects import ObjectID
from dulwich.protocol import DEFAULT_GIT_PROTOCOL_VERSION_SEND
from dulwich.protocol import Protocol as PktProtocol
from dulwich.refs import Ref

from common.backoff import ErrorKind, KindedError

PROTOCOL_VERSION: Final = 2
DEFAULT_HTTP_USER: Final = "x-access-token"

_LIBRARY_ERRORS = (
    GitProtocolError,  # includes HangupException (server closed, ssh refused, host key)
    NotGitRepository,  # HTTP 404
    HTTPUnauthorized,
    HTTPProxyUnauthorized,
    urllib3.exceptions.HTTPError,
    OSError,  # refused, unreachable, socket timeouts, TLS (ssl.SSLError)
)
_TIMEOUTS = (TimeoutError, urllib3.exceptions.TimeoutError)
_CREDENTIALS_IN_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")
_SERVER_SAYS: Final = (
    # (what the server or ssh prints, reason) - all terminal: retrying soon cannot help.
    ("Permission denied", "authentication refused (check ssh_key)"),
    ("does not appear to be a git repository", "no Git repository at this URL"),
    ("repository not exported", "no Git repository at this URL"),
    ("not found", "no Git repository at this URL"),
    ("No such file or directory", "no Git repository at this URL"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted (check ca_file)"),
)


class GitAccess(Protocol):
    """The [git] connection keys both config files share (agent GitConfig, hub GitSettings)."""

    @property
    def url(self) -> str | None: ...
    @property
    def ssh_key(self) -> Path | None: ...
    @property
    def known_hosts(self) -> Path | None: ...
    @property
    def token_file(self) -> Path | None: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def timeout(self) -> float: ...


class GitError(KindedError):
    """A Git server could not be reached, refused us, or answered nonsense."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.TRANSIENT) -> None:
        super().__init__(message)
        self.kind = kind


def redact_url(url: str) -> str:
    """The URL with any password removed (safe for logs, reports and exceptions)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class _ClosingClient(TraditionalGitClient):
    """Closes every connection on close(): dulwich leaves one open when the server hangs up
    before the protocol starts (ssh refused, host key rejected, unknown repository)."""

    _opened: list[PktProtocol]

    def _track(
        self, conn: tuple[PktProtocol, Callable[[], bool], IO[bytes] | None]
    ) -> tuple[PktProtocol, Callable[[], bool], IO[bytes] | None]:
        self._opened = [*getattr(self, "_opened", []), conn[0]]
        return conn

    def _connect(
        self, cmd: bytes, path: str | bytes, protocol_version: int | None = None
    ) -> tuple[PktProtocol, Callable[[], bool], IO[bytes] | None]:
        return self._track(super()._connect(cmd, path, protocol_version))

    def close(self) -> None:
        for proto in getattr(self, "_opened", []):
            proto.close()  # idempotent
        super().close()


class _SshClient(_ClosingClient, SSHGitClient):
    pass


class _LocalClient(_ClosingClient, SubprocessGitClient):
    """file:// through ``git upload-pack``: dulwich's in-process LocalGitClient ignores
    depth bookkeeping (no shallow file), so a shallow cache would look complete."""


class _TcpGitClient(_ClosingClient, TCPGitClient):
    """git:// with connect and read timeouts."""

    def __init__(self, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port)
        self._timeout = timeout

    def _connect(
        self, cmd: bytes, path: str | bytes, protocol_version: int | None = None
    ) -> tuple[PktProtocol, Callable[[], bool], IO[bytes] | None]:
        if isinstance(path, str):
            path = path.encode("utf-8")
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb", -1)
        wfile = sock.makefile("wb", 0)

        def close() -> None:
            rfile.close()
            wfile.close()
            sock.close()

        def shutdown_write() -> None:
            wfile.flush()
            with suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        def can_read() -> bool:
            return bool(select.select([sock], [], [], 0)[0])

        proto = PktProtocol(rfile.read, wfile.write, close, shutdown_write=shutdown_write)
        extra = b"host=" + self._host.encode("ascii")
        if cmd == b"upload-pack":
            self.protocol_version = PROTOCOL_VERSION
            # The version rides behind two NULs so old daemons ignore it (as git does).
            extra += b"\0\0version=%d\0" % PROTOCOL_VERSION
        else:
            self.protocol_version = DEFAULT_GIT_PROTOCOL_VERSION_SEND
        proto.send_cmd(b"git-" + cmd, path, extra)
        return self._track((proto, can_read, None))


class _HttpPool(urllib3.PoolManager):
    """Closes every response on clear(): dulwich raises on 401/404 without releasing it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._responses: list[urllib3.BaseHTTPResponse] = []

    def urlopen(  # type: ignore[override]  # same signature as urllib3's own PoolManager
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        response = super().urlopen(method, url, redirect=redirect, **kw)
        self._responses.append(response)
        return response

    def clear(self) -> None:
        for response in self._responses:
            response.close()
        self._responses.clear()
        super().clear()


class _SshVendor(SSHVendor):
    """OpenSSH with strict host key checking against our known_hosts and our key only."""

    def __init__(self, access: GitAccess) -> None:
        self._access = access

    def run_command(
        self,
        host: str,
        command: bytes,
        username: str | None = None,
        port: int | None = None,
        password: str | None = None,
        key_filename: str | None = None,
        ssh_command: str | None = None,
        protocol_version: int | None = None,
    ) -> SubprocessWrapper:
        access = self._access
        args = [
            *("ssh", "-x"),
            *("-F", "/dev/null"),  # the config file is the only source of SSH settings
            *("-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=yes"),
            # Bounds the TCP connect and the banner exchange; keepalives bound the rest.
            *("-o", f"ConnectTimeout={max(1, int(access.timeout))}"),
            *("-o", f"ServerAliveInterval={max(1, int(access.timeout / 3))}"),
            *("-o", "ServerAliveCountMax=3"),
            # git's receive-pack ignores v2 and speaks v0, so this is safe for pushes too.
            *("-o", f"SetEnv=GIT_PROTOCOL=version={PROTOCOL_VERSION}"),
        ]
        if access.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={access.known_hosts}"]
            args += ["-o", "GlobalKnownHostsFile=/dev/null"]
        if access.ssh_key is not None:
            args += ["-i", str(access.ssh_key), "-o", "IdentitiesOnly=yes"]
        if port:
            args += ["-p", str(port)]
        if host.startswith("-") or (username or "").startswith("-"):
            raise OSError(f"refusing strange SSH host {host!r}")
        args += ["--", f"{username}@{host}" if username else host, command.decode("utf-8")]
        proc = subprocess.Popen(
            args,
            bufsize=0,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return SubprocessWrapper(proc)


def _timed_out(err: BaseException | None) -> bool:
    # urllib3's NewConnectionError (refused, unreachable) subclasses its ConnectTimeoutError.
    return isinstance(err, _TIMEOUTS) and not isinstance(err, urllib3.exceptions.NewConnectionError)


def _scp_parts(url: str) -> tuple[str | None, str, str]:
    """``user@host:path`` -> (user, host, path)."""
    userhost, path = url.split(":", 1)
    user, _, host = userhost.rpartition("@")
    return user or None, host, path


class GitRemote:
    """One repository URL and how to reach it: makes clients, maps and scrubs errors."""

    def __init__(self, access: GitAccess) -> None:
        if access.url is None:
            raise GitError("no [git] url configured", ErrorKind.TERMINAL)
        self._access = access
        self._raw_url: str = access.url
        self.url = redact_url(access.url)
        """The URL without any password (for logs and reports)."""
        self._secrets: set[str] = set()
        password = urlsplit(access.url).password if "://" in access.url else None
        if password:
            self._secrets.add(password)

    @contextmanager
    def session(self, op: str) -> Iterator[tuple[GitClient, str]]:
        """A client and the repository path on it, for one operation ``op`` (named in
        errors). Library errors raised inside the block become :class:`GitError`."""
        try:
            client, path = self._client()
            try:
                yield client, path
            finally:
                client.close()
                if isinstance(client, Urllib3HttpGitClient):
                    client.pool_manager.clear()
        except _LIBRARY_ERRORS as err:
            kind, reason = self._reason(err)
            raise GitError(f"git {op} {self.url}: {self.scrub(reason)}", kind) from err

    def refs(self, op: str, prefixes: Sequence[bytes]) -> dict[Ref, ObjectID]:
        """ls-remote of the refs under ``prefixes`` only (a cheap poll)."""
        with self.session(op) as (client, path):
            result = client.get_refs(
                path.encode("utf-8"),
                protocol_version=PROTOCOL_VERSION,
                ref_prefix=[Ref(p) for p in prefixes],
            )
        return {ref: sha for ref, sha in result.refs.items() if sha is not None}

    def scrub(self, text: str) -> str:
        """``text`` without any password or token this remote knows of."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _CREDENTIALS_IN_URL.sub(r"\g<scheme>\g<user>:***@", text)

    def _client(self) -> tuple[GitClient, str]:
        access = self._access
        parts = urlsplit(self._raw_url)
        if parts.scheme == "file":
            local = _LocalClient()
            local.git_command = ["env", f"GIT_PROTOCOL=version={PROTOCOL_VERSION}", "git"]
            return local, parts.path
        if parts.scheme == "git":
            host = parts.hostname or "localhost"
            return _TcpGitClient(host, parts.port, access.timeout), parts.path
        if parts.scheme in ("http", "https"):
            return self._http_client(), parts.path
        if parts.scheme == "ssh":
            user, host, path = parts.username, parts.hostname or "", parts.path
        else:
            user, host, path = _scp_parts(self._raw_url)
        ssh = _SshClient(
            host,
            port=parts.port if parts.scheme else None,
            username=user,
            vendor=_SshVendor(access),
        )
        return ssh, path

    def _token(self) -> str | None:
        token_file = self._access.token_file
        if token_file is None:
            return None
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise GitError(
                f"git {self.url}: cannot read token_file {token_file}", ErrorKind.TERMINAL
            ) from err
        if not token:
            raise GitError(f"git {self.url}: token_file {token_file} is empty", ErrorKind.TERMINAL)
        self._secrets.add(token)
        return token

    def _http_client(self) -> Urllib3HttpGitClient:
        access = self._access
        parts = urlsplit(self._raw_url)
        username, password = parts.username, parts.password
        token = self._token()
        if token is not None:
            username, password = username or DEFAULT_HTTP_USER, token
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        pool = _HttpPool(
            headers={"User-Agent": default_user_agent_string()},
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(access.ca_file) if access.ca_file else None,
            timeout=urllib3.Timeout(connect=access.timeout, read=access.timeout),
            # Callers retry with backoff themselves; here only redirects are followed.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=3),
        )
        return Urllib3HttpGitClient(
            urlunsplit((parts.scheme, netloc, "/", "", "")),
            pool_manager=pool,
            username=username,
            password=password,
        )

    def _reason(self, err: BaseException) -> tuple[ErrorKind, str]:
        """The retry kind and a short, human reason for a library error."""
        if isinstance(err, HTTPUnauthorized):
            return ErrorKind.TERMINAL, "authentication failed (HTTP 401); check token_file"
        if isinstance(err, HTTPProxyUnauthorized):
            return ErrorKind.TERMINAL, "proxy authentication failed (HTTP 407)"
        if isinstance(err, NotGitRepository):
            return ErrorKind.TERMINAL, "no Git repository at this URL (HTTP 404)"
        cause = err.__cause__
        # urllib3 wraps the real reason (refused, TLS, DNS, timeout) in a MaxRetryError.
        wrapped = cause.reason if isinstance(cause, urllib3.exceptions.MaxRetryError) else None
        if any(_timed_out(e) for e in (err, cause, wrapped)):
            return ErrorKind.TRANSIENT, f"no answer within {self._access.timeout:g}s (timed out)"
        if wrapped is not None:
            said = str(wrapped)
        elif isinstance(err, GitProtocolError) and not isinstance(cause, OSError):
            said = str(err).strip() or "the server closed the connection"
        else:  # refused, unreachable, a broken connection: worth another try later
            failed = cause if isinstance(cause, OSError) else err
            return ErrorKind.TRANSIENT, getattr(failed, "strerror", None) or str(failed)
        if "Host key verification failed" in said:
            known = self._access.known_hosts or "the default known_hosts files"
            return ErrorKind.TERMINAL, (
                f"Host key verification failed: the server's key is not in {known} or does "
                "not match it (unknown hosts are refused; add the key to known_hosts)"
            )
        for marker, reason in _SERVER_SAYS:
            if marker in said:
                return ErrorKind.TERMINAL, f"{reason}: {said}"
        return ErrorKind.TRANSIENT, said
