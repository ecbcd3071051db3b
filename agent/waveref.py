"""Follow this node's wave ref instead of its branch, but only along the branch's lineage.

The hub tells a node its wave with a retained ``edgefleet/v1/node/<node>/wave`` message
(``{"ref": "refs/edgefleet/waves/<stage>/<wave>"}``; empty = no wave). Whatever says so,
the wave commit is taken only when it descends from the stage branch's current head
(fast-forward): the wave can run ahead of the branch, never beside it. Otherwise, and
when the ref is missing, the node follows its branch and says why (log and event). The
commit taken still passes every trust check of the pipeline (signature, policy).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Protocol

from agent.reconcile import Source
from agent.sourcewrap import SourceWrapper

log = logging.getLogger(__name__)

WAVE_REF_RE = re.compile(r"refs/edgefleet/waves/[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}")
INVALID = "invalid"


def parse_wave_payload(payload: bytes) -> str | None:
    """The wave ref of a wave message, None for an empty one (no wave), else INVALID."""
    if not payload:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return INVALID
    ref = doc.get("ref") if isinstance(doc, dict) else None
    if isinstance(ref, str) and WAVE_REF_RE.fullmatch(ref):
        return ref
    return INVALID


class RefLister(Protocol):
    """Lists refs on the server (agent.source.GitSource)."""

    async def remote_refs(self, refs: Iterable[str]) -> dict[str, str]: ...


class WaveSource(SourceWrapper):
    """The pipeline's Git source with wave awareness; the rest is passed through."""

    def __init__(
        self, source: Source, refs: RefLister, branch: str, note: Callable[[str, str], None]
    ) -> None:
        super().__init__(source)
        self.refs = refs
        self._branch_ref = f"refs/heads/{branch}"
        self._note = note
        """Called with (head followed, why the branch and not the wave) on each change."""
        self.wave: str | None = None
        self._last = b""
        """The last wave message taken: a new one (a new commit hint too) wakes the node."""
        self.why_branch: str | None = None

    def set_wave(self, payload: bytes) -> bool:
        """Take a wave message; True if it is news (worth a reconcile now)."""
        ref = parse_wave_payload(payload)
        if ref == INVALID:
            log.warning("ignoring a malformed wave message: %r", payload[:200])
            return False
        changed = payload != self._last
        if ref != self.wave:
            log.info("wave: following %s", ref or self._branch_ref)
        self.wave, self._last = ref, payload
        return changed

    async def remote_head(self) -> str:
        if self.wave is None:
            self._follow_branch(None)
            return await self.source.remote_head()
        refs = await self.refs.remote_refs((self._branch_ref, self.wave))
        head = refs.get(self._branch_ref)
        if head is None:
            return await self.source.remote_head()  # raises the missing-branch error
        commit = refs.get(self.wave)
        if commit is None:
            return self._follow_branch(head, f"wave ref {self.wave} does not exist")
        if commit == head:
            return self._follow_branch(head, None)
        await self.source.fetch(commit)
        await self.source.fetch(head)
        if not await self.source.is_ancestor(head, commit):
            return self._follow_branch(
                head, f"wave ref {self.wave} at {commit[:12]} does not descend from {head[:12]}"
            )
        self._follow_branch(None)
        return commit

    def _follow_branch(self, head: str | None, why: str | None = None) -> str:
        if why != self.why_branch:
            if why is not None:
                log.warning("following the branch, not the wave: %s", why)
                self._note(head or "", why)
            self.why_branch = why
        return head or ""
