"""A pipeline Source that decides the head and passes everything else to the one below."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # agent.reconcile imports the wrappers' users
    from agent.desired import DesiredState
    from agent.reconcile import Source


class SourceWrapper:
    """Subclasses override :meth:`remote_head`; the cache and history calls pass through."""

    def __init__(self, source: Source) -> None:
        self.source = source

    async def remote_head(self) -> str:
        return await self.source.remote_head()

    async def fetch(self, want: str | None = None) -> str:
        return await self.source.fetch(want)

    def has_commit(self, sha: str) -> bool:
        return self.source.has_commit(sha)

    def tree_ids(self, commit: str) -> dict[str, str | None]:
        return self.source.tree_ids(commit)

    def read_desired(self, commit: str) -> DesiredState:
        return self.source.read_desired(commit)

    def signed_payload(self, commit: str) -> tuple[bytes, bytes | None]:
        return self.source.signed_payload(commit)

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return await self.source.is_ancestor(ancestor, descendant)
