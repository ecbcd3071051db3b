"""Tracks the head of every stage branch and announces changes over MQTT.

One ls-remote (limited to ``refs/heads/``, through :mod:`common.gittransport`, so a
hung server fails after ``[git] timeout``) per interval; when a stage head changes, a
retained ``edgefleet/v1/ref/<branch>`` message tells the agents of that stage to fetch
at once instead of waiting for their own poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from common import wire
from common.gittransport import GitError, GitRemote
from hub.config import GitSettings
from hub.errors import GitWatchError

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], bool]


class GitWatch:
    def __init__(
        self,
        cfg: GitSettings,
        branches: Sequence[str],
        publish: Publish,
        may_announce: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """``may_announce``: asked before the announcements of a poll; of several hub
        replicas only the leader, its fencing token confirmed, announces."""
        self._cfg = cfg
        self._may_announce = may_announce
        self._remote = GitRemote(cfg) if cfg.url is not None else None
        self._branches = tuple(branches)
        self._publish = publish
        self.heads: dict[str, str] = {}
        """Last seen head commit per stage branch."""
        self._announced: dict[str, str] = {}
        self._failing = False
        self._polling = asyncio.Lock()

    def _ls_remote(self) -> dict[str, str]:
        """Blocking: the heads of the stage branches (runs in a thread)."""
        if self._remote is None:
            raise GitWatchError("no [git] url configured: stage heads cannot be read")
        try:
            refs = self._remote.refs("ls-remote", [b"refs/heads/"])
        except GitError as err:
            raise GitWatchError(str(err)) from err
        wanted = {f"refs/heads/{b}".encode(): b for b in self._branches}
        return {wanted[k]: v.decode() for k, v in refs.items() if k in wanted}

    async def poll_once(self) -> dict[str, str]:
        """Refresh heads and announce changes; raises GitWatchError."""
        heads = await asyncio.to_thread(self._ls_remote)
        for branch, sha in heads.items():
            if self.heads.get(branch) != sha:
                log.info("stage branch %s is at %s", branch, sha[:12])
        self.heads = heads
        if self._unannounced() and (self._may_announce is None or await self._may_announce()):
            self.announce()
        return heads

    def _unannounced(self) -> bool:
        return any(self._announced.get(branch) != sha for branch, sha in self.heads.items())

    async def refresh(self) -> dict[str, str]:
        """``poll_once`` serialised with every other refresh (interval poll, push webhook), so
        a listing started earlier never overwrites, and re-announces, a newer one."""
        async with self._polling:
            return await self.poll_once()

    def announce(self, force: bool = False) -> None:
        """Publish retained ref messages for heads not announced yet (or all, with force)."""
        for branch, sha in self.heads.items():
            if force or self._announced.get(branch) != sha:
                payload = wire.ref_payload(sha, time.time())
                if self._publish(wire.ref_topic(branch), payload, 1, True):
                    self._announced[branch] = sha

    def moved(self, branch: str, sha: str) -> None:
        """The hub itself moved ``branch`` (promotion, rollback): announce it right away
        instead of at the next poll."""
        if self.heads.get(branch) != sha:
            log.info("stage branch %s is at %s", branch, sha[:12])
        self.heads = {**self.heads, branch: sha}
        self.announce()

    async def run(self, stop: asyncio.Event) -> None:
        if self._remote is None or not self._branches:
            return
        while not stop.is_set():
            try:
                await self.refresh()
            except GitWatchError as err:
                if not self._failing:
                    log.warning("%s; stage heads are unknown until it recovers", err)
                    self._failing = True
            else:
                if self._failing:
                    log.info("fleet repository reachable again")
                    self._failing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._cfg.interval)
