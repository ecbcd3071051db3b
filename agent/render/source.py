"""Render a commit's desired state on the node: values, ``*.j2`` templates, ``*.age`` secrets.

:class:`RenderingSource` wraps :class:`agent.source.GitSource` for the reconcile pipeline:
``read_desired`` returns the overlay with templates rendered and secrets decrypted, the
placed names without ``.j2``/``.age``. A commit without such files never starts the
child. Any failure (undefined name, sandbox violation, a secret this node cannot
decrypt, clashing values) is a SourceError: the whole commit is refused, nothing applied.

Secrets are placed only by the files target (mode 0600, inventory digest keyed: see
:mod:`agent.render.seal`). Unit files are world-readable and manifests are sent to the
API server as they are, so secret values may not reach ``systemd/`` or ``manifests/``;
point a unit at a secret file instead (``EnvironmentFile=``).
"""

from __future__ import annotations

import base64
import json
import logging
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, ObjectID, Tree

from agent.config import AgentConfig, FilesConfig
from agent.desired import DesiredFile, DesiredState
from agent.errors import SourceError
from agent.render.values import LAYER_FILES, SECRETS_FILE, VALUES_FILE
from agent.source import GitSource

log = logging.getLogger(__name__)

TEMPLATE_SUFFIX = ".j2"
SECRET_SUFFIX = ".age"  # noqa: S105 - a file name suffix
RENDERED_DIRS = ("files/", "systemd/", "manifests/")
TIMEOUT = 60.0


@dataclass(frozen=True)
class NodeFacts:
    """What the agent config tells templates about this node."""

    node: str
    labels: Mapping[str, str]
    branch: str
    identity: Path
    max_file_size: int = FilesConfig.max_file_size
    max_total_size: int = FilesConfig.max_total_size
    """[targets.files] limits, applied to what rendering and decryption produce too."""

    @classmethod
    def of(cls, cfg: AgentConfig) -> NodeFacts:
        files = cfg.targets.files
        return cls(
            cfg.node,
            cfg.labels,
            cfg.git.branch,
            cfg.secrets.identity,
            files.max_file_size,
            files.max_total_size,
        )


def _command() -> list[str]:
    return [sys.executable, "-I", "-m", "agent.render.engine"]


def _run_child(request: dict[str, Any]) -> dict[str, Any]:
    """One child run; its stdout may hold plaintext, so only stderr goes into errors."""
    try:
        done = subprocess.run(
            _command(),
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise SourceError(f"rendering took longer than {TIMEOUT:g}s") from err
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except ValueError as err:
        tail = done.stderr.decode("utf-8", "replace")[-300:]
        raise SourceError(f"renderer failed (exit {done.returncode}): {tail}") from err
    if "error" in answer:
        raise SourceError(str(answer["error"]))
    return answer


def recipient(identity: Path) -> str | None:
    """This node's age recipient, None when it has no identity yet (or a broken one)."""
    if not identity.exists():
        return None
    try:
        return str(_run_child({"op": "recipient", "identity": str(identity)})["recipient"])
    except SourceError as err:
        log.warning("no age recipient to report: %s", err)
        return None


def _placed(path: str) -> str | None:
    """The name a file is placed under, None if it is not rendered or decrypted."""
    if not path.startswith(RENDERED_DIRS):
        return None
    for suffix in (TEMPLATE_SUFFIX, SECRET_SUFFIX):
        if path.endswith(suffix) and len(path.rsplit("/", 1)[-1]) > len(suffix):
            return path.removesuffix(suffix)
    return None


def needs_rendering(desired: DesiredState) -> bool:
    return any(p in (VALUES_FILE, SECRETS_FILE) or _placed(p) for p in desired.files)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class RenderingSource:
    """The pipeline's Source: GitSource with ``read_desired`` rendering on the node."""

    def __init__(self, inner: GitSource, facts: NodeFacts) -> None:
        self.inner = inner
        self.facts = facts

    async def remote_head(self) -> str:
        return await self.inner.remote_head()

    async def fetch(self, want: str | None = None) -> str:
        return await self.inner.fetch(want)

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return await self.inner.is_ancestor(ancestor, descendant)

    def has_commit(self, sha: str) -> bool:
        return self.inner.has_commit(sha)

    def tree_ids(self, commit: str) -> dict[str, str | None]:
        return self.inner.tree_ids(commit)

    def signed_payload(self, commit: str) -> tuple[bytes, bytes | None]:
        return self.inner.signed_payload(commit)

    def read_desired(self, commit: str) -> DesiredState:
        raw = self.inner.read_desired(commit)
        if not needs_rendering(raw):
            return raw
        return render(raw, self._layers(commit), self.facts)

    def _layers(self, commit: str) -> list[dict[str, Any]]:
        """values.toml / secrets.toml.age of every path (the overlay keeps only the last)."""
        store = self.inner.object_store()
        layers = []
        for origin, tree in self.inner.tree_ids(commit).items():
            layer: dict[str, Any] = {"origin": origin}
            for field, name in LAYER_FILES.items():
                data = _root_blob(store, tree, f"{origin}/{name}") if tree else None
                layer[field] = _b64(data) if data is not None else None
            layers.append(layer)
        return layers


def _root_blob(store: BaseObjectStore, tree_id: str, where: str) -> bytes | None:
    """The blob ``origin/name`` at the root of a path's tree, None if absent."""
    tree = store[ObjectID(tree_id.encode("ascii"))]
    assert isinstance(tree, Tree)
    try:
        mode, sha = tree[where.rsplit("/", 1)[1].encode()]
    except KeyError:
        return None
    if not stat.S_ISREG(mode):
        raise SourceError(f"{where} must be a regular file")
    blob = store[sha]
    assert isinstance(blob, Blob)
    return blob.as_raw_string()


def _winners(desired: DesiredState) -> dict[str, DesiredFile]:
    """Placed name -> the file that provides it; a later path wins, as for plain files."""
    order = {origin: n for n, origin in enumerate(desired.paths)}
    chosen: dict[str, DesiredFile] = {}
    for path, f in sorted(desired.files.items()):
        if path in (VALUES_FILE, SECRETS_FILE):
            continue
        placed = _placed(path) or path
        other = chosen.get(placed)
        if other is not None and order[other.origin] == order[f.origin]:
            raise SourceError(
                f"{f.origin}: both {other.path} and {f.path} would be placed as {placed}"
            )
        if other is None or order[f.origin] > order[other.origin]:
            chosen[placed] = f
    return chosen


def render(raw: DesiredState, layers: list[dict[str, Any]], facts: NodeFacts) -> DesiredState:
    """The rendered overlay (blocking: runs the child once)."""
    winners = _winners(raw)
    templates, encrypted = [], []
    for placed, f in winners.items():
        if f.path == placed:
            continue
        entry = {"path": f.path, "origin": f.origin, "data": _b64(f.data)}
        if f.path.endswith(TEMPLATE_SUFFIX):
            templates.append(entry)
        elif placed.startswith("files/"):
            encrypted.append(entry)
        else:
            raise SourceError(
                f"{f.origin}/{f.path}: encrypted files are placed only from files/ "
                "(a unit can read one with EnvironmentFile=)"
            )
    answer = _run_child(
        {
            "op": "render",
            "node": facts.node,
            "labels": dict(facts.labels),
            "branch": facts.branch,
            "commit": raw.commit,
            "identity": str(facts.identity),
            "max_file_size": facts.max_file_size,
            "max_total_size": facts.max_total_size,
            "layers": layers,
            "templates": templates,
            "encrypted": encrypted,
        }
    )
    rendered = {r["path"]: r for r in answer["files"]}
    files: dict[str, DesiredFile] = {}
    for placed, f in winners.items():
        out = rendered.get(f.path)
        if out is None:
            files[placed] = f
            continue
        if out["secret"] and not placed.startswith("files/"):
            raise SourceError(
                f"{f.origin}/{f.path}: uses secrets, which may reach only files/ "
                "(unit files are world-readable; use EnvironmentFile= with a secret file)"
            )
        files[placed] = DesiredFile(
            path=placed,
            data=base64.b64decode(out["data"]),
            git_mode=f.git_mode,
            origin=f.origin,
            secret=bool(out["secret"]),
        )
    return DesiredState(commit=raw.commit, paths=raw.paths, files=files, options=raw.options)
