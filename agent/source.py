"""The Git source: cheap ls-remote, depth-1 fetch of one branch, a bounded local cache.

One bare repository at ``state_dir/repo.git`` caches what was fetched; it is a cache, so a
broken one is recreated. The head is stored under ``refs/heads/<branch>`` so the next
fetch only asks for new objects. Clients come from :mod:`common.gittransport` (protocol
v2, timeouts, strict SSH host keys, token auth); the commits are read by
:mod:`agent.gittree`.

All dulwich work runs in worker threads; transport errors become :class:`FetchError`
(the server could not be reached or refused us) and a missing branch or path a
:class:`SourceError`. Messages name the URL with any password removed and never contain
the token.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dulwich.errors import NotGitRepository
from dulwich.file import FileLocked
from dulwich.object_store import DiskObjectStore
from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from agent import gittree
from agent.blobsize import SizeBudget
from agent.config import FilesConfig, GitConfig
from agent.desired import DesiredState
from agent.errors import FetchError, SourceError, StateError
from common.gittransport import PROTOCOL_VERSION, GitError, GitRemote

log = logging.getLogger(__name__)

T = TypeVar("T")

DEEPEN_STEPS = (8, 64, 512)
"""History depths tried by :meth:`GitSource.is_ancestor` before it gives up (bounded)."""


def _remove_stale_locks(repo: Path) -> None:
    """Lock and temp files a killed agent left in its Git cache (kill -9 mid-fetch).

    Only this process writes the cache (the agent holds an flock on state_dir), so any
    lock found when opening it is stale; left in place, every later fetch would fail.
    """
    for pattern in ("**/*.lock", "objects/pack/tmp_*", "objects/tmp_*"):
        for stale in repo.glob(pattern):
            log.info("removing %s left by an interrupted Git operation", stale)
            stale.unlink(missing_ok=True)


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
        self._remote = GitRemote(cfg)
        self._url = self._remote.url
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

    async def remote_refs(self, refs: Iterable[str]) -> dict[str, str]:
        """ls-remote of exactly ``refs`` (full names, e.g. a wave ref and the branch)."""
        names = [Ref(r.encode()) for r in refs]
        found = await self._network("ls-remote", self._remote.refs, "ls-remote", names)
        return {r.decode(): sha.decode("ascii") for r, sha in found.items() if r in names}

    async def fetch(self, want: str | None = None) -> str:
        """Depth-1 fetch into the cache; returns the commit now local and under the ref.

        Without ``want`` the branch's current head is fetched. With ``want`` (the head seen
        by ls-remote or a ref notification) exactly that commit is made local, even if the
        branch moved on meanwhile; if it is already local, no network is used.
        """
        if want is not None and await asyncio.to_thread(self.has_commit, want):
            return want
        return await self._network("fetch", self._fetch, want)

    async def fetch_candidate(self, want: str, ref: str | None) -> None:
        """Make commit ``want`` local for a plan, without moving the branch ref.

        The candidate may not be on this node's branch: it is asked for by id, listing
        only ``ref`` (the branch, tag or pull ref the hub resolved it from) or else the
        branch. A server advertising ``ref`` at ``want`` always serves it; any other id
        needs a server that allows it (protocol v2, or ``uploadpack.allow*SHA1InWant``).
        """
        if not await asyncio.to_thread(self.has_commit, want):
            listed = Ref(ref.encode()) if ref else self._ref
            await self._network("fetch", self._deepen, want, 1, listed)

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
        except GitError as err:  # the agent's boundary: its retry policy keys on FetchError
            raise FetchError(str(err)) from err

    def _ls_remote(self) -> str:
        head = self._remote.refs("ls-remote", [self._ref]).get(self._ref)
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

            with self._remote.session("fetch") as (client, path):
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

    def _deepen(self, descendant: str, depth: int, listed: Ref | None = None) -> None:
        """Fetch commit ``descendant`` by id with ``depth`` of history, listing only the
        branch (or ``listed``) - a server serves any id it advertises among them."""
        want = ObjectID(descendant.encode("ascii"))

        def wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
            return [want]

        with self._write_lock:
            repo = self._open_repo()
            with self._remote.session("fetch" if listed else "deepen") as (client, path):
                client.fetch(
                    path,
                    repo,
                    determine_wants=wants,
                    depth=depth,
                    ref_prefix=[listed or self._ref],
                    protocol_version=PROTOCOL_VERSION,
                )
            if want not in repo.object_store:
                raise FetchError(f"git fetch {self._url}: server did not send {descendant}")

    def _no_branch(self) -> SourceError:
        return SourceError(f"branch {self._cfg.branch!r} does not exist at {self._url}")

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

    def _store(self) -> DiskObjectStore:
        return self._open_repo().object_store

    def object_store(self) -> DiskObjectStore:
        """The cache's objects, for readers beyond the overlay (agent.render)."""
        return self._store()

    def has_commit(self, sha: str) -> bool:
        """True if commit ``sha`` is in the local cache."""
        return gittree.find_commit(self._store(), sha) is not None

    def tree_ids(self, commit: str) -> dict[str, str | None]:
        """Per configured path: its tree id in ``commit``, None if absent."""
        return gittree.tree_ids(self._store(), commit, self._cfg.paths)

    def read_desired(self, commit: str) -> DesiredState:
        """The overlay of the configured paths at ``commit``, read from the trees."""
        budget = SizeBudget(commit, self._limits.max_file_size, self._limits.max_total_size)
        return gittree.read_desired(self._store(), commit, self._cfg.paths, budget)

    def signed_payload(self, commit: str) -> tuple[bytes, bytes | None]:
        """(commit bytes without the gpgsig header, signature or None): what git signs."""
        return gittree.signed_payload(self._store(), commit)

    def _ancestry(self, ancestor: str, descendant: str) -> bool | None:
        return gittree.ancestry(self._store(), ancestor, descendant)

    # -- housekeeping -------------------------------------------------------------------

    def pack_count(self) -> int:
        """Pack files in the cache: every fetch that brought objects added one."""
        return sum(1 for _ in (self._path / "objects/pack").glob("*.pack"))

    def maintain(self, keep: Iterable[str] = ()) -> None:
        """Repack the cache into one pack holding only the branch head and ``keep``.

        ``keep`` names commits that must stay readable offline (applied, last good). The
        cache is thereby bounded to those snapshots; the daemon calls it when packs pile
        up, never concurrently with a fetch of another GitSource on the same directory.
        """
        with self._write_lock:
            repo = self._open_repo()
            store = repo.object_store
            shas = [*keep, *([repo.refs[self._ref].decode()] if self._ref in repo.refs else [])]
            commits = [c for c in (gittree.find_commit(store, sha) for sha in shas) if c]
            roots = {c.id for c in commits}
            wanted = gittree.snapshot_objects(store, roots)
            try:
                store.repack(exclude={sha for sha in store if sha not in wanted})
                for ref in repo.refs.allkeys():
                    if ref not in (self._ref, b"HEAD"):
                        del repo.refs[ref]
                # Kept commits whose parents were dropped are the new shallow boundary.
                shallow = {c.id for c in commits if any(p not in roots for p in c.parents)}
                repo.update_shallow(shallow, repo.get_shallow() - shallow)
            except OSError as err:
                raise StateError(f"cannot repack Git cache {self._path}: {err}") from err

    def close(self) -> None:
        """Close the cached repository (its pack files and indexes)."""
        if self._repo is not None:
            self._repo.close()
            self._repo = None
