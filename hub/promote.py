"""Moving stage branches on the fleet repository (dulwich, blocking: call via to_thread).

The hub keeps a bare mirror of the stage branches (full history, under ``refs/heads/``
so fetches are incremental) to answer "does the candidate descend from the stage
head?" before a promotion and to build the pack if the server lacks an object.

A branch update is a compare-and-swap: the remote's advertised value must equal the
value the caller decided on, and the server checks it again while it holds the ref
lock. ``send_pack`` does not raise for a refused ref: ``ref_status`` is checked.

Clients come from :mod:`common.gittransport`: every read is bounded by ``[git] timeout``,
so a hung server fails the promotion (and frees the rollout lock) instead of blocking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from common.gittransport import PROTOCOL_VERSION, GitError, GitRemote
from hub.config import GitSettings
from hub.errors import BranchMoved, PromoteError

log = logging.getLogger(__name__)

_MIRROR_ERRORS = (OSError, NotGitRepository, ValueError, KeyError)
"""What the local mirror can raise (unreadable or broken files, a missing object)."""


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"


class StageGit:
    """Reads and moves stage branches of ``cfg.url``; ``mirror`` is a local bare repo."""

    def __init__(self, cfg: GitSettings, mirror: Path) -> None:
        if cfg.url is None:
            raise PromoteError("no [git] url configured: stage branches cannot be moved")
        self._remote = GitRemote(cfg)
        self._mirror = mirror
        self.before_update: Callable[[str, str | None, str], None] | None = None
        """Test hook: runs after the remote advertised the branch and before the update
        command is sent (branch, old, new) - the window a concurrent push can hit."""

    def _repo(self) -> Repo:
        if (self._mirror / "objects").is_dir():
            return Repo(str(self._mirror))
        self._mirror.mkdir(parents=True, exist_ok=True)
        return Repo.init_bare(str(self._mirror))

    def fetch(self, branches: Iterable[str]) -> dict[str, str]:
        """Fetch the branches' history into the mirror; returns their heads."""
        wanted = {f"refs/heads/{b}".encode(): b for b in branches}
        try:
            with self._repo() as repo, self._remote.session("fetch") as (client, path):
                result = client.fetch(
                    path,
                    repo,
                    determine_wants=lambda refs, depth=None: [
                        sha for ref, sha in refs.items()
                        if ref in wanted and sha and sha not in repo.object_store
                    ],
                    ref_prefix=list(wanted),
                    protocol_version=PROTOCOL_VERSION,
                )  # fmt: skip
                heads = {}
                for ref, sha in result.refs.items():
                    if ref in wanted and sha:
                        repo.refs[ref] = sha
                        heads[wanted[ref]] = sha.decode()
        except GitError as err:
            raise PromoteError(f"fetching stage branches failed: {err}") from err
        except _MIRROR_ERRORS as err:
            raise PromoteError(f"cannot update the stage mirror {self._mirror}: {err}") from err
        return heads

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """True if ``ancestor`` is ``descendant`` or in its history (both fetched)."""
        target = ancestor.encode()
        try:
            with self._repo() as repo:
                walker = repo.get_walker(include=[ObjectID(descendant.encode())])
                found = any(entry.commit.id == target for entry in walker)
        except _MIRROR_ERRORS as err:
            raise PromoteError(f"cannot walk history of {descendant[:12]}: {err}") from err
        return found

    def _confirm_moved(self, ref: bytes, branch: str, new: str) -> None:
        try:
            now = self._remote.refs("ls-remote", [ref]).get(Ref(ref))
        except GitError as err:
            raise PromoteError(f"cannot confirm the push of {branch}: {err}") from err
        if now != new.encode():
            raise BranchMoved(
                f"branch {branch} is at {_short(now.decode() if now else None)} after the "
                f"push, not {_short(new)}: someone else moved it"
            )

    def refs_under(self, prefix: str) -> dict[str, str]:
        """The server's refs under ``prefix`` (``refs/...``) and their commits."""
        try:
            found = self._remote.refs("ls-remote", [prefix.encode()])
        except GitError as err:
            raise PromoteError(f"listing {prefix} failed: {err}") from err
        return {ref.decode(): sha.decode() for ref, sha in found.items()}

    def update(self, branch: str, old: str | None, new: str) -> None:
        """Set ``branch`` (a branch name, or any full ``refs/...`` name such as a wave's
        ref) from ``old`` to ``new`` on the server; raises BranchMoved when it is not at
        ``old`` any more (checked twice: advertised and under the lock)."""
        ref = (branch if branch.startswith("refs/") else f"refs/heads/{branch}").encode()
        seen: list[bytes | None] = []

        def update_refs(refs: dict[bytes, bytes]) -> dict[bytes, bytes]:
            current = refs.get(ref)
            seen.append(current)
            if (current.decode() if current else None) != old:
                return dict(refs)  # unchanged: nothing is sent
            if self.before_update is not None:
                self.before_update(branch, old, new)
            return {**refs, ref: new.encode()}

        try:
            with self._repo() as repo, self._remote.session("push") as (client, path):

                def pack(
                    have: set[ObjectID], want: set[ObjectID], *, ofs_delta: bool = False,
                    progress: Callable[..., None] | None = None,
                ) -> tuple[int, Sequence[object]]:  # fmt: skip
                    # The commit usually is on the server already (another branch).
                    count, data = repo.generate_pack_data(have, want, ofs_delta=ofs_delta)
                    return count, list(data)

                result = client.send_pack(path, update_refs, pack)  # type: ignore[arg-type]
        except GitError as err:
            raise PromoteError(f"pushing {branch} failed: {err}") from err
        except _MIRROR_ERRORS as err:
            raise PromoteError(f"cannot read the stage mirror {self._mirror}: {err}") from err
        current = seen[0].decode() if seen and seen[0] else None
        if current != old:
            raise BranchMoved(
                f"branch {branch} was moved by someone else: expected {_short(old)}, "
                f"found {_short(current)}; nothing was pushed"
            )
        statuses = result.ref_status or {}
        if ref not in statuses:
            # A server without report-status (git's own receive-pack has it) says nothing: ask.
            self._confirm_moved(ref, branch, new)
            statuses = {ref: None}
        if statuses[ref] is not None:
            # The server re-checks the old value under its ref lock: someone pushed first.
            raise BranchMoved(
                f"branch {branch} was moved by someone else during the push "
                f"(server: {statuses[ref]}); it was not overwritten"
            )
        log.info("moved %s from %s to %s", branch, _short(old), _short(new))
