"""The Git source: cheap ls-remote, depth-1 fetch of one branch, desired state from trees.

One bare repository at ``state_dir/repo.git`` caches what was fetched; it is a cache, so a
broken one is recreated. Every network operation speaks Git protocol v2 (TESTBED.md:
depth-1 fetches with v0 break on the third fetch over git:// and SSH) and stores the head
under ``refs/heads/<branch>`` so the next fetch only asks for new objects.

Transports: ``file://`` (``git upload-pack`` subprocess; dulwich's in-process local client
ignores shallow bookkeeping), ``git://`` (with socket timeouts), ``ssh://`` and
``user@host:path`` (OpenSSH client, host keys checked against ``known_hosts``, never
accepted on first use), ``http(s)://`` smart HTTP. An HTTP token is read from
``token_file`` at every operation (so it can rotate) and sent as HTTP **basic** auth:
the URL's user name (``https://oauth2@host/...``) or ``x-access-token``, with the token as
password; GitHub, GitLab, Gitea and Bitbucket accept that form.

All dulwich work runs in worker threads; library errors become :class:`FetchError`
(transient: unreachable, timeout, auth, TLS) or :class:`SourceError` (terminal: missing
branch or path, submodule). Messages name the URL with any password removed and never
contain the token.
"""

from __future__ import annotations

import asyncio
import logging
import select
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar
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
from dulwich.file import FileLocked
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.protocol import Protocol
from dulwich.refs import Ref
from dulwich.repo import Repo

from agent.blobsize import SizeBudget, blob_size
from agent.config import FilesConfig, GitConfig
from agent.desired import (
    GIT_MODE_SUBMODULE,
    OPTIONS_FILE,
    DesiredFile,
    DesiredState,
    Options,
    merge_options,
    parse_options,
)
from agent.errors import FetchError, SourceError, StateError

log = logging.getLogger(__name__)

T = TypeVar("T")

PROTOCOL_VERSION = 2
DEEPEN_STEPS = (8, 64, 512)
"""History depths tried by :meth:`GitSource.is_ancestor` before it gives up (bounded)."""
DEFAULT_HTTP_USER = "x-access-token"


def _remove_stale_locks(repo: Path) -> None:
    """Lock and temp files a killed agent left in its Git cache (kill -9 mid-fetch).

    Only this process writes the cache (the agent holds an flock on state_dir), so any
    lock found when opening it is stale; left in place, every later fetch would fail.
    """
    for pattern in ("**/*.lock", "objects/pack/tmp_*", "objects/tmp_*"):
        for stale in repo.glob(pattern):
            log.info("removing %s left by an interrupted Git operation", stale)
            stale.unlink(missing_ok=True)


_NETWORK_ERRORS = (
    GitProtocolError,  # includes HangupException (server closed, ssh refused, host key)
    NotGitRepository,  # HTTP 404
    HTTPUnauthorized,
    HTTPProxyUnauthorized,
    urllib3.exceptions.HTTPError,
    OSError,  # refused, unreachable, socket timeouts, TLS (ssl.SSLError)
)


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

    _opened: list[Protocol]

    def _track(
        self, conn: tuple[Protocol, Callable[[], bool], IO[bytes] | None]
    ) -> tuple[Protocol, Callable[[], bool], IO[bytes] | None]:
        self._opened = [*getattr(self, "_opened", []), conn[0]]
        return conn

    def _connect(
        self, cmd: bytes, path: str | bytes, protocol_version: int | None = None
    ) -> tuple[Protocol, Callable[[], bool], IO[bytes] | None]:
        return self._track(super()._connect(cmd, path, protocol_version))

    def close(self) -> None:
        for proto in getattr(self, "_opened", []):
            proto.close()  # idempotent
        super().close()


class _SshClient(_ClosingClient, SSHGitClient):
    pass


class _LocalClient(_ClosingClient, SubprocessGitClient):
    """file:// through ``git upload-pack``: dulwich's in-process LocalGitClient ignores
    depth bookkeeping (no shallow file), so the cache would look complete when it is not."""


class _TcpGitClient(_ClosingClient, TCPGitClient):
    """git:// with connect and read timeouts; dulwich's own socket blocks forever."""

    def __init__(self, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port)
        self._timeout = timeout

    def _connect(
        self, cmd: bytes, path: str | bytes, protocol_version: int | None = None
    ) -> tuple[Protocol, Callable[[], bool], IO[bytes] | None]:
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
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return

        def can_read() -> bool:
            return bool(select.select([sock], [], [], 0)[0])

        proto = Protocol(rfile.read, wfile.write, close, shutdown_write=shutdown_write)
        self.protocol_version = PROTOCOL_VERSION
        # The version rides behind two NULs so old daemons ignore it (as git does).
        extra = b"host=" + self._host.encode("ascii") + b"\0\0version=2\0"
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

    def __init__(self, cfg: GitConfig) -> None:
        self._cfg = cfg

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
        cfg = self._cfg
        alive = max(1, int(cfg.timeout / 3))
        args = [
            "ssh",
            "-x",
            "-F",
            "/dev/null",  # the agent config is the only source of SSH settings
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={max(1, int(cfg.timeout))}",
            "-o",
            f"ServerAliveInterval={alive}",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            f"SetEnv=GIT_PROTOCOL=version={PROTOCOL_VERSION}",
        ]
        if cfg.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={cfg.known_hosts}"]
            args += ["-o", "GlobalKnownHostsFile=/dev/null"]
        if cfg.ssh_key is not None:
            args += ["-i", str(cfg.ssh_key), "-o", "IdentitiesOnly=yes"]
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


def _scp_parts(url: str) -> tuple[str | None, str, str]:
    """``user@host:path`` -> (user, host, path)."""
    userhost, path = url.split(":", 1)
    user, _, host = userhost.rpartition("@")
    return user or None, host, path


def _describe(err: BaseException) -> str:
    """A short, human reason for a transport failure (secrets scrubbed by the caller)."""
    if isinstance(err, HTTPUnauthorized):
        return "authentication failed (HTTP 401); check token_file"
    if isinstance(err, HTTPProxyUnauthorized):
        return "proxy authentication failed (HTTP 407)"
    if isinstance(err, NotGitRepository):
        return "no Git repository at this URL (HTTP 404)"
    cause = err.__cause__
    if isinstance(cause, urllib3.exceptions.MaxRetryError) and cause.reason is not None:
        return str(cause.reason)
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).strip() or type(err).__name__


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


class GitSource:
    """This node's branch of the fleet repository, cached in ``state_dir/repo.git``.

    Network methods are coroutines (dulwich runs in a worker thread, bounded by
    ``cfg.timeout``); the tree readers are plain methods the caller may run in a thread.
    """

    def __init__(self, cfg: GitConfig, state_dir: Path, limits: FilesConfig | None = None) -> None:
        self._cfg = cfg
        self._limits = limits or FilesConfig()  # only its max_file_size, max_total_size
        self._path = state_dir / "repo.git"
        self._ref = Ref(f"refs/heads/{cfg.branch}".encode())
        self._url = redact_url(cfg.url)
        self._secrets: set[str] = set()
        password = urlsplit(cfg.url).password if "://" in cfg.url else None
        if password:
            self._secrets.add(password)
        self._repo: Repo | None = None
        # One writer of repo.git at a time: fetch, deepen and maintain run in threads.
        self._write_lock = threading.Lock()
        self._reachable = True

    @property
    def url(self) -> str:
        """The repository URL without any password (for reports)."""
        return self._url

    # -- network -----------------------------------------------------------------------

    async def remote_head(self) -> str:
        """The branch head on the server: ls-remote of only ``refs/heads/<branch>``."""
        return await self._network("ls-remote", self._ls_remote)

    async def fetch(self, want: str | None = None) -> str:
        """Depth-1 fetch into the cache; returns the commit now local and under the ref.

        Without ``want`` the branch's current head is fetched. With ``want`` (the head seen
        by ls-remote or a ref notification) exactly that commit is made local, even if the
        branch moved on meanwhile; if it is already local, no network is used.
        """
        if want is not None and await asyncio.to_thread(self.has_commit, want):
            return want
        return await self._network("fetch", self._fetch, want)

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """True if ``ancestor`` is in the history of ``descendant`` (both may be equal).

        The cache is shallow: parents already present answer the common case without
        network; otherwise the history is deepened step by step (DEEPEN_STEPS). A gap
        longer than the last step counts as "not an ancestor" (the caller refuses the
        move rather than fetching unbounded history).
        """
        verdict = await asyncio.to_thread(self._ancestry, ancestor, descendant)
        for depth in DEEPEN_STEPS:
            if verdict is not None:
                return verdict
            await self._network("deepen", self._deepen, descendant, depth)
            verdict = await asyncio.to_thread(self._ancestry, ancestor, descendant)
        if verdict is None:
            log.warning(
                "commit %s is not within %d commits of %s; treating it as not an ancestor",
                ancestor[:12],
                DEEPEN_STEPS[-1],
                descendant[:12],
            )
            return False
        return verdict

    async def _network(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            async with asyncio.timeout(self._cfg.timeout):
                result = await asyncio.to_thread(self._guard, op, fn, *args)
        except TimeoutError as err:
            fetch_err = FetchError(f"git {op} {self._url}: no answer within {self._cfg.timeout:g}s")
            self._mark(fetch_err)
            raise fetch_err from err
        except FetchError as err:
            self._mark(err)
            raise
        self._mark(None)
        return result

    def _mark(self, err: FetchError | None) -> None:
        """Log reachability on transitions only."""
        if err is not None and self._reachable:
            log.warning("git unreachable: %s", err)
        elif err is None and not self._reachable:
            log.info("git %s reachable again", self._url)
        self._reachable = err is None

    def _guard(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except FileLocked as err:  # another writer, or a lock left behind we could not clear
            raise StateError(f"Git cache {self._path} is locked: {err}") from err
        except _NETWORK_ERRORS as err:
            raise FetchError(f"git {op} {self._url}: {self._scrub(_describe(err))}") from err

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _ls_remote(self) -> str:
        with self._client() as (client, path):
            result = client.get_refs(
                path.encode("utf-8"), protocol_version=PROTOCOL_VERSION, ref_prefix=[self._ref]
            )
        head = result.refs.get(self._ref)
        if head is None:
            raise self._no_branch()
        return str(head.decode("ascii"))

    def _fetch(self, want: str | None) -> str:
        with self._write_lock:
            repo = self._open_repo()
            seen: list[ObjectID] = []

            def wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
                head = refs.get(self._ref)
                if head is None:
                    return []
                seen.append(head)
                target = ObjectID(want.encode("ascii")) if want else head
                return [] if target in repo.object_store else [target]

            with self._client() as (client, path):
                client.fetch(
                    path,
                    repo,
                    determine_wants=wants,
                    depth=1,
                    ref_prefix=[self._ref],
                    protocol_version=PROTOCOL_VERSION,
                )
            if not seen:
                raise self._no_branch()
            got = ObjectID(want.encode("ascii")) if want else seen[0]
            if got not in repo.object_store:
                raise FetchError(f"git fetch {self._url}: server did not send {got.decode()}")
            repo.refs[self._ref] = got
            return str(got.decode("ascii"))

    def _deepen(self, descendant: str, depth: int) -> None:
        want = ObjectID(descendant.encode("ascii"))

        def wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
            return [want]

        with self._write_lock:
            repo = self._open_repo()
            with self._client() as (client, path):
                client.fetch(
                    path,
                    repo,
                    determine_wants=wants,
                    depth=depth,
                    ref_prefix=[self._ref],
                    protocol_version=PROTOCOL_VERSION,
                )

    def _no_branch(self) -> SourceError:
        return SourceError(f"branch {self._cfg.branch!r} does not exist at {self._url}")

    @contextmanager
    def _client(self) -> Iterator[tuple[GitClient, str]]:
        cfg = self._cfg
        parts = urlsplit(cfg.url)
        client: GitClient
        if parts.scheme == "file":
            sub = _LocalClient()
            sub.git_command = ["env", f"GIT_PROTOCOL=version={PROTOCOL_VERSION}", "git"]
            client, path = sub, parts.path
        elif parts.scheme == "git":
            client = _TcpGitClient(parts.hostname or "localhost", parts.port, cfg.timeout)
            path = parts.path
        elif parts.scheme in ("http", "https"):
            client, path = self._http_client(), parts.path
        else:
            if parts.scheme == "ssh":
                user, host, path = parts.username, parts.hostname or "", parts.path
            else:
                user, host, path = _scp_parts(cfg.url)
            client = _SshClient(
                host,
                port=parts.port if parts.scheme else None,
                username=user,
                vendor=_SshVendor(cfg),
            )
        try:
            yield client, path
        finally:
            client.close()
            if isinstance(client, Urllib3HttpGitClient):
                client.pool_manager.clear()

    def _http_client(self) -> Urllib3HttpGitClient:
        cfg = self._cfg
        parts = urlsplit(cfg.url)
        username, password = parts.username, parts.password
        if cfg.token_file is not None:
            try:
                token = cfg.token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise FetchError(
                    f"git {self._url}: cannot read token_file {cfg.token_file}"
                ) from err
            if not token:
                raise FetchError(f"git {self._url}: token_file {cfg.token_file} is empty")
            self._secrets.add(token)
            username, password = username or DEFAULT_HTTP_USER, token
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        pool = _HttpPool(
            headers={"User-Agent": default_user_agent_string()},
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            timeout=urllib3.Timeout(connect=cfg.timeout, read=cfg.timeout),
            # The agent retries with backoff itself; here only redirects are followed.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=3),
        )
        return Urllib3HttpGitClient(
            urlunsplit((parts.scheme, netloc, "/", "", "")),
            pool_manager=pool,
            username=username,
            password=password,
        )

    # -- local repository ---------------------------------------------------------------

    def _open_repo(self) -> Repo:
        if self._repo is not None:
            return self._repo
        path = self._path
        try:
            if (path / "HEAD").is_file() and (path / "objects/pack").is_dir():
                _remove_stale_locks(path)
                try:
                    self._repo = Repo(str(path), bare=True)
                except (NotGitRepository, ValueError, KeyError) as err:
                    # It is only a cache: a broken one (crash mid-init, disk trouble) is rebuilt.
                    log.warning("Git cache %s is unusable (%s); recreating it", path, err)
                else:
                    return self._repo
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._repo = Repo.init_bare(str(path), mkdir=True)
        except OSError as err:
            raise StateError(f"cannot open Git cache {path}: {err.strerror or err}") from err
        return self._repo

    def has_commit(self, sha: str) -> bool:
        """True if commit ``sha`` is in the local cache."""
        if not _is_sha(sha):
            return False
        try:
            obj = self._open_repo().object_store[ObjectID(sha.encode("ascii"))]
        except KeyError:
            return False
        return isinstance(obj, Commit)

    def _commit(self, sha: str) -> Commit:
        if not self.has_commit(sha):
            raise SourceError(f"commit {sha[:12]} is not in the local Git cache (fetch it first)")
        obj = self._open_repo().object_store[ObjectID(sha.encode("ascii"))]
        assert isinstance(obj, Commit)
        return obj

    def _object(self, sha: ObjectID, commit: str) -> ShaFile:
        try:
            return self._open_repo().object_store[sha]
        except KeyError as err:
            raise SourceError(
                f"object {sha.decode()[:12]} of commit {commit[:12]} is missing from the Git cache"
            ) from err

    def _lookup(self, commit: str, tree: ObjectID, path: str) -> tuple[int, ObjectID] | None:
        """(mode, sha) of ``path`` below ``tree``, or None if it does not exist."""
        mode, sha = stat.S_IFDIR, tree
        for name in path.split("/"):
            if not stat.S_ISDIR(mode):
                return None
            obj = self._object(sha, commit)
            assert isinstance(obj, Tree)
            try:
                mode, sha = obj[name.encode("utf-8")]
            except KeyError:
                return None
        return mode, sha

    def tree_ids(self, commit: str) -> dict[str, str | None]:
        """Per configured path: its tree id in ``commit``, None if absent."""
        root = self._commit(commit).tree
        result: dict[str, str | None] = {}
        for path in self._cfg.paths:
            found = self._lookup(commit, root, path)
            result[path] = found[1].decode("ascii") if found else None
        return result

    def read_desired(self, commit: str) -> DesiredState:
        """The overlay of the configured paths at ``commit``, read from the trees."""
        root = self._commit(commit).tree
        files: dict[str, DesiredFile] = {}
        layers: list[Options] = []
        budget = SizeBudget(commit, self._limits.max_file_size, self._limits.max_total_size)
        for origin in self._cfg.paths:
            found = self._lookup(commit, root, origin)
            if found is None or not stat.S_ISDIR(found[0]):
                what = "does not exist" if found is None else "is not a directory"
                raise SourceError(f"path {origin!r} {what} in commit {commit[:12]}")
            for rel, mode, data in self._walk(commit, origin, found[1], budget):
                if rel == OPTIONS_FILE:
                    layers.append(parse_options(origin, data))
                else:
                    files[rel] = DesiredFile(path=rel, data=data, git_mode=mode, origin=origin)
        return DesiredState(
            commit=commit,
            paths=self._cfg.paths,
            files=files,
            options=merge_options(layers),
        )

    def _walk(
        self, commit: str, origin: str, tree: ObjectID, budget: SizeBudget
    ) -> Iterator[tuple[str, int, bytes]]:
        """(relative path, git mode, bytes) of every blob below ``tree``, within ``budget``."""
        pending: list[tuple[str, ObjectID]] = [("", tree)]
        while pending:
            prefix, sha = pending.pop()
            obj = self._object(sha, commit)
            assert isinstance(obj, Tree)
            for entry in obj.iteritems():
                name = prefix + entry.path.decode("utf-8", "surrogateescape")
                if entry.mode == GIT_MODE_SUBMODULE:
                    raise SourceError(
                        f"{origin}/{name} in commit {commit[:12]} is a submodule "
                        "(not supported; vendor its files instead)"
                    )
                if stat.S_ISDIR(entry.mode):
                    pending.append((name + "/", entry.sha))
                    continue
                size = blob_size(self._open_repo().object_store, entry.sha)
                if size is not None:  # a missing blob: _object names it
                    budget.take(f"{origin}/{name}", size)
                blob = self._object(entry.sha, commit)
                assert isinstance(blob, Blob)
                yield name, entry.mode, blob.as_raw_string()

    def signed_payload(self, commit: str) -> tuple[bytes, bytes | None]:
        """(commit bytes without the gpgsig header, signature or None): what git signs."""
        obj = self._commit(commit)
        signature: bytes | None = obj.gpgsig
        if signature is None:
            return obj.as_raw_string(), None
        return obj.raw_without_sig(), signature

    def _ancestry(self, ancestor: str, descendant: str) -> bool | None:
        """True/False if the local history decides it, None if a parent is missing."""
        if ancestor == descendant:
            return True
        target = ObjectID(ancestor.encode("ascii"))
        store = self._open_repo().object_store
        pending = [self._commit(descendant)]
        seen: set[ObjectID] = set()
        incomplete = False
        while pending:
            for parent in pending.pop().parents:
                if parent == target:
                    return True
                if parent in seen:
                    continue
                seen.add(parent)
                try:
                    obj = store[parent]
                except KeyError:
                    incomplete = True  # beyond the shallow boundary
                    continue
                if isinstance(obj, Commit):
                    pending.append(obj)
        return None if incomplete else False

    # -- housekeeping -------------------------------------------------------------------

    def maintain(self, keep: Iterable[str] = ()) -> None:
        """Repack the cache into one pack holding only the branch head and ``keep``.

        ``keep`` names commits that must stay readable offline (applied, last good). The
        cache is thereby bounded to those snapshots; call it now and then (e.g. daily),
        not concurrently with a fetch of another GitSource on the same directory.
        """
        with self._write_lock:
            repo = self._open_repo()
            store = repo.object_store
            roots = {ObjectID(sha.encode("ascii")) for sha in keep if self.has_commit(sha)}
            if self._ref in repo.refs:
                roots.add(repo.refs[self._ref])
            wanted = set(roots)
            for root in roots:
                obj = store[root]
                assert isinstance(obj, Commit)
                self._collect_tree(obj.tree, wanted)
            try:
                store.repack(exclude={sha for sha in store if sha not in wanted})
                for ref in repo.refs.allkeys():
                    if ref not in (self._ref, b"HEAD"):
                        del repo.refs[ref]
                shallow: set[ObjectID] = set()
                for root in roots:
                    obj = store[root]
                    assert isinstance(obj, Commit)
                    if any(parent not in roots for parent in obj.parents):
                        shallow.add(root)
                repo.update_shallow(shallow, repo.get_shallow() - shallow)
            except OSError as err:
                raise StateError(f"cannot repack Git cache {self._path}: {err}") from err

    def _collect_tree(self, tree: ObjectID, into: set[ObjectID]) -> None:
        store = self._open_repo().object_store
        pending = [tree]
        into.add(tree)
        while pending:
            obj = store[pending.pop()]
            assert isinstance(obj, Tree)
            for entry in obj.iteritems():
                if entry.mode == GIT_MODE_SUBMODULE or entry.sha in into:
                    continue
                into.add(entry.sha)
                if stat.S_ISDIR(entry.mode):
                    pending.append(entry.sha)

    def close(self) -> None:
        """Close the cached repository (its pack files and indexes)."""
        if self._repo is not None:
            self._repo.close()
            self._repo = None
