"""Real Git servers for the fleet repository: git daemon, smart HTTP(S), sshd.

Each server is stoppable and restartable on the same port (``stop()`` / ``start()``), so
tests can take the Git server down and bring it back. ``git_remote`` is an indirectly
parametrized fixture (``file``, ``git``, ``http``, ``https``, ``ssh``) yielding a
:class:`GitRemote`: a FleetRepo plus a server exporting it and the matching agent
GitConfig. The repository lives in a world-readable temp dir because sshd runs git as the
unprivileged ``edgefleet-git`` user (TESTBED.md: root's shell startup is slow).

HTTP(S) is ``git http-backend`` (CGI) behind a small threaded server that demands HTTP
basic auth with ``token`` as the password when a token is set.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import pytest

from agent.config import GitConfig
from tests.testbed.fleetrepo import FleetRepo

if TYPE_CHECKING:
    from tests.testbed.mosquitto import TlsFiles

GIT_USER = "edgefleet-git"
SSHD = "/usr/sbin/sshd"
TRANSPORTS = ("file", "git", "http", "https", "ssh")


class GitServer(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def connections(self) -> int: ...


# tests.testbed.mosquitto is imported lazily: importing a sibling plugin module before
# pytest registers it defeats assertion rewriting (PytestAssertRewriteWarning).
def free_port() -> int:
    from tests.testbed.mosquitto import free_port  # noqa: PLC0415

    return free_port()


def wait_port(port: int) -> None:
    from tests.testbed.mosquitto import wait_port  # noqa: PLC0415

    wait_port(port)


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- git daemon ---------------------------------------------------------------------------


@dataclass
class GitDaemon:
    base: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str = "fleet.git") -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "git",
                    "daemon",
                    "--export-all",
                    "--reuseaddr",
                    "--verbose",
                    f"--base-path={self.base}",
                    "--listen=127.0.0.1",
                    f"--port={self.port}",
                    "--enable=receive-pack",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_port(self.port)

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def connections(self) -> int:
        """upload-pack requests served so far (ls-remote and fetch each count one)."""
        return self.log.read_text().count("Request upload-pack")


# -- smart HTTP ---------------------------------------------------------------------------


class _CgiHandler(BaseHTTPRequestHandler):
    server: _HttpServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        return  # the owner keeps its own request log

    def _authorized(self, token: str) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return password == token

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        if owner.token is not None and not self._authorized(owner.token):
            owner.record(self.command, url.path, 401)
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="fleet"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._body() if self.command == "POST" else b""
        env = {
            "PATH": "/usr/bin:/bin",
            "GIT_PROJECT_ROOT": str(owner.base),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        owner.record(self.command, url.path, status)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: GitHttp) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", owner.port), _CgiHandler)


@dataclass
class GitHttp:
    base: Path
    token: str | None = None
    tls: TlsFiles | None = None
    port: int = field(default_factory=free_port)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    _server: _HttpServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str = "fleet.git") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{name}"

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def start(self) -> None:
        server = _HttpServer(self)
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="git-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def connections(self) -> int:
        """Authorized upload-pack requests (ref discovery and fetch POSTs)."""
        with self._lock:
            return sum(1 for _, path, status in self.requests if status == 200)


# -- sshd ---------------------------------------------------------------------------------


def ensure_git_user() -> str:
    """The unprivileged login user for sshd tests (created once, password '*' not '!').

    sshd without PAM refuses accounts whose password field starts with '!' (locked).
    """
    if subprocess.run(["id", "-u", GIT_USER], capture_output=True, check=False).returncode:
        done = subprocess.run(
            [
                "useradd",
                "--system",
                "--shell",
                "/bin/sh",
                "--home-dir",
                "/",
                "--no-create-home",
                GIT_USER,
            ],
            capture_output=True,
            check=False,
        )
        if done.returncode not in (0, 9):  # 9: created meanwhile by another test process
            raise RuntimeError(f"useradd {GIT_USER}: {done.stderr.decode().strip()}")
    shadow = subprocess.run(
        ["getent", "shadow", GIT_USER], capture_output=True, text=True, check=True
    ).stdout.split(":")
    if shadow[1].startswith("!"):
        subprocess.run(["usermod", "-p", "*", GIT_USER], check=True, capture_output=True)
    return GIT_USER


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class GitSshd:
    directory: Path
    shared: Path
    """A directory the login user can read (sshd reads authorized_keys as that user)."""
    port: int = field(default_factory=free_port)
    user: str = GIT_USER
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        self.host_key = d / "host_ed25519"
        host_pub = _keygen(self.host_key)
        self.client_key = d / "client_ed25519"
        authorized = self.shared / "authorized_keys"
        authorized.write_text(_keygen(self.client_key) + "\n")
        authorized.chmod(0o644)
        self.known_hosts = d / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        self.log = d / "sshd.log"
        self.config = d / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    f"AllowUsers {self.user}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "AcceptEnv GIT_PROTOCOL",
                    # The repo belongs to root; git must still serve it to the test user.
                    "SetEnv GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory "
                    "GIT_CONFIG_VALUE_0=*",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )

    def url(self, repo: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repo}"

    def start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_port(self.port)

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def connections(self) -> int:
        return self.log.read_text().count("Accepted publickey")


# -- the parametrized remote --------------------------------------------------------------


class _NoServer:
    """file:// needs no server; stopping it hides the repository instead."""

    def __init__(self, repo: FleetRepo) -> None:
        self.repo = repo
        self.hidden = repo.bare.with_name("fleet.git.hidden")

    def start(self) -> None:
        if self.hidden.exists():
            self.hidden.rename(self.repo.bare)

    def stop(self) -> None:
        self.repo.bare.rename(self.hidden)

    def connections(self) -> int:
        raise NotImplementedError("file:// has no server log")


@dataclass
class GitRemote:
    transport: str
    repo: FleetRepo
    server: GitServer
    url: str
    settings: dict[str, Any]

    def config(self, **overrides: Any) -> GitConfig:
        values: dict[str, Any] = {
            "url": self.url,
            "branch": "stable",
            "paths": ("common",),
            "timeout": 10.0,
            **self.settings,
        }
        values.update(overrides)
        return GitConfig(**values)


@pytest.fixture
def git_root() -> Iterator[Path]:
    """A temp dir every test user can read (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="edgefleet-git-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_remote(transport: str, root: Path, work: Path) -> GitRemote:
    """A fleet repository in ``root`` served over ``transport`` (server not started)."""
    repo = FleetRepo(root)
    server: GitServer
    settings: dict[str, Any] = {}
    if transport == "file":
        server, url = _NoServer(repo), repo.url
    elif transport == "git":
        daemon = GitDaemon(root, work / "git-daemon.log")
        server, url = daemon, daemon.url()
    elif transport in ("http", "https"):
        token_file = work / "token"
        token_file.write_text("s3cr3t-token-value\n")
        from tests.testbed.mosquitto import TlsFiles  # noqa: PLC0415

        tls = TlsFiles.create(work / "tls") if transport == "https" else None
        http = GitHttp(root, token="s3cr3t-token-value", tls=tls)
        server, url = http, http.url()
        settings = {"token_file": token_file, "ca_file": tls.ca if tls else None}
    elif transport == "ssh":
        ensure_git_user()
        sshd = GitSshd(work / "sshd", shared=root)
        server, url = sshd, sshd.url(repo.bare)
        settings = {"ssh_key": sshd.client_key, "known_hosts": sshd.known_hosts}
    else:
        raise ValueError(transport)
    return GitRemote(transport, repo, server, url, settings)


@pytest.fixture
def git_remote(
    request: pytest.FixtureRequest, git_root: Path, tmp_path: Path
) -> Iterator[GitRemote]:
    """Parametrize indirectly with a transport name from TRANSPORTS."""
    transport = getattr(request, "param", "git")
    remote = make_remote(transport, git_root, tmp_path)
    remote.server.start()
    try:
        yield remote
    finally:
        with contextlib.suppress(OSError):
            remote.server.stop()


@pytest.fixture
def silent_git_url() -> Iterator[str]:
    """A git:// URL whose server accepts connections (kernel backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        yield f"git://127.0.0.1:{silent.getsockname()[1]}/fleet.git"
